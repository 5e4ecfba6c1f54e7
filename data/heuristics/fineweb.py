"""FineWeb's line rules (Penedo et al., 2024, section 3.3.3) as one family, on the page's prose.

Thresholds are FineWeb's published ones: lines ending in punctuation >= 0.12, lines of at most 30
characters <= 0.67, characters in duplicated lines <= 0.1, newlines per word <= 0.3. datatrove's
``FineWebQualityFilter`` defaults its duplicated-line threshold to 0.01, ten times stricter than the
paper's 0.1; we keep the paper's. Lines are prose lines (code blocks and math are not prose: an API
page's code is short lines without full stops by nature [3.1.1 domain-specific heuristics]), and the
newline ratio counts non-empty prose lines, so paragraph breaks do not count as list items. Code
and math documents are left out by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data.heuristics.family import Domain, FamilyConfig, RuleFamily, ratio
from data.heuristics.gopher import duplicates
from data.heuristics.view import PageView

# datatrove's TERMINAL_PUNCTUATION covers dozens of scripts; these are the ones a sentence ends with.
PUNCT_END = (".", "!", "?", '"', "'", "…", "。", "！", "？", "»", "”", ":", ";", "।", "؟")


@dataclass
class FineWebConfig(FamilyConfig):
    """FineWeb's thresholds; ``None`` disables a rule."""

    # Math pages are left out too: with their formulas set aside, the lines around display math are short
    # and end without punctuation (three of the sample's sympy pages would go).
    domains: list[Domain] = field(default_factory=lambda: ["general"])
    min_punct_lines_ratio: float | None = ratio(0.12)
    max_short_lines_ratio: float | None = ratio(0.67)
    short_line_chars: int = 30
    max_dup_line_char_ratio: float | None = ratio(0.1)
    # Code pages: Gopher repetition's code-page limit (data/heuristics/gopher.py says where it comes from).
    code_page_max_dup_line_char_ratio: float | None = ratio(0.4)
    max_newline_word_ratio: float | None = ratio(0.3)


class FineWebRules(RuleFamily):
    """Punctuation, short lines, duplicated-line characters and list-likeness of the prose."""

    name = "🍷 fineweb"
    family = "fineweb"

    def check(self, view: PageView) -> str | None:
        c = self.config
        lines = [ln.strip() for ln in view.prose_lines]
        if not lines:
            return None
        punct = sum(ln.endswith(PUNCT_END) for ln in lines) / len(lines)
        if c.min_punct_lines_ratio is not None and punct < c.min_punct_lines_ratio:
            return "punct_lines_ratio"
        short = sum(len(ln) <= c.short_line_chars for ln in lines) / len(lines)
        if c.max_short_lines_ratio is not None and short > c.max_short_lines_ratio:
            return "short_lines_ratio"
        max_dup = c.code_page_max_dup_line_char_ratio if c.is_code_page(view) else c.max_dup_line_char_ratio
        if max_dup is not None and duplicates(lines)[1] / max(1, sum(map(len, lines))) > max_dup:
            return "dup_line_char_ratio"
        words = view.prose_words
        if (
            view.spaced
            and c.max_newline_word_ratio is not None
            and words
            and len(lines) / len(words) > c.max_newline_word_ratio
        ):
            return "newline_word_ratio"
        return None
