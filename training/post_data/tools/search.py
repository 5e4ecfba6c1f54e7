"""The search behind ``brave_search``: BM25 over a local JSON-lines index, or Brave's web search API [4.3.5].

The paper's first built-in tool: "Search engine. Llama 3 is trained to use Brave Search to answer questions about
recent events that go beyond its knowledge cutoff or that require retrieving a particular piece of information
from the web" [4.3.5]. Synthetic tool dialogs and tests need answers that do not change and no network, so the
default backend is :class:`LocalSearchIndex`: Okapi BM25 (k1 = 1.5, b = 0.75) over documents ``{"title", "url",
"text"}`` read from a JSON-lines file. :class:`BraveSearchClient` has the same ``search(query, count)`` method and
calls ``https://api.search.brave.com/res/v1/web/search`` with the key from ``BRAVE_SEARCH_API_KEY``; swap it in
(``search_backend: brave``) for real web results. Both return Brave's result shape (``title``, ``url``,
``description``), and the tool's answer is ``{"query": ..., "top_k": [...]}`` as llama-stack's Brave tool returns it.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

BRAVE_ENDPOINT = "https://api.search.brave.com/res/v1/web/search"
BRAVE_KEY_VARIABLE = "BRAVE_SEARCH_API_KEY"
_WORD = re.compile(r"\w+")


class SearchBackend(Protocol):
    """Anything with ``search(query, count) -> [{"title", "url", "description"}, ...]``."""

    def search(self, query: str, count: int = 3) -> list[dict[str, str]]: ...


def words(text: str) -> list[str]:
    """Lower-cased word tokens (what BM25 counts)."""
    return _WORD.findall(text.lower())


class LocalSearchIndex:
    """BM25 over documents in memory; :meth:`from_jsonl` reads ``{"title", "url", "text"}`` rows."""

    def __init__(self, documents: list[dict[str, str]], k1: float = 1.5, b: float = 0.75) -> None:
        if not documents:
            raise ValueError("search index: no documents; give one JSON row with 'text' (and 'title', 'url') each.")
        self.documents = documents
        self.k1, self.b = k1, b
        self.counts = [Counter(words(f"{d.get('title', '')} {d['text']}")) for d in documents]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.mean_length = sum(self.lengths) / len(self.lengths) or 1.0
        frequency = Counter(word for counts in self.counts for word in counts)
        n = len(documents)
        self.idf = {w: math.log(1.0 + (n - f + 0.5) / (f + 0.5)) for w, f in frequency.items()}

    @classmethod
    def from_jsonl(cls, path: str | Path) -> LocalSearchIndex:
        """The index of a JSON-lines file; a row without ``text`` is refused naming the file and row."""
        from training.post_data.curate import read_jsonl

        documents = []
        for number, row in read_jsonl(path):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ValueError(f"{path}: row {number}: field 'text' must be the document's non-empty text.")
            documents.append({"title": str(row.get("title", "")), "url": str(row.get("url", "")), "text": row["text"]})
        return cls(documents)

    def scores(self, query: str) -> list[float]:
        """The BM25 score of every document for ``query``."""
        terms = words(query)
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.mean_length)
            out.append(sum(self.idf.get(t, 0.0) * counts[t] * (self.k1 + 1) / (counts[t] + norm) for t in terms))
        return out

    def search(self, query: str, count: int = 3) -> list[dict[str, str]]:
        """The ``count`` best documents with a positive score, best first, in Brave's result shape."""
        scores = self.scores(query)
        order = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))[:count]
        return [
            {
                "title": self.documents[i]["title"],
                "url": self.documents[i]["url"],
                "description": self.documents[i]["text"],
            }
            for i in order
        ]


class BraveSearchClient:
    """Brave's web search API (``GET /res/v1/web/search``, header ``X-Subscription-Token``)."""

    def __init__(self, api_key: str | None = None, endpoint: str = BRAVE_ENDPOINT, timeout: float = 20.0) -> None:
        self.api_key = api_key or os.environ.get(BRAVE_KEY_VARIABLE)
        if not self.api_key:
            raise ValueError(
                f"brave_search: no API key; set {BRAVE_KEY_VARIABLE} or use a local index (search_index: FILE)."
            )
        self.endpoint, self.timeout = endpoint, timeout

    def search(self, query: str, count: int = 3) -> list[dict[str, str]]:
        """Brave's web results for ``query`` (title, url, description)."""
        url = f"{self.endpoint}?{urllib.parse.urlencode({'q': query, 'count': count})}"
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", "X-Subscription-Token": self.api_key}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload: dict[str, Any] = json.loads(response.read().decode("utf-8"))
        results = payload.get("web", {}).get("results", [])
        return [
            {"title": r.get("title", ""), "url": r.get("url", ""), "description": r.get("description", "")}
            for r in results[:count]
        ]


def search_answer(backend: SearchBackend, query: str, count: int = 3) -> str:
    """The ``ipython`` text of a search: ``{"query": ..., "top_k": [...]}``."""
    return json.dumps({"query": query, "top_k": backend.search(query, count)}, ensure_ascii=False)
