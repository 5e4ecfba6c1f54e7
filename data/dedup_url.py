"""URL-level dedup keeping the most recent crawl of each page [3.1.1 "De-duplication": "we keep the most
recent version for pages corresponding to each URL"].

Two passes over the same documents: ``fit`` finds, for each normalised URL, the newest crawl date (ties go
to the first document seen, so the result does not depend on anything but input order); ``keep`` then
says whether a document is that version. Documents without a URL are always kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """Canonical form: lower-case host without ``www.``, no scheme (http and https crawls of a page are one
    page), default port, fragment or trailing slash."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    if parts.port and parts.port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{parts.port}"
    path = parts.path.rstrip("/") or "/"
    return urlunsplit(("", host, path, parts.query, ""))


@dataclass
class UrlDedupConfig:
    """Args: enabled: run URL dedup at all."""

    enabled: bool = True


class UrlDeduplicator(PipelineStep):
    """Keeps only the newest crawl per URL; the others are dropped as ``older_crawl_of_url``."""

    name = "🔗 url dedup"
    type = "🫂 - DEDUP"

    def __init__(self, config: UrlDedupConfig | None = None):
        super().__init__()
        self.config = config or UrlDedupConfig()

    def fit(self, docs: Iterable[Document]) -> dict[str, tuple[str, str]]:
        """Pass 1: the newest (date, id) of every normalised URL."""
        newest: dict[str, tuple[str, str]] = {}
        for doc in docs:
            url = doc.metadata.get("url")
            if not url or url.startswith("file:"):
                continue
            key = normalize_url(url)
            date = str(doc.metadata.get("date") or "")
            if key not in newest or date > newest[key][0]:  # ISO 8601 dates sort as strings
                newest[key] = (date, doc.id)
        return newest

    def keep(self, doc: Document, newest: dict[str, tuple[str, str]]) -> bool:
        """Pass 2: is this the newest crawl of its URL?"""
        url = doc.metadata.get("url")
        if not url or url.startswith("file:"):
            return True
        return newest.get(normalize_url(url), (None, doc.id))[1] == doc.id

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        newest = self.fit(docs)
        for doc in docs:
            self.stat_update("total")
            if self.keep(doc, newest):
                self.stat_update("forwarded")
                yield doc
            else:
                self.stat_update("dropped", "dropped_older_crawl_of_url")
