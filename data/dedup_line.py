"""CCNet-style line-level dedup [3.1.1 "Line-level: ... removed lines that appeared more than 6 times in each
bucket of 30M documents"] (Wenzek et al., 2019).

Documents are cut, in input order, into buckets of ``bucket_size`` documents (per language when
``per_language``). Pass 1 counts each normalised line once per document in its bucket; pass 2 removes,
from every document of the bucket, the lines counted more than ``max_repeats`` times: navigation menus,
cookie warnings, footers that survived extraction. A line seen at most ``max_repeats`` times is kept
everywhere. A document left with fewer than ``min_chars`` characters is dropped (``empty_after_line_dedup``).
Normalisation as in CCNet: lower case, digits to 0, punctuation and accents removed.

Sharded (what ``hf-llama3 curate`` runs, any number of tasks), in three datatrove steps:

1. :class:`LineHashWriter` (one task per share): the distinct line hashes of each document with its position in
   its language group, split by hash into ``partitions`` files, and the task's documents per group;
2. :class:`RepeatedLineFinder` (one task per partition): from the per-task group counts, every document's global
   position, hence its bucket, is known, so the buckets are the in-memory step's exactly; it reads the tasks in
   input order and writes a bucket's over-repeated hashes as soon as the bucket is complete, so it holds at most
   the lines of the open buckets (``bucket_size`` bounds a task's memory, as in the paper);
3. :class:`LineDedupFilter` (in the dedup stage): removes those lines.

:class:`LineDeduplicator` is the same rule in one process (the reference the sharded steps are tested against).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from data.dedup_minhash import language_group
from hf_llama3.checkpoint_io import atomic_output_file

_DIGIT = re.compile(r"\d")
_PUNCT = re.compile(r"[^\w\s]+")


def normalize_line(line: str) -> str:
    """CCNet's line normalisation."""
    text = unicodedata.normalize("NFD", line.strip().lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return " ".join(_PUNCT.sub("", _DIGIT.sub("0", text)).split())


def line_hash(line: str) -> int:
    """A 64-bit hash of the normalised line, the same in every process."""
    return int.from_bytes(hashlib.blake2b(normalize_line(line).encode(), digest_size=8).digest(), "little")


@dataclass
class LineDedupConfig:
    """Args:
    max_repeats: keep lines seen at most this many times per bucket (paper: 6).
    bucket_size: documents per bucket (paper: 30M).
    per_language: separate buckets per language [3.1.1 Multilingual: "language-specific ... line-level dedup"].
    min_chars: drop documents shorter than this after line removal.
    """

    enabled: bool = True
    max_repeats: int = 6  # [3.1.1]
    bucket_size: int = 30_000_000  # [3.1.1]
    per_language: bool = True
    min_chars: int = 50
    partitions: int = 4

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "max_repeats": {"min": 1},
        "bucket_size": {"min": 1},
        "min_chars": {"min": 0},
        "partitions": {"min": 1},
    }

    def __post_init__(self) -> None:
        if self.max_repeats < 1 or self.bucket_size < 1 or self.partitions < 1:
            raise ValueError("line_dedup.max_repeats, bucket_size and partitions must be >= 1.")


def strip_repeated_lines(doc: Document, repeated: Callable[[int], bool]) -> int:
    """Remove from ``doc.text`` the non-blank lines whose hash ``repeated`` says is over-repeated; returns how many."""
    kept, removed = [], 0
    for line in doc.text.split("\n"):
        if line.strip() and repeated(line_hash(line)):
            removed += 1
        else:
            kept.append(line)
    if removed:
        doc.text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
    return removed


class LineDeduplicator(PipelineStep):
    """Removes lines repeated more than N times per bucket; counts ``removed_lines`` and drop reasons."""

    name = "✂ line dedup"
    type = "🫂 - DEDUP"

    def __init__(self, config: LineDedupConfig | None = None):
        super().__init__()
        self.config = config or LineDedupConfig()

    def _buckets(self, docs: Iterable[Document]):
        """(doc, (language group, bucket number)): buckets are consecutive runs of ``bucket_size`` documents."""
        seen: Counter = Counter()
        for doc in docs:
            group = language_group(doc.metadata) if self.config.per_language else ""
            yield doc, (group, seen[group] // self.config.bucket_size)
            seen[group] += 1

    def fit(self, docs: Iterable[Document]) -> dict[tuple[str, int], Counter]:
        """Pass 1: count every distinct line once per document, per bucket."""
        counts: dict[tuple[str, int], Counter] = defaultdict(Counter)
        for doc, bucket in self._buckets(docs):
            counts[bucket].update({line_hash(ln) for ln in doc.text.split("\n") if ln.strip()})
        return counts

    def apply(self, docs: Iterable[Document], bucket_counts: dict[tuple[str, int], Counter]) -> Iterable[Document]:
        """Pass 2: remove over-repeated lines; yield the documents that still have content."""
        for doc, bucket in self._buckets(docs):
            self.stat_update("total")
            counts = bucket_counts[bucket]
            removed = strip_repeated_lines(doc, lambda h, c=counts: c[h] > self.config.max_repeats)
            if removed:
                self.stat_update("removed_lines", value=removed)
            if len(doc.text.strip()) < self.config.min_chars:
                self.stat_update("dropped", "dropped_empty_after_line_dedup")
                continue
            self.stat_update("forwarded")
            yield doc

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        yield from self.apply(docs, self.fit(docs))


# One line record: the document's language group (index into its task's group list), position in the group, hash.
LINE_DTYPE = np.dtype([("group", "<u4"), ("pos", "<u4"), ("hash", "<u8")])


def _group_of(doc: Document, config: LineDedupConfig) -> str:
    return language_group(doc.metadata) if config.per_language else ""


def read_group_counts(folder: str) -> dict[int, dict[str, int]]:
    """Per hashing task (rank): documents per language group, in the order the groups appeared."""
    return {int(p.stem): json.loads(p.read_text()) for p in sorted((Path(folder) / "groups").glob("*.json"))}


def group_offsets(counts: dict[int, dict[str, int]]) -> dict[int, dict[str, int]]:
    """Per rank and group: how many documents of the group the ranks before it hold (its first global position)."""
    offsets, running = {}, Counter()
    for rank in sorted(counts):
        offsets[rank] = {g: running[g] for g in counts[rank]}
        running.update(counts[rank])
    return offsets


class LineHashWriter(PipelineStep):
    """Sharded step 1: ``part_PPP/<rank>.lines`` records and ``groups/<rank>.json`` counts."""

    name = "LineHashWriter"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, config: LineDedupConfig):
        super().__init__()
        self.folder, self.config = folder, config

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        root, parts = Path(self.folder), self.config.partitions
        finals = [root / f"part_{p:03d}" / f"{rank:05d}.lines" for p in range(parts)]
        for path in finals:
            path.parent.mkdir(parents=True, exist_ok=True)
        partial = [path.with_suffix(".partial") for path in finals]  # not *.lines: never read before the rename
        counts: dict[str, int] = {}
        with self.track_time(), contextlib.ExitStack() as stack:
            files = [stack.enter_context(open(path, "wb")) for path in partial]
            for doc in data:
                group = _group_of(doc, self.config)
                gid = list(counts).index(group) if group in counts else len(counts)
                pos = counts.get(group, 0)
                counts[group] = pos + 1
                hashes = np.fromiter(
                    sorted({line_hash(ln) for ln in doc.text.split("\n") if ln.strip()}), dtype=np.uint64
                )
                records = np.empty(len(hashes), dtype=LINE_DTYPE)
                records["group"], records["pos"], records["hash"] = gid, pos, hashes
                part = hashes % np.uint64(parts)
                for p in np.unique(part):
                    records[part == p].tofile(files[int(p)])
        for tmp, final in zip(partial, finals):
            os.replace(tmp, final)
        with atomic_output_file(root / "groups" / f"{rank:05d}.json") as tmp:
            tmp.write_text(json.dumps(counts))
        yield from ()


class RepeatedLineFinder(PipelineStep):
    """Sharded step 2, task = hash partition: ``<out>/GGGG_BBBBBB/part_PPP.npy``, the over-repeated line hashes of
    bucket B of language group G (G indexes the sorted group names)."""

    name = "RepeatedLineFinder"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, out_folder: str, config: LineDedupConfig):
        super().__init__()
        self.folder, self.out_folder, self.config = folder, out_folder, config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        size = self.config.bucket_size
        counts = read_group_counts(self.folder)
        offsets = group_offsets(counts)
        names = sorted({g for c in counts.values() for g in c})
        seen: Counter = Counter()  # documents per group in the ranks read so far
        pending: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        with self.track_time():
            for task in sorted(counts):
                groups = list(counts[task])
                records = np.fromfile(Path(self.folder) / f"part_{rank:03d}" / f"{task:05d}.lines", dtype=LINE_DTYPE)
                for gid, group in enumerate(groups):
                    mine = records[records["group"] == gid]
                    buckets = (offsets[task][group] + mine["pos"].astype(np.int64)) // size
                    for bucket in np.unique(buckets):
                        pending[(names.index(group), int(bucket))].append(mine["hash"][buckets == bucket])
                seen.update(counts[task])
                last = task == max(counts)
                for key in [k for k in pending if last or (k[1] + 1) * size <= seen[names[k[0]]]]:
                    self._write(key, np.concatenate(pending.pop(key)), rank)
        yield from ()

    def _write(self, key: tuple[int, int], hashes: np.ndarray, partition: int) -> None:
        unique, counts = np.unique(hashes, return_counts=True)
        repeated = unique[counts > self.config.max_repeats]
        self.stat_update("repeated_lines", value=len(repeated))
        if len(repeated):
            path = Path(self.out_folder) / f"{key[0]:04d}_{key[1]:06d}" / f"part_{partition:03d}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
                np.save(f, repeated)


class LineDedupFilter(BaseFilter):
    """Sharded step 3 (wrapped in :class:`data.stage_io.CountedFilter`): removes the over-repeated lines of each
    document's bucket; a document left under ``min_chars`` is dropped (``empty_after_line_dedup``)."""

    name = "LineDedupFilter"

    def __init__(self, folder: str, repeated_folder: str, config: LineDedupConfig):
        super().__init__()
        self.folder, self.repeated_folder, self.config = folder, repeated_folder, config
        self.offsets: dict[str, int] = {}
        self.names: list[str] = []
        self.seen: Counter = Counter()
        self.cache: dict[int, tuple[int, set[int]]] = {}  # group index -> (bucket, its repeated hashes)

    def start(self, rank: int, world_size: int) -> None:
        counts = read_group_counts(self.folder)
        self.offsets = group_offsets(counts).get(rank, {})
        self.names = sorted({g for c in counts.values() for g in c})
        self.seen, self.cache = Counter(), {}

    def _repeated(self, group: int, bucket: int) -> set[int]:
        if self.cache.get(group, (None,))[0] != bucket:  # documents come in order: one open bucket per group
            folder = Path(self.repeated_folder) / f"{group:04d}_{bucket:06d}"
            hashes = {int(h) for p in sorted(folder.glob("part_*.npy")) for h in np.load(p)}
            self.cache[group] = (bucket, hashes)
        return self.cache[group][1]

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        group = _group_of(doc, self.config)
        position = self.offsets.get(group, 0) + self.seen[group]
        self.seen[group] += 1
        repeated = self._repeated(self.names.index(group), position // self.config.bucket_size)
        removed = strip_repeated_lines(doc, repeated.__contains__)
        if removed:
            self.stat_update("removed_lines", value=removed)
        if len(doc.text.strip()) < self.config.min_chars:
            return False, "empty_after_line_dedup"
        return True
