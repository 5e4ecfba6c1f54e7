"""Heuristic quality filters [3.1.1 "Heuristic filtering"]: one datatrove filter per rule family.

Families, in the order they run (each in its own module, with where its thresholds come from):

- ``gopher_repetition`` (:mod:`.gopher`): repeated lines, paragraphs and n-grams (Rae et al., 2021);
- ``gopher_quality`` (:mod:`.gopher`): length, word shape, symbols, bullets, stop words (Rae et al., 2021);
- ``c4`` (:mod:`.c4`): lorem ipsum, optionally curly brackets (Raffel et al., 2020);
- ``fineweb`` (:mod:`.fineweb`): punctuation, short lines, duplicated-line characters (Penedo et al., 2024);
- ``llama3`` (:mod:`.llama3`): the paper's repeated-content lines (duplicated n-gram coverage), dirty
  words and token-distribution KL divergence.

Each family is gated by domain and language (:mod:`.family`) and reads the page through one view
(:mod:`.view`) that gives code and math pages the paper's domain-specific treatment: prose rules judge
prose, code blocks are judged only for repeated content (log dumps), math markup is never a symbol.
Drop reasons carry the family: ``gopher_repetition:dup_line_ratio``.

Use :func:`heuristic_filters` for one pipeline step per family, or :class:`HeuristicFilter` for all of
them as one step (the view is then built once per document).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from data.heuristics.c4 import C4Config, C4Rules
from data.heuristics.family import RuleFamily, page_view
from data.heuristics.fineweb import FineWebConfig, FineWebRules
from data.heuristics.gopher import (
    GopherQuality,
    GopherQualityConfig,
    GopherRepetition,
    GopherRepetitionConfig,
    dup_ngram_char_ratio,
)
from data.heuristics.llama3 import Llama3Config, Llama3Rules, reference_frequencies, token_kl
from data.heuristics.view import PageView

__all__ = [
    "HeuristicFilter",
    "HeuristicsConfig",
    "check_document",
    "dup_ngram_char_ratio",
    "heuristic_filters",
    "reference_frequencies",
    "token_kl",
]


@dataclass
class HeuristicsConfig:
    """Settings of every family (``heuristics.<family>.<key>`` in a recipe)."""

    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    c4: C4Config = field(default_factory=C4Config)
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    llama3: Llama3Config = field(default_factory=Llama3Config)


def heuristic_filters(
    config: HeuristicsConfig | None = None, reference: dict[str, float] | None = None
) -> list[RuleFamily]:
    """One pipeline step per family, in the order they run; ``reference`` overrides the KL reference."""
    c = config or HeuristicsConfig()
    return [
        GopherRepetition(c.gopher_repetition),
        GopherQuality(c.gopher_quality),
        C4Rules(c.c4),
        FineWebRules(c.fineweb),
        Llama3Rules(c.llama3, reference),
    ]


class HeuristicFilter(BaseFilter):
    """Every family as one pipeline step; the drop reason is the first family's first broken rule."""

    name = "📏 heuristics"

    def __init__(self, config: HeuristicsConfig | None = None, reference: dict[str, float] | None = None):
        super().__init__()
        self.families = heuristic_filters(config, reference)

    def judge(self, view: PageView) -> str | None:
        """The prefixed drop reason for ``view``, or None when every family passes it."""
        for family in self.families:
            if reason := family.judge(view):
                return reason
        return None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = self.judge(page_view(doc))
        return (False, reason) if reason else True


def check_document(
    text: str,
    config: HeuristicsConfig | None = None,
    lang: str = "en",
    domain: str = "general",
    metadata: dict | None = None,
    reference: dict[str, float] | None = None,
) -> str | None:
    """The drop reason of one text (``family:rule``), or None when it passes every family."""
    view = PageView(text=text, lang=lang, domain=domain, metadata=metadata or {})
    return HeuristicFilter(config, reference).judge(view)
