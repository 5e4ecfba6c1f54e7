"""The three heuristics Llama 3 names [3.1.1 "Heuristic filtering"], as one family. No thresholds are published.

- Duplicated n-gram coverage "to remove lines that consist of repeated content such as logging or error
  messages. Those lines could be very long and unique, hence cannot be filtered by line-dedup": a line is
  repeated content when most of its word n-grams (digits masked, so timestamps, counters and addresses
  do not make a log line new) already appeared in earlier lines; the page goes when such lines hold too
  large a share of its characters. Unlike the prose families this reads every line, code blocks included:
  a log dump pasted in a ``<pre>`` block is still a log dump (``repeated_lines``).
- "Dirty word" counting (Raffel et al., 2020) for adult pages the domain block lists missed
  (``dirty_words``, over the prose; the word list is better-profanity's).
- Token-distribution KL divergence against a reference distribution, for pages with too many outlier
  tokens (``token_kl``; the reference is wordfreq's table for the page's language, or a corpus's word
  counts). Measured on the prose: identifiers in code are outliers by nature.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from data.heuristics.family import FamilyConfig, RuleFamily, ratio
from data.heuristics.view import WORD, PageView

_DIGITS = re.compile(r"\d+")


@lru_cache(maxsize=1)
def dirty_words() -> frozenset[str]:
    """better-profanity's word list (single words only, lower case)."""
    from importlib.resources import files

    raw = files("better_profanity").joinpath("profanity_wordlist.txt").read_text(encoding="utf-8")
    return frozenset(w.strip().lower() for w in raw.splitlines() if w.strip() and " " not in w.strip())


@lru_cache(maxsize=64)
def reference_frequencies(lang: str) -> dict[str, float] | None:
    """wordfreq's word frequencies for ``lang`` (None when wordfreq has no table for it)."""
    import wordfreq

    if lang not in wordfreq.available_languages(wordlist="best"):
        return None
    return wordfreq.get_frequency_dict(lang, wordlist="best")


def load_reference(path: str) -> dict[str, float]:
    """A corpus reference distribution from a JSON file of word counts (normalised to probabilities)."""
    counts = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(counts, dict) or not counts:
        raise ValueError(f"{path}: expected a non-empty JSON object {{word: count}}.")
    total = float(sum(counts.values()))
    return {str(w).lower(): c / total for w, c in counts.items()}


def token_kl(words: list[str], reference: dict[str, float], floor: float = 1e-8) -> float:
    """KL(P_doc || Q_ref) in nats: P_doc the document's unigram distribution, Q_ref the reference.

    Tokens absent from the reference get probability ``floor`` (wordfreq lists words down to ~1e-8).
    """
    counts = Counter(words)
    total = sum(counts.values())
    return sum((c / total) * math.log((c / total) / max(reference.get(w, 0.0), floor)) for w, c in counts.items())


def repeated_line_char_ratio(lines: list[str], n: int, min_coverage: float) -> float:
    """Share of the characters of ``lines`` in lines whose word ``n``-grams (digits masked) mostly repeat
    earlier ones: at least ``min_coverage`` of them seen before in the page."""
    seen: set[tuple[str, ...]] = set()
    repeated = total = 0
    for line in lines:
        total += len(line)
        words = WORD.findall(_DIGITS.sub("0", line.lower()))
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)] or [tuple(words)]
        if sum(g in seen for g in grams) >= min_coverage * len(grams):
            repeated += len(line)
        seen.update(grams)
    return repeated / max(1, total)


@dataclass
class Llama3Config(FamilyConfig):
    """Thresholds of the paper's three heuristics (ours: the paper publishes none); ``None`` disables a rule.

    Args:
        max_repeated_line_char_ratio: most characters in repeated-content lines. Ours: documentation pages
            score at most 0.60 with their code (Node.js's buffer.html; 259 pages of the Node.js, npm, Rust,
            valgrind, libxslt and libffi manuals, 95th percentile 0.41), real source (the stdlib's bisect.py,
            pairs of near-identical functions) 0.52; log dumps 0.95-0.99 (the sample's CI log, the planted
            ones in tests/data/test_heuristics_docs.py). 0.75 sits between.
        line_ngram: the n of the n-grams a line is compared by.
        line_coverage: share of a line's n-grams seen before for it to count as repeated.
        max_dirty_word_ratio / min_dirty_words: a page goes with at least ``min_dirty_words`` listed words
            that are more than this share of its words.
        max_token_kl: ours: on the sample corpus, prose in languages with spaces scores 2.7-9.1 nats (Korean
            highest); a page that is half random strings scores > 10.
        kl_min_words: pages with fewer prose words are not scored.
        kl_reference: a JSON file {word: count} (unigram counts of a trusted corpus) used instead of
            wordfreq, for every language.
    """

    max_repeated_line_char_ratio: float | None = ratio(0.75)
    line_ngram: int = 3
    line_coverage: float = 0.6
    max_dirty_word_ratio: float | None = ratio(0.01)
    min_dirty_words: int = 3
    max_token_kl: float | None = 9.5
    kl_min_words: int = 50
    kl_reference: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.line_ngram < 1 or not 0.0 < self.line_coverage <= 1.0:
            raise ValueError("heuristics.llama3.line_ngram must be >= 1 and line_coverage in (0, 1].")
        if self.kl_reference is not None and not Path(self.kl_reference).is_file():
            raise FileNotFoundError(f"heuristics.llama3.kl_reference {self.kl_reference!r} does not exist.")


class Llama3Rules(RuleFamily):
    """Repeated-content lines, dirty words and token KL divergence [3.1.1]."""

    name = "🦙 llama3 heuristics"
    family = "llama3"

    def __init__(self, config: Llama3Config, reference: dict[str, float] | None = None):
        super().__init__(config)
        if reference is None and config.kl_reference is not None:
            reference = load_reference(config.kl_reference)
        self.reference = reference

    def check(self, view: PageView) -> str | None:
        c = self.config
        if c.max_repeated_line_char_ratio is not None:
            ratio = repeated_line_char_ratio(view.lines, c.line_ngram, c.line_coverage)
            if ratio > c.max_repeated_line_char_ratio:
                return "repeated_lines"
        words = view.prose_words  # a code example's identifiers are not the page's language
        if c.max_dirty_word_ratio is not None and words:
            dirty = sum(w in dirty_words() for w in words)
            if dirty >= c.min_dirty_words and dirty / len(words) > c.max_dirty_word_ratio:
                return "dirty_words"
        prose = view.prose_words
        if c.max_token_kl is not None and view.spaced and len(prose) >= c.kl_min_words:
            ref = self.reference if self.reference is not None else reference_frequencies(view.lang)
            if ref is not None and token_kl(prose, ref) > c.max_token_kl:
                return "token_kl"
        return None
