"""Contamination analysis by token n-gram overlap between evaluation examples and training data [5.1].

The paper marks a token of an evaluation example as contaminated when it lies in an n-gram (8 tokens
in LLAMA3_FACTS; the paper tunes n and the threshold per benchmark) that also occurs in the
pre-training corpus; an example's score is the fraction of its tokens so marked, and an example is
contaminated when that fraction reaches a threshold. Benchmark scores are then reported separately
on the clean and contaminated subsets.

Training data comes in as any iterable of texts or token-id sequences (the data pipeline's shard
reader plugs in here), streamed once: only the evaluation n-grams are held in memory, so the training
side can be arbitrarily large. Training n-grams are compared by a vectorized 64-bit rolling hash first,
and every hash hit is confirmed token by token, so results are exact.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

Tokens = Sequence[int]
Tokenize = Callable[[str], Tokens]

_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio), wraps mod 2**64


@dataclass
class ContaminationConfig:
    """Settings of the n-gram overlap analysis.

    Args:
        n: n-gram length in tokens; 8 per LLAMA3_FACTS [5.1] (the paper picks n per benchmark).
        threshold: an example is contaminated when at least this fraction of its tokens is covered by
            n-grams found in the training data. The paper chooses it per benchmark and publishes no
            single value [5.1]; 0.5 (a majority of the example's tokens) is this project's default.
    """

    n: int = 8
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"contamination n must be a positive integer, got {self.n!r}.")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"contamination threshold must be in (0, 1], got {self.threshold!r}.")


@dataclass(frozen=True)
class ExampleContamination:
    """One evaluation example's result: the fraction of its tokens covered by training n-grams."""

    index: int
    num_tokens: int
    matched_ngrams: int
    score: float
    contaminated: bool


@dataclass
class ContaminationReport:
    """Per-example scores over one evaluation set, plus what was scanned."""

    config: ContaminationConfig
    examples: list[ExampleContamination]
    training_sequences: int
    training_tokens: int
    too_short: list[int] = field(default_factory=list)  # examples shorter than n: never scorable

    @property
    def contaminated_indices(self) -> list[int]:
        return [e.index for e in self.examples if e.contaminated]

    @property
    def clean_indices(self) -> list[int]:
        return [e.index for e in self.examples if not e.contaminated]

    def to_dict(self) -> dict:
        return {
            "n": self.config.n,
            "threshold": self.config.threshold,
            "training_sequences": self.training_sequences,
            "training_tokens": self.training_tokens,
            "num_examples": len(self.examples),
            "num_contaminated": len(self.contaminated_indices),
            "too_short": self.too_short,
            "examples": [vars(e) for e in self.examples],
        }


def _ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """64-bit polynomial hash of every length-n window (wrapping uint64 arithmetic)."""
    windows = np.lib.stride_tricks.sliding_window_view(tokens.astype(np.uint64), n)
    powers = _HASH_BASE ** np.arange(n - 1, -1, -1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return (windows * powers).sum(axis=1, dtype=np.uint64)


def _to_ids(item: str | Tokens, tokenize: Tokenize | None, what: str) -> np.ndarray:
    if isinstance(item, str):
        if tokenize is None:
            raise ValueError(
                f"{what} are texts: pass `tokenize` (e.g. the Llama 3 tokenizer's encode) to compare tokens."
            )
        item = tokenize(item)
    ids = np.asarray(item)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{what} must be texts or 1-D sequences of integer token ids, got dtype {ids.dtype}.")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{what} contain negative token ids; were they padded with -100 labels?")
    return ids.astype(np.int64)


def find_contamination(
    eval_examples: Sequence[str | Tokens],
    training_data: Iterable[str | Tokens],
    config: ContaminationConfig | None = None,
    tokenize: Tokenize | None = None,
) -> ContaminationReport:
    """Score every evaluation example by the fraction of its tokens inside n-grams seen in training.

    Args:
        eval_examples: the benchmark's examples (texts, or token ids from the same tokenizer as training).
        training_data: any iterable of texts or token-id sequences, e.g. a shard reader; consumed once.
        config: n-gram length and contamination threshold.
        tokenize: maps a text to token ids; required when either side holds texts.
    """
    config = config or ContaminationConfig()
    n = config.n
    if len(eval_examples) == 0:
        raise ValueError("the evaluation set is empty: nothing to check for contamination.")
    eval_ids = [_to_ids(x, tokenize, "evaluation examples") for x in eval_examples]
    too_short = [i for i, ids in enumerate(eval_ids) if ids.size < n]
    if len(too_short) == len(eval_ids):
        raise ValueError(f"every evaluation example is shorter than n={n} tokens; lower n or check the data.")

    # Evaluation n-grams: hash -> the exact n-grams with that hash (collisions kept apart).
    eval_grams: dict[int, set[tuple[int, ...]]] = {}
    for ids in eval_ids:
        if ids.size >= n:
            for h, start in zip(_ngram_hashes(ids, n).tolist(), range(ids.size - n + 1)):
                eval_grams.setdefault(h, set()).add(tuple(ids[start : start + n].tolist()))
    eval_hashes = np.fromiter(eval_grams, dtype=np.uint64)
    eval_vocab = np.unique(np.concatenate(eval_ids))

    found: set[tuple[int, ...]] = set()
    shared_vocab = False
    sequences = tokens = 0
    for item in tqdm(training_data, desc="contamination: scanning training data", unit="seq", leave=False):
        ids = _to_ids(item, tokenize, "training sequences")
        sequences += 1
        tokens += ids.size
        if not shared_vocab and ids.size:
            shared_vocab = bool(np.isin(ids, eval_vocab).any())
        if ids.size < n:
            continue
        hashes = _ngram_hashes(ids, n)
        for start in np.flatnonzero(np.isin(hashes, eval_hashes)).tolist():
            gram = tuple(ids[start : start + n].tolist())
            if gram in eval_grams[int(hashes[start])]:
                found.add(gram)
    if sequences == 0 or tokens == 0:
        raise ValueError("the training data is empty: the shard reader yielded no tokens.")
    if not shared_vocab:
        raise ValueError(
            "evaluation examples and training data share no token id at all: they were almost certainly "
            "tokenized with different vocabularies; tokenize both with the model's tokenizer."
        )

    examples = []
    for index, ids in enumerate(eval_ids):
        covered = np.zeros(ids.size, dtype=bool)
        matched = 0
        for start in range(max(0, ids.size - n + 1)):
            if tuple(ids[start : start + n].tolist()) in found:
                covered[start : start + n] = True
                matched += 1
        score = float(covered.mean()) if ids.size else 0.0
        examples.append(ExampleContamination(index, int(ids.size), matched, score, score >= config.threshold))
    report = ContaminationReport(config, examples, sequences, tokens, too_short)
    logger.info(
        "contamination: %d of %d examples contaminated (n=%d, threshold=%.2f)",
        len(report.contaminated_indices),
        len(examples),
        n,
        config.threshold,
    )
    return report


def split_scores(report: ContaminationReport, scores: Sequence[float]) -> dict[str, float | int | None]:
    """Split a benchmark's per-example scores into the clean and contaminated subsets [5.1].

    Returns the mean score on all, clean and contaminated examples (None for an empty subset), the
    subset sizes, and ``delta`` = contaminated mean - clean mean (the apparent gain from contamination).
    """
    if len(scores) != len(report.examples):
        raise ValueError(
            f"got {len(scores)} per-example scores for {len(report.examples)} evaluated examples; "
            "pass one score per example, in the same order."
        )
    values = np.asarray(scores, dtype=float)
    dirty = np.array([e.contaminated for e in report.examples])
    mean = lambda mask: float(values[mask].mean()) if mask.any() else None  # noqa: E731
    clean_mean, dirty_mean = mean(~dirty), mean(dirty)
    return {
        "all": float(values.mean()),
        "clean": clean_mean,
        "contaminated": dirty_mean,
        "num_clean": int((~dirty).sum()),
        "num_contaminated": int(dirty.sum()),
        "delta": None if clean_mean is None or dirty_mean is None else dirty_mean - clean_mean,
    }


def iter_training_data(paths: Sequence[str | os.PathLike]) -> Iterator[str | Tokens]:
    """Training data for :func:`find_contamination` from files and folders, streamed in order.

    A folder with a ``manifest.json`` is a packed shard folder of the data pipeline (``hf-llama3 curate``),
    read with ``data.shards.PackedShardReader`` one token sequence at a time (an n-gram cut by a sequence
    boundary is not seen); a ``.jsonl`` file yields each line's ``text`` or ``input_ids``.
    """
    from data.shards import MANIFEST, PackedShardReader

    for path in map(Path, paths):
        if path.is_dir() and (path / MANIFEST).is_file():
            for sample in PackedShardReader(path):
                yield sample["input_ids"]
        elif path.is_file():
            yield from read_jsonl_field(path)
        else:
            raise FileNotFoundError(f"{path} is neither a shard folder (with {MANIFEST}) nor a JSONL file.")


def read_jsonl_field(path: str | os.PathLike, fields: Sequence[str] = ("text", "input_ids")) -> Iterable[str | Tokens]:
    """Yield the first present field of ``fields`` from each line of a JSONL file (texts or token ids)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err}).") from err
            for name in fields:
                if name in record:
                    yield record[name]
                    break
            else:
                raise ValueError(f"{path}:{lineno}: none of the fields {list(fields)} is present.")
