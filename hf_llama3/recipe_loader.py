"""The one recipe loader every stage uses: YAML file + dotted ``--set`` overrides -> a typed config dataclass.

Every stage's config is a (possibly nested) dataclass beside its code. This module turns a YAML recipe into it with
one error surface: each problem is a one-line ``ValueError`` naming the file and the dotted key path, which
``hf-llama3`` prints as ``hf-llama3 <cmd>: error: ...`` with exit status 2.

- YAML syntax errors give ``file:line:column``.
- Unknown keys are rejected with their dotted path (``minhash.bandz``) and the valid keys.
- Values are checked against the field annotations before the dataclass is built (so nothing is trained or loaded
  with a bad value): ``int``, ``float`` (an int is accepted), ``bool`` (no coercion from 0/1 or strings), ``str``,
  ``Path``, ``Optional``/``Union``, ``Literal``, enums, ``list[T]``, ``tuple``, ``dict[K, V]`` and nested
  dataclasses. NaN and infinity are refused for numbers unless the field opts in (``allow_nonfinite``), and ints
  beyond 64 bits are refused everywhere (they would overflow every tensor or index they reach).
- Fields declare help text and bounds in their metadata: ``field(default=8, metadata={"help": "...", "min": 1})``
  (``min``/``max`` inclusive, ``gt``/``lt`` exclusive); :func:`bounds` writes that metadata. Fields a config inherits
  and cannot annotate (a TRL trainer's ``learning_rate``) take bounds from a ``RECIPE_CONSTRAINTS`` class attribute.
- A dict field may name a dataclass as its ``schema`` (metadata): its keys and values are checked like that class's
  fields while the value stays a dict (for sections the code builds into objects itself).
- :func:`describe` lists every key (dotted path, type, default, help), which the stage parsers show in ``--help``.

Only yaml, dataclasses and typing here: ``hf_llama3`` must import nothing from ``training``/``data``/``evaluation``.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")

# Ints beyond this reach torch or numpy as overflow errors (or wrap silently); no recipe setting needs more.
INT_LIMIT = 2**63 - 1
# A YAML 1.1 quirk: `1e-5` (no dot) is read as a string; float fields accept that spelling.
_FLOAT_STRING = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
# Unknown-key messages list every valid key up to this many; beyond it, the closest ones and a pointer to --help.
_LIST_ALL_KEYS = 40
_BOUNDS = ("min", "gt", "max", "lt")


def bounds(help: str = "", *, allow_nonfinite: bool = False, **limits: float) -> dict[str, Any]:
    """Field metadata with help text and bounds: ``batch_size: int = field(default=8, metadata=bounds("...", min=1))``.

    ``min``/``max`` are inclusive, ``gt``/``lt`` exclusive; ``allow_nonfinite`` lets NaN and infinity through.
    """
    unknown = set(limits) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"bounds() takes {_BOUNDS}, got {sorted(unknown)}")
    return {"help": help, "allow_nonfinite": allow_nonfinite, **limits}


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML recipe into a dict: a missing file, a syntax error (with line:column) or a non-mapping is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist: pass --config with the path of a YAML recipe.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: {_yaml_error(err)}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of config keys, got {type(data).__name__}.")
    return data


def _yaml_error(err: yaml.YAMLError) -> str:
    """``line L:C: problem`` from a PyYAML error (its own message spans several lines with a source excerpt)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f"line {mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
    return f"YAML syntax error at {where}{problem}".replace("\n", " ")


def parse_value(raw: str, where: str) -> Any:
    """One ``--set`` value, parsed as YAML (``0.2`` is a float, ``[1, 2]`` a list, ``''`` an empty string)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"--set {where}: {_yaml_error(err)}") from None


def split_override(pair: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", parsed value)``."""
    key, sep, raw = pair.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--set expects key=value (e.g. --set output_dir=run2), got {pair!r}.")
    return key, parse_value(raw, key)


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested mappings, creating missing sections; ``ramp.1.seq_len`` indexes a list."""
    *parents, last = dotted.split(".")
    node: Any = values
    walked: list[str] = []
    for key in parents:
        walked.append(key)
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {'.'.join(walked[:-1])!r} is not a section.")
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ValueError(f"--set {dotted}: {'.'.join(walked)!r} is not a section.")


def apply_overrides(values: dict[str, Any], pairs: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set a.b=value`` overrides to the recipe's values (in place; also returned)."""
    for pair in pairs:
        set_dotted(values, *split_override(pair))
    return values


def load_recipe(
    cls: type[ConfigT],
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> ConfigT:
    """The config ``cls`` from a YAML recipe, command-line flags (``extra``, ``None`` skipped) and ``--set``."""
    values = read_yaml(path) if path is not None else {}
    for key, value in (extra or {}).items():
        if value is not None:
            set_dotted(values, key, value)
    apply_overrides(values, overrides)
    return build(cls, values, source=str(path) if path is not None else "command line")


def build(cls: type[ConfigT], values: Any, source: str = "config", where: str = "") -> ConfigT:
    """Instantiate dataclass ``cls`` from a mapping: unknown keys, missing keys and every value's type are checked
    (nested dataclasses recursively) before ``cls`` runs, so its ``__post_init__`` only sees well-typed values."""
    return _Builder(source).dataclass(cls, values, where)


class _BoundError(ValueError):
    """A number of the right type outside its bounds (a union reports this rather than "expected X or Y")."""


class _Builder:
    """Checks and converts values for one recipe; ``source`` (file or "command line") starts each message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, message: str, kind: type[ValueError] = ValueError) -> ValueError:
        prefix = f"{self.source}: " if self.source else ""
        return kind(f"{prefix}{where + ': ' if where else ''}{message}".replace("\n", " "))

    def dataclass(self, cls: type, values: Any, where: str) -> Any:
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise self.error(where, f"expected a mapping of {cls.__name__} keys, got {_show(values)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [key for key in values if key not in fields]
        if unknown:
            raise self.error("", _unknown_message(unknown, sorted(fields), where))
        hints = _hints(cls)
        kwargs = {}
        for name, value in values.items():
            meta = field_meta(cls, fields[name])
            kwargs[name] = self.value(value, hints.get(name, Any), _join(where, name), meta)
        missing = [
            _join(where, f.name)
            for f in fields.values()
            if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            how = "pass --config with a YAML recipe" if self.source == "command line" else "add them to the recipe"
            raise self.error("", f"missing required key(s) {missing} for {cls.__name__}: {how} or use --set KEY=VALUE")
        try:
            return cls(**kwargs)
        except TypeError as err:  # a __post_init__ comparing types the annotations allow; still the user's input
            raise self.error(where, str(err)) from err

    def value(self, value: Any, hint: Any, where: str, meta: Mapping[str, Any]) -> Any:
        """``value`` checked against annotation ``hint`` (converted where the annotation says: Path, tuple, enum)."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is Any or hint is object or isinstance(hint, TypeVar):
            return value
        if origin in (typing.Union, types.UnionType):
            return self.union(value, args, where, meta)
        if origin is typing.Literal:
            if any(value == choice and type(value) is type(choice) for choice in args):
                return value
            raise self.error(where, f"expected one of {list(args)}, got {_show(value)}")
        if hint is type(None):
            if value is None:
                return None
            raise self.error(where, f"expected null, got {_show(value)}")
        if dataclasses.is_dataclass(hint):
            return self.dataclass(hint, value, where)
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise self.error(where, f"expected true or false, got {_show(value)}")
        if hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return self.number(value, where, meta)
            raise self.error(where, f"expected an integer, got {_show(value)}")
        if hint is float:
            if isinstance(value, str) and _FLOAT_STRING.match(value.strip()):
                value = float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return self.number(value, where, meta)
            raise self.error(where, f"expected a number, got {_show(value)}")
        if hint is str:
            if isinstance(value, os.PathLike):
                return os.fspath(value)
            if isinstance(value, str):
                return value
            raise self.error(where, f"expected a string, got {_show(value)}")
        if (isinstance(hint, type) and issubclass(hint, os.PathLike)) or hint is Path:
            if isinstance(value, (str, os.PathLike)) and str(value):
                return Path(value)
            raise self.error(where, f"expected a path, got {_show(value)}")
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            if isinstance(value, hint):
                return value
            choices = [member.value for member in hint]
            if value in choices:
                return hint(value)
            raise self.error(where, f"expected one of {choices}, got {_show(value)}")
        if origin in (list, Sequence, typing.Sequence) or hint in (list, Sequence):
            if not isinstance(value, (list, tuple)):
                raise self.error(where, f"expected a list, got {_show(value)}")
            item = args[0] if args else Any
            return [self.value(v, item, f"{where}[{i}]", meta) for i, v in enumerate(value)]
        if origin is tuple or hint is tuple:
            if not isinstance(value, (list, tuple)):
                raise self.error(where, f"expected a list, got {_show(value)}")
            if args and args[-1] is not Ellipsis and len(args) != len(value):
                raise self.error(where, f"expected {len(args)} items, got {len(value)}")
            items = (
                [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args) or [Any] * len(value)
            )
            return tuple(self.value(v, t, f"{where}[{i}]", meta) for i, (v, t) in enumerate(zip(value, items)))
        if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
            if not isinstance(value, Mapping):
                raise self.error(where, f"expected a mapping, got {_show(value)}")
            if meta.get("schema") is not None:
                return self.schema_mapping(resolve_schema(meta["schema"]), value, where)
            key_type, item_type = args if len(args) == 2 else (Any, Any)
            return {
                self.value(k, key_type, where, {}): self.value(v, item_type, _join(where, str(k)), meta)
                for k, v in value.items()
            }
        if isinstance(hint, type):
            if isinstance(value, hint):
                return value
            raise self.error(where, f"expected {hint.__name__}, got {_show(value)}")
        return value  # an annotation this loader does not know (a string forward reference): the config checks it

    def schema_mapping(self, cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A mapping kept as a dict but checked like dataclass ``cls`` (keys, types, bounds), not built: for sections
        the code turns into ``cls(**values)`` itself later (``optimizer: {lr: ...}`` -> ``OptimizerConfig``)."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [key for key in values if key not in fields]
        if unknown:
            raise self.error("", _unknown_message(unknown, sorted(fields), where))
        hints = _hints(cls)
        checked = {}
        for name, value in values.items():
            hint, path = hints.get(name, Any), _join(where, name)
            if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
                checked[name] = self.schema_mapping(hint, value, path)
            else:
                checked[name] = self.value(value, hint, path, field_meta(cls, fields[name]))
            if isinstance(checked[name], tuple) and isinstance(value, list):
                checked[name] = value  # stays YAML-shaped: the dict is dumped back into run records and model cards
        return checked

    def union(self, value: Any, members: tuple, where: str, meta: Mapping[str, Any]) -> Any:
        if value is None:
            if type(None) in members:
                return None
            raise self.error(where, f"expected {' or '.join(_type_name(m) for m in members)}, got null")
        candidates = [m for m in members if m is not type(None)]
        # A mapping meant for a nested dataclass: report the problem inside it, not "expected X or Y".
        sections = [m for m in candidates if dataclasses.is_dataclass(m)]
        if isinstance(value, Mapping) and len(sections) == 1:
            return self.dataclass(sections[0], value, where)
        if len(candidates) == 1:
            return self.value(value, candidates[0], where, meta)
        # Exact type first, so `int | str` keeps 3 an int and `str | bool` keeps true a bool.
        candidates.sort(key=lambda m: 0 if isinstance(m, type) and type(value) is m else 1)
        errors = []
        for member in candidates:
            try:
                return self.value(value, member, where, meta)
            except ValueError as err:
                errors.append(err)
        numeric = [e for e in errors if isinstance(e, _BoundError)]
        if numeric:  # the value had the right type but broke a bound: say that, not "expected int or str"
            raise numeric[0]
        raise self.error(where, f"expected {' or '.join(_type_name(m) for m in members)}, got {_show(value)}")

    def number(self, value: int | float, where: str, meta: Mapping[str, Any]) -> int | float:
        if isinstance(value, int) and abs(value) > INT_LIMIT:
            raise self.error(where, f"{value:.3g} is beyond the 64-bit integer range", _BoundError)
        if isinstance(value, float) and not math.isfinite(value) and not meta.get("allow_nonfinite"):
            raise self.error(where, f"must be a finite number, got {value}", _BoundError)
        for name, fails, word in (
            ("min", lambda v, b: v < b, ">="),
            ("max", lambda v, b: v > b, "<="),
            ("gt", lambda v, b: v <= b, ">"),
            ("lt", lambda v, b: v >= b, "<"),
        ):
            bound = meta.get(name)
            if bound is not None and fails(value, bound):
                raise self.error(where, f"must be {word} {bound}, got {value}", _BoundError)
        return value


def field_meta(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    """A field's help and bounds: its metadata over the ``RECIPE_CONSTRAINTS`` of ``cls`` and its bases.

    ``RECIPE_CONSTRAINTS`` (a ``ClassVar`` mapping field name -> bounds) is how a config bounds fields it inherits
    from a class it cannot change (TRL's ``learning_rate``); every class in the MRO may add some.
    """
    meta: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        meta.update(klass.__dict__.get("RECIPE_CONSTRAINTS", {}).get(f.name, {}))
    return {**meta, **f.metadata}


def resolve_schema(schema: type | str) -> type:
    """A ``schema`` metadata entry: a dataclass, or ``"module:Class"`` imported when a recipe sets that section (so a
    config can check a section against a heavy class without importing it up front)."""
    if isinstance(schema, str):
        import importlib

        module, _, name = schema.partition(":")
        return getattr(importlib.import_module(module), name)
    return schema


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    """A value as the message shows it: short, its YAML-ish type named."""
    if value is None:
        return "null"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _unknown_message(unknown: list[str], valid: list[str], where: str) -> str:
    paths = [_join(where, key) for key in unknown]
    section = f" of {where}" if where else ""
    if len(valid) <= _LIST_ALL_KEYS:
        return f"unknown key(s) {paths}. Valid keys{section}: {', '.join(valid)}."
    close = sorted({m for key in unknown for m in difflib.get_close_matches(str(key), valid, n=3)})
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown key(s) {paths}.{hint} {len(valid)} valid keys{section}: run with --help to list them."


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: check what can be checked, let the class do the rest
        return {}


def _type_name(hint: Any) -> str:
    """``int``, ``float or null``, ``list[str]``: the expected type as the messages and --help say it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if inner else getattr(origin, "__name__", "")
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def config_keys(cls: type, where: str = "") -> list[tuple[str, str, str, str]]:
    """Every key of ``cls`` as ``(dotted path, type, default, help)``, nested dataclass sections expanded."""
    hints, docs = _hints(cls), _docstring_args(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints.get(f.name, Any)
        path = _join(where, f.name)
        meta = field_meta(cls, f)
        help_text = " ".join(str(meta.get("help") or docs.get(f.name, "")).split())
        signs = {"min": ">=", "max": "<=", "gt": ">", "lt": "<"}
        bounds = ", ".join(f"{signs[b]} {meta[b]}" for b in _BOUNDS if meta.get(b) is not None)
        if bounds:
            help_text = f"{help_text} [{bounds}]".strip()
        if f.default is not dataclasses.MISSING:
            default = repr(f.default.value if isinstance(f.default, enum.Enum) else f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = "(section)" if dataclasses.is_dataclass(hint) else repr(f.default_factory())
        else:
            default = "(required)"
        schema = meta.get("schema")
        type_name = _type_name(hint)
        if schema is not None:
            schema_name = schema.rpartition(":")[2] if isinstance(schema, str) else schema.__name__
            type_name = f"mapping of {schema_name} keys" + (" or null" if "null" in type_name else "")
        rows.append((path, type_name, default, help_text))
        section = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
        if section:
            rows += config_keys(section[0], path)
        elif isinstance(schema, type):  # a string schema is a heavy class (a trainer's 150 keys): named, not listed
            rows += config_keys(schema, path)
    return rows


def describe(cls: type, width: int = 110) -> str:
    """The ``--help`` listing of every config key: ``path (type, default): help``."""
    lines = [f"config keys ({cls.__name__}; YAML recipe keys, or --set KEY=VALUE with dotted keys for sections):"]
    for path, type_name, default, help_text in config_keys(cls):
        head = f"  {path} ({type_name}, default {default})"
        lines.append(head)
        if help_text:
            lines += textwrap.wrap(help_text, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _docstring_args(cls: type) -> dict[str, str]:
    """Field help from a Google-style ``Args:`` block of the class docstrings (``name: text``, ``a, b: text``)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = klass.__dict__.get("__doc__") or ""
        names: list[str] = []
        in_args = False
        for line in doc.splitlines():
            stripped = line.strip()
            if stripped in ("Args:", "Attributes:", "Parameters:"):
                in_args = True
                continue
            if not in_args or not stripped:
                continue
            match = re.match(r"^([A-Za-z_][\w, ]*?)(?: \([^)]*\))?:\s*(.*)$", stripped)
            if match and all(n.strip().isidentifier() for n in match.group(1).split(",")):
                names = [n.strip() for n in match.group(1).split(",")]
                for name in names:
                    found[name] = match.group(2)
            elif names:
                for name in names:
                    found[name] = f"{found[name]} {stripped}"
    return found
