"""Quality scoring of dialogs [4.2.3 "Quality scoring"]: reward-model score and a model-as-judge rubric.

"For RM-based filtering, we consider data that is in the top quartile of RM scores as high quality. For
Llama-based filtering, we prompt Llama 3 checkpoint to rate each sample on a three-point scale for general English
data (accuracy, instruction following, and tone/presentation) and a two-point scale for coding data (bug
identification and user intention), and consider samples that obtain the maximum score as high quality. ... we
select examples that are marked as high quality by either the RM or the Llama-based filter." The reward model is
run through the reward stage's own packed scoring (:func:`training.rejection_sampling.score_samples`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.post_data.judge import LogLikelihoodJudge

# [4.2.3] three-point scale for general English data, two-point scale for coding data.
GENERAL_LEVELS = (1, 2, 3)
CODING_LEVELS = (1, 2)
_GENERAL_RUBRIC = (
    "Rate the assistant's response on a scale of 1 to 3 for accuracy, instruction following and tone/presentation "
    "(3: excellent on all three, 1: poor). Answer with the number only.\n\nRequest:\n{prompt}\n\nResponse:\n{response}"
)
_CODING_RUBRIC = (
    "Rate the assistant's code on a scale of 1 to 2 (2: free of bugs and does what the user intended, 1: has a bug "
    "or misses the user's intention). Answer with the number only.\n\nRequest:\n{prompt}\n\nResponse:\n{response}"
)


def reward_scores(
    reward_model: Any, tokenizer: Any, prompts: Sequence[list[dict]], responses: Sequence[Any]
) -> list[float]:
    """The reward model's score of each (prompt messages, response) pair."""
    from training.post_rows import tokenize_prompt_and_responses
    from training.rejection_sampling import score_samples

    prompt_ids, sample_ids = [], []
    for prompt, response in zip(prompts, responses):
        ids, (response_ids,) = tokenize_prompt_and_responses(tokenizer, prompt, [response])
        prompt_ids.append(ids)
        sample_ids.append([response_ids])
    return [scores[0] for scores in score_samples(reward_model, prompt_ids, sample_ids)]


def top_fraction_flags(scores: Sequence[float], fraction: float) -> list[bool]:
    """True for the scores in the top ``fraction`` of the set (the top quartile for 0.25 [4.2.3])."""
    values = np.asarray(scores, dtype=float)
    threshold = np.quantile(values, 1.0 - fraction)
    return [bool(v >= threshold) for v in values]


def judge_rubric(judge: LogLikelihoodJudge, prompt: str, response: str, coding: bool) -> dict[str, Any]:
    """The judge's rubric rating: expected score, most likely level, and ``high`` when that level is the maximum."""
    levels = CODING_LEVELS if coding else GENERAL_LEVELS
    template = _CODING_RUBRIC if coding else _GENERAL_RUBRIC
    expected, level = judge.expected_score(template.format(prompt=prompt, response=response), levels)
    return {
        "rubric": "coding" if coding else "general",
        "score": expected,
        "scale": max(levels),  # the rubric's maximum: score / scale is the quality in [0, 1] curate sorts by
        "level": level,
        "high": level == max(levels),
    }
