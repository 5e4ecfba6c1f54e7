"""Documentation pages with code and math survive the heuristics; planted log dumps, spam, link farms and
repeated-line pages do not [3.1.1 domain-specific heuristics for code and math pages].

The documentation set is real HTML from eight manuals (tests/data/fixtures/docs.jsonl.gz, built by
tests/data/fixtures/build_docs.py), run through the same steps as ``hf-llama3 curate`` before the
heuristics: extraction, domain tag, language ID.
"""

import collections
import functools
import gzip
import json
import random
from pathlib import Path

import pytest
from datatrove.data import Document

from data.domains import DomainTagger
from data.extract import HtmlExtractor
from data.heuristics import HeuristicFilter
from data.langid import LangIdConfig, LanguageFilter

FIXTURE = Path(__file__).parent / "fixtures" / "docs.jsonl.gz"
MAX_LOST = 0.15  # the bar: at most 15% of the documentation pages lost to heuristics
CITIES = [
    "Austin", "Boston", "Chicago", "Dallas", "Denver", "Detroit", "El Paso", "Fresno", "Houston", "Memphis",
    "Miami", "Nashville", "Oakland", "Omaha", "Phoenix", "Portland", "Raleigh", "Seattle", "Tampa", "Tucson",
    "Tulsa", "Wichita", "Atlanta", "Baltimore", "Cleveland", "Columbus", "Honolulu", "Louisville", "Mesa",
]  # fmt: skip


def page(title: str, body: str) -> str:
    """A page in a site template (navigation and footer for the extractor to remove)."""
    return (
        f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> <a href='/about'>About</a></nav>"
        f"<main><h1>{title}</h1>{body}</main><footer>Copyright 2024. All rights reserved.</footer></body></html>"
    )


def log_dump(in_pre: bool) -> str:
    rng = random.Random(1)
    events = [
        "INFO  [worker-{w}] processed batch {n} in {t} ms",
        "WARN  [worker-{w}] retrying request {n} after timeout of {t} ms",
        "ERROR [worker-{w}] connection refused by 10.0.{w}.{n} (attempt {t})",
        "DEBUG [scheduler] queue depth {n}, {t} tasks pending on worker-{w}",
    ]
    lines = [
        f"2024-03-{1 + i // 40:02d} 12:{i % 60:02d}:{rng.randint(0, 59):02d},{rng.randint(0, 999):03d} "
        + rng.choice(events).format(w=rng.randint(1, 9), n=rng.randint(1, 9999), t=rng.randint(5, 900))
        for i in range(160)
    ]
    intro = "<p>Output of the nightly job on the build server, kept here for reference.</p>"
    body = f"<pre>{chr(10).join(lines)}</pre>" if in_pre else "".join(f"<p>{ln}</p>" for ln in lines)
    return page("build log", intro + body)


def keyword_spam() -> str:
    rng = random.Random(2)
    keys = ["cheap flights", "best cheap flights", "cheap hotels", "discount flights", "last minute flights"]
    paras = [
        "<p>" + " ".join(f"{rng.choice(keys)} {rng.choice(CITIES).lower()}" for _ in range(25)) + ".</p>"
        for _ in range(6)
    ]
    return page("Cheap flights cheap hotels", "".join(paras))


def link_farm() -> str:
    # A doorway page: the same sentences for every city, each a link to the next doorway page.
    paras = "".join(
        f"<p>Looking for a <a href='/{c}'>plumber in {c}</a>? Our <a href='/{c}/24h'>{c} plumbers</a> offer 24 hour "
        f"emergency plumbing in {c}. Call the <a href='/{c}/best'>best plumber in {c}</a> today.</p>"
        for c in CITIES
    )
    return page("Plumbers near me", f"<p>Find the best plumber near you.</p>{paras}")


def repeated_lines() -> str:
    line = "<p>Click the button below to claim your free gift card before the offer ends today.</p>"
    return page("Free gift card", line * 30 + "<p>Terms apply to every offer on this page.</p>")


PLANTED = {  # name: (page, the family that must drop it)
    "log dump in <pre>": (log_dump(in_pre=True), "llama3"),  # code blocks are judged for repeated content
    "log dump as paragraphs": (log_dump(in_pre=False), "gopher_repetition"),
    "keyword spam": (keyword_spam(), "gopher_repetition"),
    "boilerplate link farm": (link_farm(), "gopher_repetition"),
    "repeated-line page": (repeated_lines(), "gopher_repetition"),
}


@functools.lru_cache(maxsize=1)
def steps():
    return [HtmlExtractor(), DomainTagger(), LanguageFilter(LangIdConfig(min_score=0.4))], HeuristicFilter()


def judge(html: str, doc_id: str) -> tuple[str | None, Document]:
    """(None when kept, else the heuristics' drop reason or ``pre:<reason>`` from an earlier step; the document)."""
    before, heuristics = steps()
    doc = Document(text=html, id=doc_id, metadata={"format": "html"})
    for step in before:
        result = step.filter(doc)
        if result is not True:
            return f"pre:{result[1]}", doc
    result = heuristics.filter(doc)
    return (None if result is True else result[1]), doc


def test_documentation_pages_with_code_and_math_survive():
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len({r["project"] for r in rows}) >= 8 and len(rows) >= 35
    outcomes = {r["path"]: (r["project"], *judge(r["html"], r["path"])) for r in rows}
    judged = {p: o for p, o in outcomes.items() if not (o[1] or "").startswith("pre:")}
    lost = {p: reason for p, (_, reason, _) in judged.items() if reason}
    print(f"kept {len(judged) - len(lost)}/{len(judged)}; lost: {collections.Counter(lost.values())}; {lost}")
    assert len(judged) >= 0.9 * len(rows)  # extraction and language ID keep these pages
    assert len(lost) <= MAX_LOST * len(judged), lost
    kept = [(project, doc.metadata["domain"]) for project, reason, doc in judged.values() if reason is None]
    assert {"nodejs", "npm", "rust-book", "pytorch"} <= {project for project, _ in kept}
    assert {"code", "math"} <= {domain for _, domain in kept}  # code and math pages, not only prose with snippets
    # The domain-specific treatment is what keeps them: judged as all prose (no code blocks, no code or
    # math domain), far more of the same pages go.
    _, heuristics = steps()
    as_prose = [
        Document(text=doc.text, id=doc.id, metadata={"lang": doc.metadata["lang"]}) for _, _, doc in judged.values()
    ]
    lost_as_prose = sum(heuristics.filter(doc) is not True for doc in as_prose)
    print(f"judged as all prose: lost {lost_as_prose}/{len(as_prose)}")
    assert lost_as_prose >= len(lost) + 0.15 * len(judged)


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bad_pages_are_dropped(name):
    html, family = PLANTED[name]
    reason, _ = judge(html, name)
    assert reason is not None and reason.startswith(f"{family}:"), reason
