"""Domain tagging: is a document code, math or general prose? [3.1.1 "Code and reasoning data"].

The paper routes code and math pages to domain-specific extraction, filters and classifiers. Here the
tag (``metadata["domain"]``) decides which heuristics apply and which mix category a document joins.
It uses what extraction measured (characters inside ``<pre>`` blocks, MathML/TeX formulas) and, for
documents that arrive as plain text, the share of lines that look like source code and the density of
TeX commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |return\b|if .*:$|elif .*:$|else:$|for .*:$|while .*:$|try:$|except\b"
    r"|with .*:$|@\w+|#include|//|/\*|\*/|\}|.*\{$|.*;$|(const|let|var|function|public|private|static) )"
)
# Inline math is "$x^2$" (no space inside the dollars, no "${": a shell prompt "$ npm" or a JavaScript
# template "${name}" is not math) with a TeX sign in it.
_TEX = re.compile(
    r"\\(frac|int|sum|prod|sqrt|lim|infty|alpha|beta|gamma|theta|pi|partial|mathbb|left|right|cdot)\b"
    r"|\$(?![\s{])[^$\n]*[\\^_=][^$\n]*(?<!\s)\$"
)


@dataclass
class DomainConfig:
    """Thresholds of the domain tagger (ours: the paper publishes none).

    Args:
        min_code_fraction: a document is code when this share of its characters sits in code blocks, or
            (plain text) this share of its non-empty lines looks like code.
        min_math_formulas: a document is math with at least this many formulas / TeX commands.
    """

    min_code_fraction: float = 0.5
    min_math_formulas: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.min_code_fraction <= 1:
            raise ValueError(f"domains.min_code_fraction must be in (0, 1], got {self.min_code_fraction}.")
        if self.min_math_formulas < 1:
            raise ValueError(f"domains.min_math_formulas must be >= 1, got {self.min_math_formulas}.")


def detect_domain(text: str, metadata: dict, config: DomainConfig | None = None) -> str:
    """``"code"``, ``"math"`` or ``"general"`` for one extracted document."""
    config = config or DomainConfig()
    if metadata.get("code_chars", 0) >= config.min_code_fraction * max(1, len(text)):
        return "code"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines and "code_chars" not in metadata:
        code_like = sum(bool(CODE_LINE.match(ln)) or ln.startswith(("    ", "\t")) for ln in lines)
        if code_like >= config.min_code_fraction * len(lines):
            return "code"
    formulas = max(metadata.get("math", 0), len(_TEX.findall(text)))
    if formulas >= config.min_math_formulas:
        return "math"
    return "general"


class DomainTagger(BaseFilter):
    """Sets ``metadata["domain"]`` on every document and drops nothing."""

    name = "🏷 domain"

    def __init__(self, config: DomainConfig | None = None):
        super().__init__()
        self.config = config or DomainConfig()

    def filter(self, doc: Document) -> bool:
        doc.metadata["domain"] = detect_domain(doc.text, doc.metadata, self.config)
        self.stat_update(f"domain_{doc.metadata['domain']}")
        return True
