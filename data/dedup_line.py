"""CCNet-style line-level dedup [3.1.1 "Line-level: ... removed lines that appeared more than 6 times in each
bucket of 30M documents"] (Wenzek et al., 2019).

Documents are cut, in input order, into buckets of ``bucket_size`` documents (per language when
``per_language``). Pass 1 counts each normalised line once per document in its bucket; pass 2 removes,
from every document of the bucket, the lines counted more than ``max_repeats`` times: navigation menus,
cookie warnings, footers that survived extraction. A line seen at most ``max_repeats`` times is kept
everywhere. A document left with fewer than ``min_chars`` characters is dropped (``empty_after_line_dedup``).
Normalisation as in CCNet: lower case, digits to 0, punctuation and accents removed.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data.dedup_minhash import language_group

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

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "max_repeats": {"min": 1},
        "bucket_size": {"min": 1},
        "min_chars": {"min": 0},
    }

    def __post_init__(self) -> None:
        if self.max_repeats < 1 or self.bucket_size < 1:
            raise ValueError("line_dedup.max_repeats and line_dedup.bucket_size must be >= 1.")


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
            kept, removed = [], 0
            for line in doc.text.split("\n"):
                if line.strip() and counts[line_hash(line)] > self.config.max_repeats:
                    removed += 1
                else:
                    kept.append(line)
            if removed:
                self.stat_update("removed_lines", value=removed)
                doc.text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip("\n")
            if len(doc.text.strip()) < self.config.min_chars:
                self.stat_update("dropped", "dropped_empty_after_line_dedup")
                continue
            self.stat_update("forwarded")
            yield doc

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        yield from self.apply(docs, self.fit(docs))
