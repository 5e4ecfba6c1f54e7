"""Difficulty scoring of prompts [4.2.3 "Difficulty scoring"]: intention tags and model-judged difficulty.

"We use two measures of difficulty: Instag and Llama-based scoring. For Instag, we prompt Llama 3 70B to perform
intention tagging of SFT prompts, where more intentions implies more complexity. We also prompt Llama 3 to measure
the difficulty of dialogs on a three-point scale." Intentions are tagged zero-shot by the judge: an intention is
tagged when its probability among the listed intentions is at least ``tag_share`` times the uniform share (the
paper's tagger writes free-text tags; a fixed list keeps the tags countable across prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.post_data.judge import LogLikelihoodJudge

DEFAULT_INTENTIONS = (
    "ask for information",
    "solve a math problem",
    "write code",
    "fix a bug",
    "explain a concept",
    "write creative text",
    "summarize text",
    "translate text",
    "give advice",
    "compare options",
    "plan steps",
    "format output",
)
# [4.2.3] "a three-point scale".
DIFFICULTY_LEVELS = (1, 2, 3)
_INTENTION = "What does the user intend with this request? Answer with the intention only.\n\nRequest:\n{prompt}"
_DIFFICULTY = (
    "How difficult is it to answer this request well, on a scale of 1 to 3 (3: hard, 1: easy)? Answer with the "
    "number only.\n\nRequest:\n{prompt}"
)


def score_difficulty(
    judge: LogLikelihoodJudge, prompt: str, intentions: Sequence[str], tag_share: float
) -> dict[str, Any]:
    """Intention tags, the judged difficulty (expected level) and ``score`` in [0, 1]: their mean, each scaled.

    ``score`` averages the judged difficulty mapped onto [0, 1] and the share of intentions tagged, so that a
    prompt that is harder or has more intentions ranks higher in semantic deduplication.
    """
    probabilities = judge.option_probabilities(_INTENTION.format(prompt=prompt), list(intentions))
    uniform = 1.0 / len(intentions)
    tags = [name for name, p in zip(intentions, probabilities) if p >= tag_share * uniform]
    judged, _ = judge.expected_score(_DIFFICULTY.format(prompt=prompt), DIFFICULTY_LEVELS)
    low, high = DIFFICULTY_LEVELS[0], DIFFICULTY_LEVELS[-1]
    score = 0.5 * (judged - low) / (high - low) + 0.5 * len(tags) / len(intentions)
    return {"intentions": tags, "judged": judged, "score": score, "model": judge.name}
