"""Data-mix planning [3.1.2] and annealing mixes [3.1.3].

Every kept document joins one mix category: ``code`` and ``math_reasoning`` from its domain tag,
``multilingual`` for prose not in English, ``general`` for the rest (a ``category`` field in the input
wins). The planner turns category weights and the tokens available per category into token targets;
the shard writer then takes whole documents per category in a seeded order (truncating the last one,
repeating a category when its target needs more than one epoch) so the shards hit the weights to the
token.

Paper numbers: the final pre-training mix is 50% general knowledge, 25% mathematical and reasoning,
17% code and 8% multilingual tokens [3.1.2]; annealing on a candidate dataset gives it 30% weight and
the default mix 70% [3.1.3]. Knowledge-category downsampling ("arts and entertainment" is
over-represented on the web [3.1.2]) is ``topic_keep``: the share of documents kept per topic label.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import ClassVar

CATEGORIES = ("general", "math_reasoning", "code", "multilingual")
PAPER_MIX = dict(zip(CATEGORIES, (0.50, 0.25, 0.17, 0.08)))  # [3.1.2]
ANNEAL_CATEGORY = "anneal"
ANNEAL_WEIGHT = 0.30  # [3.1.3]


@dataclass
class MixConfig:
    """Mix settings.

    Args:
        weights: target share of tokens per category (normalised to sum to 1).
        total_tokens: token budget of the shards; None takes the largest budget in which no category is
            repeated more than ``max_epochs`` times.
        max_epochs: how many times a category's documents may be repeated to meet its weight.
        anneal_sources: glob patterns on a document's ``source`` path that mark the new data of an
            annealing run; those documents form the ``anneal`` category with ``anneal_weight``, and the
            other categories share the rest in proportion to ``weights`` [3.1.3].
        anneal_weight: share of the new data in an annealing mix (paper: 30%).
        topic_keep: keep this fraction of the documents of a topic (downsampling over-represented
            knowledge categories [3.1.2]); topics not listed keep everything.
        seed: seed of document selection and shuffling.
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(PAPER_MIX))
    total_tokens: int | None = None
    max_epochs: float = 1.0
    anneal_sources: list[str] = field(default_factory=list)
    anneal_weight: float = ANNEAL_WEIGHT
    topic_keep: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "weights": {"min": 0},
        "total_tokens": {"min": 1},
        "max_epochs": {"gt": 0},
        "anneal_weight": {"min": 0, "max": 1},
        "topic_keep": {"min": 0, "max": 1},
        "seed": {"min": 0},
    }

    def __post_init__(self) -> None:
        if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"mix.weights must be non-negative and not all zero, got {self.weights}.")
        if self.total_tokens is not None and self.total_tokens <= 0:
            raise ValueError(f"mix.total_tokens must be > 0, got {self.total_tokens}.")
        if self.max_epochs <= 0:
            raise ValueError(f"mix.max_epochs must be > 0, got {self.max_epochs}.")
        if not 0 < self.anneal_weight < 1:
            raise ValueError(f"mix.anneal_weight must be in (0, 1), got {self.anneal_weight}.")
        if any(not 0 <= v <= 1 for v in self.topic_keep.values()):
            raise ValueError(f"mix.topic_keep values must be in [0, 1], got {self.topic_keep}.")

    def target_weights(self) -> dict[str, float]:
        """Normalised category weights, with the annealing split applied when ``anneal_sources`` is set."""
        total = sum(self.weights.values())
        weights = {k: v / total for k, v in self.weights.items() if v > 0}
        if self.anneal_sources:
            weights = {k: v * (1 - self.anneal_weight) for k, v in weights.items()}
            weights[ANNEAL_CATEGORY] = self.anneal_weight
        return weights


def category_of(metadata: dict, config: MixConfig | None = None) -> str:
    """The mix category of a document from its metadata (domain, language, source)."""
    if config is not None and config.anneal_sources:
        source = str(metadata.get("source", ""))
        if any(fnmatch.fnmatch(source, pattern) for pattern in config.anneal_sources):
            return ANNEAL_CATEGORY
    if metadata.get("category"):
        return str(metadata["category"])
    domain = metadata.get("domain", "general")
    if domain == "code":
        return "code"
    if domain == "math":
        return "math_reasoning"
    if metadata.get("lang", "en") != "en":
        return "multilingual"
    return "general"


def plan_mix(available: dict[str, int], config: MixConfig) -> dict[str, int]:
    """Token target per category.

    With ``total_tokens`` unset the budget is the largest ``T`` with ``weight_c * T <= max_epochs *
    available_c`` for every category; a category with weight but no tokens is an error (the mix cannot
    be met), named in the message.
    """
    weights = config.target_weights()
    missing = [c for c in weights if available.get(c, 0) == 0]
    if missing:
        raise ValueError(
            f"the mix needs categories {missing} but the curated data has no tokens in them; "
            f"set their weight to 0 in mix.weights or add data (available: {available})."
        )
    if config.total_tokens is not None:
        total = config.total_tokens
        for c, w in weights.items():
            if w * total > config.max_epochs * available[c] + 1e-9:
                raise ValueError(
                    f"mix.total_tokens={total} needs {math.ceil(w * total)} {c} tokens, more than "
                    f"{config.max_epochs} epoch(s) of the {available[c]} available: raise mix.max_epochs or lower the budget."
                )
    else:
        total = min(config.max_epochs * available[c] / w for c, w in weights.items())
    return {c: round(w * total) for c, w in weights.items()}
