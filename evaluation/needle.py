"""Needle-in-a-haystack: the long-context gate of the Llama 3 pre-training recipe [3.4.2, 5.2].

A haystack of ordinary text, tokenized with the model's tokenizer, is cut to a target context length;
one or more "needles" (``The special magic number for <key> is <7 digits>.``) are spliced in at a
relative depth; the model is asked for the number of one needle and scores 1 when the first number it
generates is exactly the needle's value. A grid of context lengths x depths gives a heatmap; the
multi-needle variant hides several needles and asks for a subset of them (the paper's multi-needle test
hides 4 and asks for 2 [5.2]).

The paper moves to the next long-context stage only when needle-in-a-haystack is solved up to the
current length [3.4.2]; Llama 3 retrieves the needle at every depth and length (100%), so the gate's
default requirement is a perfect score in every cell. :func:`needle_gate` is what the long-context
pre-training stage calls.

The model is anything with the transformers ``generate(input_ids=..., attention_mask=...,
max_new_tokens=..., do_sample=False)`` interface; the tokenizer anything with ``encode(text,
add_special_tokens=False)`` and ``decode(ids, skip_special_tokens=True)`` (a transformers tokenizer).
Prompts are built at the token level, so every prompt is exactly the requested length.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

NEEDLE_TEMPLATE = "\nThe special magic number for {key} is {value}.\n"
QUESTION_TEMPLATE = (
    "\n\nQuestion: What is the special magic number for {key} mentioned in the text above?\n"
    "Answer: The special magic number for {key} is"
)
# Distinct keys for the needles of one prompt (the multi-needle variant uses several).
NEEDLE_KEYS = (
    "amber-falcon",
    "cobalt-river",
    "crimson-maple",
    "silver-otter",
    "violet-harbor",
    "golden-lynx",
    "ivory-summit",
    "jade-comet",
)
_FIRST_NUMBER = re.compile(r"\d+")


@dataclass
class NeedleConfig:
    """The grid and the scoring of one needle-in-a-haystack evaluation.

    Args:
        lengths: prompt lengths in tokens (haystack + needles + question), e.g. each long-context stage's length.
        depths: where the (first) needle starts, as a fraction of the haystack: 0 is the start, 1 the end.
        num_needles: needles hidden per prompt; 1 is the classic test, 4 the paper's multi-needle [5.2].
        num_queried: how many of the hidden needles are asked for, one generation each (paper: 2 of 4).
        trials: prompts per cell, each with fresh needle values and a different haystack offset.
        max_new_tokens: generation budget for the answer (a 7-digit number and a period need about 4-8 tokens).
        min_score: the gate passes when every cell scores at least this; 1.0 = "solved" [3.4.2].
        seed: seeds needle values and haystack offsets, so reruns give the same prompts.
    """

    lengths: Sequence[int]
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    num_needles: int = 1
    num_queried: int | None = None
    trials: int = 1
    max_new_tokens: int = 12
    min_score: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.lengths = [int(n) for n in self.lengths]
        self.depths = [float(d) for d in self.depths]
        if not self.lengths or min(self.lengths) <= 0:
            raise ValueError(f"needle lengths must be a non-empty list of positive token counts, got {self.lengths}.")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"needle depths must be fractions in [0, 1], got {self.depths}.")
        if not 1 <= self.num_needles <= len(NEEDLE_KEYS):
            raise ValueError(f"num_needles must be between 1 and {len(NEEDLE_KEYS)}, got {self.num_needles}.")
        if self.num_queried is None:
            self.num_queried = self.num_needles
        if not 1 <= self.num_queried <= self.num_needles:
            raise ValueError(
                f"num_queried must be between 1 and num_needles={self.num_needles}, got {self.num_queried}."
            )
        if self.trials < 1 or self.max_new_tokens < 1:
            raise ValueError("trials and max_new_tokens must be at least 1.")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}.")


@dataclass
class NeedleResult:
    """Scores on the lengths x depths grid (``scores[i, j]`` for ``lengths[i]``, ``depths[j]``) and every answer."""

    lengths: list[int]
    depths: list[float]
    scores: np.ndarray
    records: list[dict[str, Any]] = field(repr=False)

    @property
    def mean_score(self) -> float:
        return float(self.scores.mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "lengths": self.lengths,
            "depths": self.depths,
            "scores": self.scores.tolist(),
            "mean_score": self.mean_score,
            "records": self.records,
        }


@dataclass
class GateResult:
    """The long-context gate's verdict: ``passed``, the failing cells in words, and the full scores."""

    passed: bool
    reasons: list[str]
    scores: NeedleResult


def default_corpus(min_chars: int = 500) -> list[str]:
    """Offline prose: the Python Language Reference that CPython ships in ``pydoc_data`` (about 465K
    characters), cut at blank lines into documents of at least ``min_chars`` characters."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for _, text in sorted(topics.items()):
        current = ""
        for paragraph in text.split("\n\n"):
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= min_chars:
                docs.append(current.strip())
                current = ""
        if current.strip():
            docs.append(current.strip())
    return docs


def build_haystack(tokenizer: Any, corpus: Iterable[str], num_tokens: int) -> list[int]:
    """Token ids of the corpus documents joined by blank lines, cycled until ``num_tokens`` are reached."""
    docs = [tokenizer.encode(text + "\n\n", add_special_tokens=False) for text in corpus if text.strip()]
    docs = [ids for ids in docs if ids]
    if not docs:
        raise ValueError("the haystack corpus is empty: give at least one non-empty text.")
    haystack: list[int] = []
    while len(haystack) < num_tokens:
        for ids in docs:
            haystack.extend(ids)
            if len(haystack) >= num_tokens:
                break
    return haystack


def _check_model(model: Any, haystack: list[int], max_length: int) -> None:
    """The tokenizer's ids must fit the model's vocabulary, and the longest prompt its context."""
    config = getattr(model, "config", None)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and max(haystack) >= vocab_size:
        raise ValueError(
            f"the tokenizer produces id {max(haystack)} but the model's vocabulary has {vocab_size} entries: "
            "the tokenizer does not belong to this model; pass the model's own tokenizer."
        )
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and max_length > context:
        raise ValueError(
            f"needle length {max_length} exceeds the model's context of {context} tokens "
            "(max_position_embeddings); test lengths up to the context the model was trained for."
        )


def build_prompt(
    tokenizer: Any,
    haystack: list[int],
    length: int,
    depth: float,
    needles: Sequence[tuple[str, str]],
    query_key: str,
    offset: int = 0,
) -> list[int]:
    """A prompt of exactly ``length`` tokens: BOS, haystack with the needles spliced in, then the question.

    The first needle goes at ``depth`` of the haystack; further needles are spread evenly over the rest.
    Needles are spliced between tokens, so the surrounding haystack tokens stay as they were.
    """
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    needle_ids = [
        tokenizer.encode(NEEDLE_TEMPLATE.format(key=k, value=v), add_special_tokens=False) for k, v in needles
    ]
    question = tokenizer.encode(QUESTION_TEMPLATE.format(key=query_key), add_special_tokens=False)
    budget = length - len(bos) - sum(map(len, needle_ids)) - len(question)
    if budget < 1:
        raise ValueError(
            f"context length {length} is too short to hold the needles and the question; use longer lengths."
        )
    if offset + budget > len(haystack):
        raise ValueError(f"haystack of {len(haystack)} tokens is too short for offset {offset} + {budget} tokens.")
    hay = haystack[offset : offset + budget]
    count = len(needle_ids)
    positions = [round(budget * (depth + (1.0 - depth) * j / count)) for j in range(count)]
    prompt, cursor = list(bos), 0
    for position, ids in zip(positions, needle_ids):
        prompt += hay[cursor:position] + ids
        cursor = position
    prompt += hay[cursor:] + question
    assert len(prompt) == length, (len(prompt), length)
    return prompt


def _model_device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else torch.device("cpu")


def _generate(model: Any, tokenizer: Any, prompt: list[int], max_new_tokens: int) -> str:
    input_ids = torch.tensor([prompt], dtype=torch.long, device=_model_device(model))
    pad_id = getattr(tokenizer, "pad_token_id", None)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id if pad_id is not None else getattr(tokenizer, "eos_token_id", None),
        )
    return tokenizer.decode(output[0, len(prompt) :].tolist(), skip_special_tokens=True)


def score_answer(generated: str, value: str) -> float:
    """Exact retrieval: 1.0 when the first number in the generation is the needle's value, else 0.0."""
    match = _FIRST_NUMBER.search(generated)
    return float(match is not None and match.group(0) == value)


def run_needle(model: Any, tokenizer: Any, config: NeedleConfig, corpus: Iterable[str] | None = None) -> NeedleResult:
    """Evaluate ``model`` on every (length, depth) cell of ``config`` and return the score grid."""
    rng = random.Random(config.seed)
    corpus = default_corpus() if corpus is None else list(corpus)
    max_length = max(config.lengths)
    # One haystack long enough for the longest prompt at any trial offset (offsets vary the text per trial).
    stride = max(1, max_length // 4)
    haystack = build_haystack(tokenizer, corpus, max_length + stride * (config.trials - 1))
    _check_model(model, haystack, max_length)
    was_training = getattr(model, "training", False)
    if was_training:  # called from inside training loops: generate in eval mode, then hand the model back
        model.eval()
    try:
        scores, records = _run_cells(model, tokenizer, config, haystack, stride, rng)
    finally:
        if was_training:
            model.train()
    result = NeedleResult(config.lengths, config.depths, scores, records)
    logger.info("needle-in-a-haystack: mean score %.3f over %d cells", result.mean_score, scores.size)
    return result


def _run_cells(
    model: Any, tokenizer: Any, config: NeedleConfig, haystack: list[int], stride: int, rng: random.Random
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    scores = np.zeros((len(config.lengths), len(config.depths)))
    records: list[dict[str, Any]] = []
    cells = [(i, j) for i in range(len(config.lengths)) for j in range(len(config.depths))]
    for i, j in tqdm(cells, desc="needle-in-a-haystack", unit="cell", leave=False):
        length, depth = config.lengths[i], config.depths[j]
        cell = []
        for trial in range(config.trials):
            keys = rng.sample(NEEDLE_KEYS, config.num_needles)
            needles = [(key, str(rng.randrange(1_000_000, 10_000_000))) for key in keys]
            for key, value in rng.sample(needles, config.num_queried):
                prompt = build_prompt(tokenizer, haystack, length, depth, needles, key, offset=stride * trial)
                generated = _generate(model, tokenizer, prompt, config.max_new_tokens)
                score = score_answer(generated, value)
                cell.append(score)
                records.append(
                    {"length": length, "depth": depth, "trial": trial, "key": key, "value": value}
                    | {"generated": generated, "score": score}
                )
        scores[i, j] = float(np.mean(cell))
    return scores, records


def needle_gate(
    model: Any,
    tokenizer: Any,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    corpus: Iterable[str] | None = None,
    **config_kwargs: Any,
) -> GateResult:
    """The long-context stage's gate [3.4.2]: pass only if every cell scores at least ``min_score``.

    ``config_kwargs`` go to :class:`NeedleConfig` (``num_needles``, ``num_queried``, ``trials``,
    ``min_score``, ``max_new_tokens``, ``seed``). ``reasons`` names each failing cell.
    """
    config = NeedleConfig(lengths=lengths, depths=depths, **config_kwargs)
    result = run_needle(model, tokenizer, config, corpus)
    reasons = [
        f"length {length} depth {depth:.2f}: retrieved {result.scores[i, j]:.0%} < required {config.min_score:.0%}"
        for i, length in enumerate(result.lengths)
        for j, depth in enumerate(result.depths)
        if result.scores[i, j] < config.min_score
    ]
    return GateResult(passed=not reasons, reasons=reasons, scores=result)
