"""Gopher's repetition and quality rules (Rae et al., 2021, Appendix A, Table A1) as two families.

datatrove ships both (``GopherRepetitionFilter``, ``GopherQualityFilter``, same thresholds: the defaults
below). Ours differ in what they measure, not in their thresholds:

- they read the page's prose (:mod:`data.heuristics.view`): code blocks and math markup are not prose,
  so an API page's code examples, which repeat by design, do not count as repeated lines or n-grams, and
  TeX does not count as symbols [3.1.1 domain-specific heuristics];
- words are ``\\w+`` runs (datatrove tokenises with NLTK or spaCy per language, which download models at
  run time) and n-gram ratios are over word characters, as Gopher defines them (datatrove divides by the
  whole text's length, whitespace included);
- duplicated lines and paragraphs count every occurrence after the first (datatrove's ``find_duplicates``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from data.heuristics.family import Domain, FamilyConfig, RuleFamily, check_ratios, ratio
from data.heuristics.view import PageView

_BULLETS = ("•", "-", "*", "·", "‣", "◦", "▪")


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def top_ngram_char_ratio(words: list[str], n: int) -> float:
    """Characters in the most frequent n-gram's occurrences over all word characters (Gopher)."""
    grams = Counter(_ngrams(words, n))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(len(w) for w in gram) / max(1, sum(len(w) for w in words))


def dup_ngram_char_ratio(words: list[str], n: int) -> float:
    """Fraction of word characters covered by n-grams that occur more than once (Gopher)."""
    if len(words) < n:
        return 0.0
    covered = bytearray(len(words))
    seen: set[tuple[str, ...]] = set()
    for i, gram in enumerate(_ngrams(words, n)):
        if gram in seen:
            covered[i : i + n] = b"\x01" * n
        seen.add(gram)
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered) if c) / max(1, total)


def duplicates(items: list[str]) -> tuple[int, int]:
    """(occurrences after the first, their characters) over ``items``."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        seen.add(item)
    return count, chars


@dataclass
class RepetitionLimits:
    """One set of repetition thresholds; ``None`` disables a rule."""

    max_dup_line_ratio: float | None = ratio(0.3)
    max_dup_para_ratio: float | None = ratio(0.3)
    max_dup_line_char_ratio: float | None = ratio(0.2)
    max_dup_para_char_ratio: float | None = ratio(0.2)
    top_ngram_max_ratio: dict[int, float] = field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_max_ratio: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )

    def __post_init__(self) -> None:
        self.top_ngram_max_ratio = {int(k): float(v) for k, v in self.top_ngram_max_ratio.items()}
        self.dup_ngram_max_ratio = {int(k): float(v) for k, v in self.dup_ngram_max_ratio.items()}
        check_ratios(self)
        for n, value in [*self.top_ngram_max_ratio.items(), *self.dup_ngram_max_ratio.items()]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"heuristics.gopher_repetition {n}-gram limit must be in [0, 1], got {value}.")


def _code_page_limits() -> RepetitionLimits:
    # Reference pages repeat by design: every method of an API page carries the same "History / Version
    # Changes" table, the same parameter lines and the same error sentence. Over 135 pages with code of the
    # Node.js, npm, Rust (book, reference, nomicon, by example), valgrind, libxslt and libffi manuals
    # (tests/data/fixtures/docs.jsonl.gz holds a sample of them), the prose reaches 0.48 duplicate lines by
    # count, 0.36 by characters, 0.55 duplicated 5-gram coverage (Node.js's fs.html). Counting rules are off (short labels dominate the count); character rules are doubled
    # and n-gram coverage allows 0.6 (5-grams) down to 0.5 (10-grams): a page of repeated lines or
    # paragraphs still scores near 1.0, and the top n-gram rule, which catches keyword spam, is Gopher's.
    return RepetitionLimits(
        max_dup_line_ratio=None,
        max_dup_para_ratio=None,
        max_dup_line_char_ratio=0.4,
        max_dup_para_char_ratio=0.4,
        dup_ngram_max_ratio={5: 0.60, 6: 0.58, 7: 0.56, 8: 0.54, 9: 0.52, 10: 0.50},
    )


@dataclass
class GopherRepetitionConfig(FamilyConfig):
    """Gopher's repetition thresholds (Table A1) for prose pages, relaxed ones for pages with code.

    Args:
        limits: Gopher's thresholds, for pages without code.
        code_page_limits: for code pages (see ``_code_page_limits`` for where the numbers come from).
    """

    limits: RepetitionLimits = field(default_factory=RepetitionLimits)
    code_page_limits: RepetitionLimits = field(default_factory=_code_page_limits)


class GopherRepetition(RuleFamily):
    """Repeated lines, paragraphs and n-grams in the prose [3.1.1 "duplicated n-gram coverage ratio"]."""

    name = "👯 gopher repetition"
    family = "gopher_repetition"

    def check(self, view: PageView) -> str | None:
        c = self.config.code_page_limits if self.config.is_code_page(view) else self.config.limits
        chars = max(1, sum(len(ln) for ln in view.prose_lines))
        paras = [p.strip() for p in view.prose.split("\n\n") if p.strip()]
        n_dup, dup_chars = duplicates(paras)
        if c.max_dup_para_ratio is not None and paras and n_dup / len(paras) > c.max_dup_para_ratio:
            return "dup_para_ratio"
        if c.max_dup_para_char_ratio is not None and dup_chars / chars > c.max_dup_para_char_ratio:
            return "dup_para_char_ratio"
        lines = view.prose_lines
        n_dup, dup_chars = duplicates(lines)
        if c.max_dup_line_ratio is not None and lines and n_dup / len(lines) > c.max_dup_line_ratio:
            return "dup_line_ratio"
        if c.max_dup_line_char_ratio is not None and dup_chars / chars > c.max_dup_line_char_ratio:
            return "dup_line_char_ratio"
        words = view.prose_words
        for n, limit in sorted(c.top_ngram_max_ratio.items()):
            if top_ngram_char_ratio(words, n) > limit:
                return "top_ngram_ratio"
        for n, limit in sorted(c.dup_ngram_max_ratio.items()):
            if dup_ngram_char_ratio(words, n) > limit:
                return "dup_ngram_coverage"
        return None


@dataclass
class GopherQualityConfig(FamilyConfig):
    """Gopher's quality thresholds (Table A1); ``None`` disables a rule.

    Words 50..100k, mean word length 3..10, hash and ellipsis symbols per word <= 0.1, bullet lines <= 0.9,
    ellipsis lines <= 0.3, words with a letter >= 0.8, at least 2 of Gopher's English stop words. Code
    documents are left out by default: prose rules do not describe source files.

    Args:
        stop_words: Gopher's stop words; the rule runs on ``stop_word_languages`` only (they are English).
    """

    domains: list[Domain] = field(default_factory=lambda: ["general", "math"])
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = ratio(0.1)
    max_bullet_lines_ratio: float | None = ratio(0.9)
    max_ellipsis_lines_ratio: float | None = ratio(0.3)
    min_alpha_words_ratio: float | None = ratio(0.8)
    min_stop_words: int | None = 2
    stop_words: list[str] = field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"])
    stop_word_languages: list[str] = field(default_factory=lambda: ["en"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError("heuristics.gopher_quality.min_words must not exceed max_words.")


class GopherQuality(RuleFamily):
    """Length, word shape, symbols, bullets and stop words of the prose (code words count toward length)."""

    name = "🥇 gopher quality"
    family = "gopher_quality"

    def check(self, view: PageView) -> str | None:
        c = self.config
        if view.spaced:
            # Length counts the code too: on a documentation page the examples are content.
            n_words = len(view.words)
            if c.min_words is not None and n_words < c.min_words:
                return "too_few_words"
            if c.max_words is not None and n_words > c.max_words:
                return "too_many_words"
            words = view.prose_words
            if words:
                mean_len = sum(map(len, words)) / len(words)
                if c.min_mean_word_length is not None and mean_len < c.min_mean_word_length:
                    return "mean_word_length"
                if c.max_mean_word_length is not None and mean_len > c.max_mean_word_length:
                    return "mean_word_length"
        raw_words = view.prose.split()
        if c.max_symbol_word_ratio is not None and raw_words:
            symbols = view.prose.count("#") + view.prose.count("...") + view.prose.count("…")
            if symbols / len(raw_words) > c.max_symbol_word_ratio:
                return "symbol_word_ratio"
        lines = view.prose_lines
        if lines:
            if c.max_bullet_lines_ratio is not None:
                bullets = sum(ln.lstrip().startswith(_BULLETS) for ln in lines)
                if bullets / len(lines) > c.max_bullet_lines_ratio:
                    return "bullet_lines"
            if c.max_ellipsis_lines_ratio is not None:
                ellipsis = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
                if ellipsis / len(lines) > c.max_ellipsis_lines_ratio:
                    return "ellipsis_lines"
        if view.spaced and c.min_alpha_words_ratio is not None and raw_words:
            alpha = sum(any(ch.isalpha() for ch in w) for w in raw_words)
            if alpha / len(raw_words) < c.min_alpha_words_ratio:
                return "alpha_words_ratio"
        if (
            c.min_stop_words is not None
            and view.lang in c.stop_word_languages
            and len(set(c.stop_words).intersection(view.prose_words)) < c.min_stop_words
        ):
            return "few_stop_words"
        return None
