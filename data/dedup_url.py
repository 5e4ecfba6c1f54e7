"""URL-level dedup keeping the most recent crawl of each page [3.1.1 "De-duplication": "we keep the most
recent version for pages corresponding to each URL"].

For each normalised URL the newest crawl date wins; ties go to the first document in input order, so the result
depends on nothing but the input. Documents without a URL are always kept.

Sharded (what ``hf-llama3 curate`` runs, any number of tasks), in three datatrove steps:

1. :class:`UrlKeyWriter` (one task per share of the documents): a 64-bit hash of each normalised URL, its crawl
   date and the document's position, appended to the file of its URL-hash bucket;
2. :class:`NewestCaptureFinder` (one task per bucket): every capture of a URL is in the same bucket, whatever
   task read it; the losers are written per reading task as sorted positions;
3. :class:`UrlDedupFilter` (in the dedup stage): drops those positions as ``older_crawl_of_url``.

A task holds one bucket's keys (44 bytes per document of the bucket), never the corpus's documents.
:class:`UrlDeduplicator` is the same rule in one process (the reference the sharded steps are tested against).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from hf_llama3.checkpoint_io import atomic_output_file

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
    """Args:
    enabled: run URL dedup at all.
    buckets: URL-hash buckets, one task each (a task holds one bucket's keys: raise it for a larger crawl).
    """

    enabled: bool = True
    buckets: int = 4

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {"buckets": {"min": 1}}

    def __post_init__(self) -> None:
        if self.buckets < 1:
            raise ValueError(f"url_dedup.buckets must be >= 1, got {self.buckets}.")


# One key record: URL hash, crawl date (ISO 8601 strings sort as dates; 32 bytes hold any of them), position.
KEY_DTYPE = np.dtype([("url", "<u8"), ("date", "S32"), ("pos", "<u4")])


def url_key(doc: Document) -> int | None:
    """64-bit hash of the normalised URL, or None for a document without one (never deduplicated)."""
    url = doc.metadata.get("url")
    if not url or url.startswith("file:"):
        return None
    return int.from_bytes(hashlib.blake2b(normalize_url(url).encode(), digest_size=8).digest(), "little")


class UrlKeyWriter(PipelineStep):
    """Sharded step 1: ``<folder>/bucket_BBBB/<rank>.keys``, one record per document with a URL."""

    name = "UrlKeyWriter"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, config: UrlDedupConfig):
        super().__init__()
        self.folder, self.config = folder, config

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        buffers: list[list[tuple]] = [[] for _ in range(self.config.buckets)]
        paths = [Path(self.folder) / f"bucket_{b:04d}" / f"{rank:05d}.keys" for b in range(self.config.buckets)]
        with self.track_time():
            for pos, doc in enumerate(data):
                key = url_key(doc)
                if key is not None:
                    date = str(doc.metadata.get("date") or "").encode()[:32]
                    buffers[key % self.config.buckets].append((key, date, pos))
            # Written whole (atomic): keys are 44 bytes a document, so one task's share fits where its documents did not.
            for path, records in zip(paths, buffers):
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_output_file(path) as tmp:
                    np.array(records, dtype=KEY_DTYPE).tofile(tmp)
        yield from ()


class NewestCaptureFinder(PipelineStep):
    """Sharded step 2, task = bucket: ``<out>/<reader rank>/bucket_BBBB.npy``, the positions that lose."""

    name = "NewestCaptureFinder"
    type = "🫂 - DEDUP"

    def __init__(self, key_folder: str, out_folder: str):
        super().__init__()
        self.key_folder, self.out_folder = key_folder, out_folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = sorted((Path(self.key_folder) / f"bucket_{rank:04d}").glob("*.keys"))
        readers = [int(f.name.split(".")[0]) for f in files]
        keys = [np.fromfile(f, dtype=KEY_DTYPE) for f in files]
        reader = np.concatenate([np.full(len(k), r, dtype=np.uint32) for r, k in zip(readers, keys)] or [[]])
        keys = np.concatenate(keys) if keys else np.empty(0, dtype=KEY_DTYPE)
        _, date_rank = np.unique(keys["date"], return_inverse=True)
        # Per URL: newest date first, then input order (reader task, position); the first of each URL wins.
        order = np.lexsort((keys["pos"], reader, -date_rank.astype(np.int64), keys["url"]))
        sorted_urls = keys["url"][order]
        losers = order[1:][sorted_urls[1:] == sorted_urls[:-1]]
        self.stat_update("older_captures", value=len(losers))
        for r in readers:
            mine = np.sort(keys["pos"][losers][reader[losers] == r])
            path = Path(self.out_folder) / f"{r:05d}" / f"bucket_{rank:04d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
                np.save(f, mine.astype(np.uint32))
        yield from ()


class UrlDedupFilter(BaseFilter):
    """Sharded step 3 (wrapped in :class:`data.stage_io.CountedFilter`): drops the task's losing positions."""

    name = "UrlDedupFilter"

    def __init__(self, drop_folder: str):
        super().__init__()
        self.drop_folder = drop_folder
        self.drops: set[int] = set()
        self.pos = 0

    def start(self, rank: int, world_size: int) -> None:
        found = sorted((Path(self.drop_folder) / f"{rank:05d}").glob("bucket_*.npy"))
        self.drops = {int(p) for f in found for p in np.load(f)}
        self.pos = 0

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        pos, self.pos = self.pos, self.pos + 1
        return (False, "older_crawl_of_url") if pos in self.drops else True


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
