"""The math engine behind ``wolfram_alpha``: a natural-language math query answered with SymPy [4.3.5].

The paper's third core tool [4.3.5]: "Mathematical computational engine. Llama 3 can use the Wolfram Alpha API to
more accurately solve math, science problems, or retrieve accurate information from Wolfram's database." Without a Wolfram Alpha key this module answers the
queries such a model writes: ``solve x^2 - 4 = 0 for x``, ``integrate sin(x)^2 dx from 0 to pi``, ``derivative of
x^3``, ``simplify ...``, ``factor ...``, ``expand ...``, ``limit ... as x -> 0``, or a plain expression (evaluated
exactly and numerically). The answer is JSON shaped like a Wolfram Alpha result (``input`` interpretation and
``result``) so a model trained on it reads the real service's answers the same way.

SymPy's ``parse_expr`` evaluates Python, so :func:`answer` first refuses any query that is not made of numbers,
operators and the names of :data:`FUNCTIONS`/one-letter variables, and the tool runs it inside the sandbox
(:mod:`training.post_data.tools.builtin` copies this file into the sandbox's work folder); that is also what bounds
its time and memory (``9^9^9^9``). This module imports only the standard library and SymPy for that reason.
"""

from __future__ import annotations

import json
import re

MAX_QUERY_CHARS = 400
# Names a query may use besides one-letter variables (and a letter followed by digits: x1, y2).
FUNCTIONS = frozenset(
    [
        "sin",
        "cos",
        "tan",
        "cot",
        "sec",
        "csc",
        "asin",
        "acos",
        "atan",
        "atan2",
        "sinh",
        "cosh",
        "tanh",
        "asinh",
        "acosh",
        "atanh",
        "exp",
        "log",
        "ln",
        "sqrt",
        "cbrt",
        "root",
        "abs",
        "Abs",
        "factorial",
        "binomial",
        "gamma",
        "floor",
        "ceiling",
        "re",
        "im",
        "conjugate",
        "arg",
        "sign",
        "Min",
        "Max",
        "pi",
        "E",
        "I",
        "oo",
        "inf",
        "gcd",
        "lcm",
        "mod",
        "isprime",
        "prime",
        "primefactors",
        "factorint",
        "divisors",
        "Sum",
        "sum",
        "Product",
    ]
)
_ALLOWED = re.compile(r"^[\w\s+\-*/^().,=<>!%|]*$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_VERBS = (
    ("solve", re.compile(r"^(?:solve|roots? of|zeros? of)\s+(?P<body>.+?)(?:\s+for\s+(?P<var>[a-z]\d*))?$", re.I)),
    (
        "integrate",
        re.compile(
            r"^(?:integrate|integral of|antiderivative of)\s+(?P<body>.+?)(?:\s*d(?P<var>[a-z]\d*))?"
            r"(?:\s+from\s+(?P<low>.+?)\s+to\s+(?P<high>.+))?$",
            re.I,
        ),
    ),
    (
        "differentiate",
        re.compile(
            r"^(?:differentiate|derivative of|d/d(?P<var0>[a-z]\d*))\s+(?P<body>.+?)"
            r"(?:\s+(?:with respect to|wrt)\s+(?P<var>[a-z]\d*))?$",
            re.I,
        ),
    ),
    (
        "limit",
        re.compile(r"^(?:limit of|limit|lim)\s+(?P<body>.+?)\s+as\s+(?P<var>[a-z]\d*)\s*->\s*(?P<point>.+)$", re.I),
    ),
    ("simplify", re.compile(r"^(?:simplify)\s+(?P<body>.+)$", re.I)),
    ("factor", re.compile(r"^(?:factor|factorize)\s+(?P<body>.+)$", re.I)),
    ("expand", re.compile(r"^(?:expand)\s+(?P<body>.+)$", re.I)),
    ("evaluate", re.compile(r"^(?:what is|evaluate|compute|calculate)?\s*(?P<body>.+?)\??$", re.I)),
)


class MathQueryError(ValueError):
    """A query the engine cannot read; the message says what to write instead."""


_WORDS = (
    (re.compile(r"\btimes\b|\bmultiplied by\b", re.I), "*"),
    (re.compile(r"\bdivided by\b|\bover\b", re.I), "/"),
    (re.compile(r"\bplus\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
    (re.compile(r"\bsquared\b", re.I), "^2"),
    (re.compile(r"\bcubed\b", re.I), "^3"),
    (re.compile(r"\bto the power of\b", re.I), "^"),
)


def check_query(query: str) -> str:
    """The query stripped, refused when too long or when it names anything but known functions and variables."""
    text = query.strip().rstrip("?").strip()
    for pattern, operator in _WORDS:
        text = pattern.sub(operator, text)
    if not text:
        raise MathQueryError("empty query; write e.g. 'solve x^2 - 4 = 0' or 'integrate sin(x) dx'.")
    if len(text) > MAX_QUERY_CHARS:
        raise MathQueryError(f"query longer than {MAX_QUERY_CHARS} characters; ask one thing at a time.")
    if not _ALLOWED.match(text) or "__" in text:
        raise MathQueryError(f"query {text!r} has characters a math query does not use (quotes, brackets, ...).")
    return text


def _parse(text: str, where: str):
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    words = {w for w in _NAME.findall(text)}
    unknown = sorted(w for w in words if w not in FUNCTIONS and not re.fullmatch(r"[A-Za-z]\d*", w))
    if unknown:
        raise MathQueryError(
            f"{where}: unknown names {unknown}; use one-letter variables and {sorted(FUNCTIONS)[:8]}..."
        )
    import sympy

    local = {"ln": sympy.log, "inf": sympy.oo, "mod": sympy.Mod, "sum": sympy.Sum}
    local |= {w: sympy.Symbol(w) for w in words if re.fullmatch(r"[A-Za-z]\d*", w) and w not in ("E", "I")}
    transformations = (*standard_transformations, implicit_multiplication_application, convert_xor)
    try:
        return parse_expr(text, local_dict=local, transformations=transformations)
    except Exception as err:  # SymPy raises SyntaxError, TokenError, TypeError ...
        raise MathQueryError(f"{where}: cannot read {text!r} as math ({type(err).__name__}).") from None


def _equation(text: str):
    import sympy

    if "=" in text and not any(op in text for op in ("<=", ">=", "==", "!=")):
        left, right = text.split("=", 1)
        return sympy.Eq(_parse(left, "left side"), _parse(right, "right side"))
    return _parse(text, "expression")


def _variable(expr, name: str | None):
    import sympy

    if name:
        return sympy.Symbol(name)
    free = sorted(expr.free_symbols, key=lambda s: s.name)
    if not free:
        return sympy.Symbol("x")
    return next((s for s in free if s.name == "x"), free[0])


def _numeric(value) -> str | None:
    try:
        number = value.evalf(15)
    except Exception:
        return None
    text = str(number)
    return text if number.is_number and not value.is_Integer and text != str(value) else None


def answer(query: str) -> dict[str, str]:
    """``{"input", "result"[, "decimal"]}`` for one math query; raises :class:`MathQueryError` when unreadable."""
    import sympy

    text = check_query(query)
    for verb, pattern in _VERBS:
        match = pattern.match(text)
        if match is None:
            continue
        groups = match.groupdict()
        body = groups["body"].strip()
        if verb == "solve":
            equation = _equation(body)
            var = _variable(equation, groups.get("var"))
            solutions = sympy.solve(equation, var, dict=False)
            result = ", ".join(f"{var} = {s}" for s in solutions) if solutions else "no solutions"
            shown = f"{equation.lhs} = {equation.rhs}" if isinstance(equation, sympy.Eq) else f"{equation} = 0"
            return {"input": f"solve {shown} for {var}", "result": result}
        expr = _parse(body, "expression")
        if verb == "integrate":
            var = _variable(expr, groups.get("var"))
            if groups.get("low") is not None:
                low, high = _parse(groups["low"], "lower bound"), _parse(groups["high"], "upper bound")
                value = sympy.integrate(expr, (var, low, high))
                out = {"input": f"integrate {expr} d{var} from {low} to {high}", "result": str(value)}
                decimal = _numeric(value)
                return out | ({"decimal": decimal} if decimal else {})
            return {"input": f"integrate {expr} d{var}", "result": f"{sympy.integrate(expr, var)} + constant"}
        if verb == "differentiate":
            var = _variable(expr, groups.get("var") or groups.get("var0"))
            return {"input": f"d/d{var} {expr}", "result": str(sympy.diff(expr, var))}
        if verb == "limit":
            var = _variable(expr, groups.get("var"))
            point = _parse(groups["point"], "limit point")
            return {"input": f"limit of {expr} as {var} -> {point}", "result": str(sympy.limit(expr, var, point))}
        if verb in ("simplify", "factor", "expand"):
            return {"input": f"{verb} {expr}", "result": str(getattr(sympy, verb)(expr))}
        if isinstance(expr, sympy.Basic) and expr.is_Relational:
            return {"input": str(expr), "result": str(sympy.simplify(expr))}
        value = sympy.simplify(expr.doit() if hasattr(expr, "doit") else expr)
        out = {"input": str(expr), "result": str(value)}
        decimal = _numeric(value)
        return out | ({"decimal": decimal} if decimal else {})
    raise MathQueryError(f"cannot read {text!r}.")  # unreachable: the last pattern matches any text


def answer_json(query: str) -> str:
    """:func:`answer` as the JSON text of an ``ipython`` turn (an ``error`` key when the query is unreadable)."""
    try:
        return json.dumps(answer(query), ensure_ascii=False)
    except MathQueryError as err:
        return json.dumps({"input": query, "error": str(err)}, ensure_ascii=False)
