"""Reward modelling [paper 4.1.2] on TRL's RewardTrainer, extended to ranked 2- and 3-response rows.

What the paper does and TRL does not:
- each prompt has 2 or 3 responses ranked ``edited > chosen > rejected``; the loss is the Llama 2 ranking loss
  ``-log sigmoid(r_better - r_worse)`` over every ordered pair, without the margin term;
- the prompt and its responses, shuffled, are packed in one row: each response attends to the prompt and to itself
  only (a block mask), with positions continuing from the end of the prompt, so one forward scores all of them and
  each score equals the score of ``prompt + response`` on its own;
- only pairs rated "significantly better" or "better" are kept when the data has a strength column.

Dataset columns: ``prompt`` and ``chosen``/``rejected`` (optionally ``edited``), or ``prompt`` and ``responses``
(a list ranked best first); prompts are strings or chat messages, responses strings (or assistant-message lists).
Pre-tokenized rows use ``prompt_ids`` and ``responses_ids``. Bad rows are reported with their row numbers.

    hf-llama3 reward --config recipes/tiny/reward.yaml
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import RewardConfig, RewardTrainer

from training.post_cli import StageInputs

logger = logging.getLogger(__name__)

# [4.1.2] annotators rate preference strength on a 4-level scale; the paper keeps the two strongest levels.
KEPT_STRENGTHS = ("significantly better", "better")
# [4.1.2] ranking order of the response columns: edited > chosen > rejected.
RANKED_COLUMNS = ("edited", "chosen", "rejected")
PACKED_COLUMNS = ["input_ids", "position_ids", "segment_ids", "response_ends", "response_ranks"]
PROMPT_SEGMENT, PAD_SEGMENT = 0, -1


@dataclasses.dataclass
class Llama3RewardConfig(RewardConfig, StageInputs):
    """TRL's ``RewardConfig`` plus the paper's ranked-response settings [4.1.2] and the shared stage inputs.

    Args:
        strength_column: Column holding the annotated preference strength; rows whose strength is not in
            ``kept_strengths`` are dropped (and counted in the log). Ignored when the column is absent.
        kept_strengths: Strength labels to keep [4.1.2: "significantly better" and "better"].
        shuffle_responses: Shuffle the responses inside each packed row [4.1.2], seeded by ``seed`` and the row
            index, so the model cannot learn a position bias.
    """

    strength_column: str = "strength"
    kept_strengths: list[str] = dataclasses.field(default_factory=lambda: list(KEPT_STRENGTHS))
    shuffle_responses: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_inputs()
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must hold a prompt and a response, got {self.max_length}.")
        self.kept_strengths = [s.strip().lower() for s in self.kept_strengths]
        # The packed rows carry their own columns; TRL's default would drop them before the collator sees them.
        self.remove_unused_columns = False


# ----------------------------------------------------------------------------------------------------------------
# Rows: validation, tokenization, packing


def ranked_responses(row: dict[str, Any]) -> list[Any]:
    """A row's responses, best first: the ``responses`` list, or whichever of edited/chosen/rejected are present."""
    if "responses" in row:
        return list(row["responses"] or [])
    return [row[name] for name in RANKED_COLUMNS if row.get(name) is not None]


def _is_empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return not any(str(m.get("content") or "").strip() for m in value)
    return not value


def check_columns(column_names: Sequence[str]) -> None:
    """Raise if the dataset lacks the columns a ranked preference row needs."""
    names = set(column_names)
    if {"prompt_ids", "responses_ids"} <= names:
        return
    if "prompt" not in names or not ("responses" in names or {"chosen", "rejected"} <= names):
        raise ValueError(
            f"Reward dataset columns {sorted(names)} are missing what a ranked row needs: 'prompt' with either "
            "'chosen' and 'rejected' (optionally 'edited') or 'responses' (a list ranked best first); "
            "pre-tokenized rows need 'prompt_ids' and 'responses_ids'."
        )


def find_bad_rows(dataset: Dataset) -> list[str]:
    """One message per malformed row: missing or empty prompt/responses, fewer than 2 or more than 3 responses."""
    problems = []
    tokenized = "prompt_ids" in dataset.column_names
    for index, row in enumerate(dataset):
        prompt = row["prompt_ids"] if tokenized else row.get("prompt")
        responses = row["responses_ids"] if tokenized else ranked_responses(row)
        if _is_empty(prompt):
            problems.append(f"row {index}: empty prompt")
        if not 2 <= len(responses) <= 3:
            problems.append(f"row {index}: {len(responses)} responses (need 2 or 3, ranked best first)")
        problems += [f"row {index}: response {k} is empty" for k, r in enumerate(responses) if _is_empty(r)]
    return problems


def raise_for_problems(problems: list[str], what: str, limit: int = 10) -> None:
    """Raise one ValueError listing (up to ``limit``) row problems, so nothing trains on bad rows silently."""
    if problems:
        shown = "; ".join(problems[:limit]) + (
            f"; ... ({len(problems) - limit} more)" if len(problems) > limit else ""
        )
        raise ValueError(f"{what}: {len(problems)} bad row(s): {shown}. Fix or drop these rows and rerun.")


def tokenize_prompt_and_responses(
    tokenizer, prompt: Any, responses: Sequence[Any]
) -> tuple[list[int], list[list[int]]]:
    """Token ids of a prompt and of each response continuing it.

    Chat prompts (lists of messages) are encoded with ``hf_llama3.encode_dialog`` (the Llama 3.1 dialog format,
    ending with the assistant header); each response is the rest of the encoded conversation: its content and
    ``<|eot_id|>``. Plain-text prompts get ``<|begin_of_text|>`` and responses end with the EOS token.
    """
    from hf_llama3 import encode_dialog

    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt).input_ids
        eos = tokenizer.eos_token_id
        return prompt_ids, [[*tokenizer(r, add_special_tokens=False).input_ids, eos] for r in responses]
    prompt_ids = encode_dialog(tokenizer, prompt, add_generation_prompt=True).input_ids
    response_ids = []
    for response in responses:
        message = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        full_ids = encode_dialog(tokenizer, list(prompt) + list(message)).input_ids
        if full_ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError("The dialog encodes the prompt differently with and without a response.")
        response_ids.append(full_ids[len(prompt_ids) :])
    return prompt_ids, response_ids


def pack_ranked_row(
    prompt_ids: Sequence[int], ranked_response_ids: Sequence[Sequence[int]], order: Sequence[int] | None = None
) -> dict[str, list]:
    """Pack a prompt and its responses into one row [4.1.2].

    ``order`` lists which ranked response goes in each packed slot (default: ranked order). Returns the packed
    ``input_ids``, ``position_ids`` (each response continues from the end of the prompt), ``segment_ids``
    (0 for the prompt, slot + 1 for a response), ``response_ends`` (index of each slot's last token) and
    ``response_ranks`` (0 = best).
    """
    order = list(range(len(ranked_response_ids))) if order is None else list(order)
    input_ids, positions = list(prompt_ids), list(range(len(prompt_ids)))
    segments, ends, ranks = [PROMPT_SEGMENT] * len(prompt_ids), [], []
    for slot, rank in enumerate(order):
        response = list(ranked_response_ids[rank])
        input_ids += response
        positions += range(len(prompt_ids), len(prompt_ids) + len(response))
        segments += [slot + 1] * len(response)
        ends.append(len(input_ids) - 1)
        ranks.append(rank)
    return {
        "input_ids": input_ids,
        "position_ids": positions,
        "segment_ids": segments,
        "response_ends": ends,
        "response_ranks": ranks,
    }


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive ``[batch, 1, seq, seq]`` mask for packed rows: causal, and a response sees the prompt and itself.

    Padding (segment -1) sees only itself, so no softmax row is empty.
    """
    seq_len = segment_ids.shape[1]
    index = torch.arange(seq_len, device=segment_ids.device)
    causal = index[:, None] >= index[None, :]
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    visible = causal & (query >= 0) & (key >= 0) & ((key == PROMPT_SEGMENT) | (key == query))
    visible |= (query < 0) & (index[:, None] == index[None, :])
    mask = torch.zeros(visible.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]


@dataclasses.dataclass
class PackedRankingCollator:
    """Right-pads packed rows; pads ``response_ends``/``response_ranks`` to 3 slots with -1."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seq_len = max(len(e["input_ids"]) for e in examples)
        slots = max(len(e["response_ends"]) for e in examples)

        def padded(key: str, width: int, value: int) -> torch.Tensor:
            return torch.tensor([list(e[key]) + [value] * (width - len(e[key])) for e in examples], dtype=torch.long)

        return {
            "input_ids": padded("input_ids", seq_len, self.pad_token_id),
            "position_ids": padded("position_ids", seq_len, 0),
            "segment_ids": padded("segment_ids", seq_len, PAD_SEGMENT),
            "response_ends": padded("response_ends", slots, -1),
            "response_ranks": padded("response_ranks", slots, -1),
        }


# ----------------------------------------------------------------------------------------------------------------
# Scores and loss


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and score head of a (possibly PEFT- or DDP-wrapped) sequence-classification model."""
    base = getattr(model, "module", model)
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    return getattr(base, base.base_model_prefix), base.score


@contextlib.contextmanager
def _packed_forward_hooks(model: torch.nn.Module, mask: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
    """Swap the block mask into the backbone's forward and capture the per-position scores of the head.

    The forward still runs through ``model`` (so DDP/FSDP wrappers see it and gradients synchronise); the
    sequence-classification head keeps a plain 2D mask for its own pooling, whose result is not used.
    """
    backbone, head = _backbone_and_head(model)
    captured: dict[str, torch.Tensor] = {}

    def use_block_mask(_module, args, kwargs):
        return args, {**kwargs, "attention_mask": mask}

    def keep_scores(_module, _args, output):
        captured["scores"] = output

    handles = [
        backbone.register_forward_pre_hook(use_block_mask, with_kwargs=True),
        head.register_forward_hook(keep_scores),
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def packed_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scores ``[batch, slots]`` of every packed response (0 where a slot is empty), one forward per row."""
    dtype = next(model.parameters()).dtype
    mask = packed_attention_mask(batch["segment_ids"], dtype=dtype if dtype.is_floating_point else torch.float32)
    with _packed_forward_hooks(model, mask) as captured:
        model(
            input_ids=batch["input_ids"],
            attention_mask=(batch["segment_ids"] >= 0).long(),
            position_ids=batch["position_ids"],
            use_cache=False,
        )
    scores = captured["scores"].squeeze(-1).float()
    ends = batch["response_ends"]
    return scores.gather(1, ends.clamp(min=0)).masked_fill(ends < 0, 0.0)


def ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Llama 2 ranking loss without margin over every ordered pair [4.1.2].

    ``rewards`` and ``ranks`` are ``[batch, slots]``; rank 0 is the best response, -1 an empty slot. Returns
    ``(mean over pairs of -log sigmoid(r_better - r_worse), number of pairs ordered correctly, number of pairs)``.
    """
    valid = ranks >= 0
    better = (ranks[:, :, None] < ranks[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    diff = rewards[:, :, None] - rewards[:, None, :]
    pair_diffs = diff[better]
    return -F.logsigmoid(pair_diffs).mean(), (pair_diffs > 0).sum(), better.sum()


# ----------------------------------------------------------------------------------------------------------------
# Trainer


class Llama3RewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with ranked 2-/3-response packed rows, the no-margin pairwise loss and pair accuracy."""

    def __init__(self, model, args: Llama3RewardConfig, train_dataset: Dataset, processing_class, **kwargs) -> None:
        if processing_class.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token: set tokenizer.pad_token (Llama 3 uses <|finetune_right_pad_id|>)."
            )
        kwargs.setdefault("data_collator", PackedRankingCollator(pad_token_id=processing_class.pad_token_id))
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, **kwargs
        )
        self._pair_counts = {"train": [0.0, 0.0], "eval": [0.0, 0.0]}  # (correctly ranked, all) ordered pairs

    def _prepare_dataset(self, dataset: Dataset, processing_class, args: Llama3RewardConfig, dataset_name: str):
        if set(PACKED_COLUMNS) <= set(dataset.column_names):
            return dataset
        check_columns(dataset.column_names)
        raise_for_problems(find_bad_rows(dataset), f"{dataset_name} dataset")
        if args.strength_column in dataset.column_names:
            before = len(dataset)
            kept = set(args.kept_strengths)
            dataset = dataset.filter(lambda row: str(row[args.strength_column]).strip().lower() in kept)
            logger.info(
                "%s: kept %d of %d rows rated %s [paper 4.1.2]",
                dataset_name,
                len(dataset),
                before,
                args.kept_strengths,
            )
            if len(dataset) == 0:
                raise ValueError(f"{dataset_name} dataset: no row has a strength in {args.kept_strengths}.")

        def pack(row: dict[str, Any], index: int) -> dict[str, list]:
            if "prompt_ids" in row:
                prompt_ids, response_ids = row["prompt_ids"], row["responses_ids"]
            else:
                prompt_ids, response_ids = tokenize_prompt_and_responses(
                    processing_class, row["prompt"], ranked_responses(row)
                )
            order = list(range(len(response_ids)))
            if args.shuffle_responses:
                random.Random(args.seed * 1_000_003 + index).shuffle(order)
            return pack_ranked_row(prompt_ids, response_ids, order)

        packed = dataset.map(pack, with_indices=True, remove_columns=dataset.column_names)
        if args.max_length is not None:
            too_long = [
                f"row {i}: {n} tokens packed"
                for i, n in enumerate(len(ids) for ids in packed["input_ids"])
                if n > args.max_length
            ]
            raise_for_problems(too_long, f"{dataset_name} dataset (max_length={args.max_length})")
        return packed

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(PACKED_COLUMNS)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        self._pair_counts["train" if self.model.training else "eval"] = [0.0, 0.0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        rewards = packed_rewards(model, inputs)
        loss, correct, pairs = ranking_loss(rewards, inputs["response_ranks"])
        if self.args.center_rewards_coefficient is not None:
            present = inputs["response_ranks"] >= 0
            loss = loss + self.args.center_rewards_coefficient * (rewards[present] ** 2).mean()
        with torch.no_grad():
            totals = self.accelerator.reduce(torch.stack([correct, pairs]).float(), reduction="sum")
            # Pooled over every pair seen since the last log, not averaged per batch (batches hold unequal pair counts).
            self._pair_counts[mode] = [a + b for a, b in zip(self._pair_counts[mode], totals.tolist())]
            self._metrics[mode]["accuracy"] = [self._pair_counts[mode][0] / self._pair_counts[mode][1]]
            present = inputs["response_ranks"] >= 0
            self._metrics[mode]["mean_reward"].append(self.accelerator.gather(rewards[present].mean()).mean().item())
            if mode == "train":
                tokens = self.accelerator.gather((inputs["segment_ids"] >= 0).sum()).sum().item()
                self._total_train_tokens += tokens
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"rewards": rewards}) if return_outputs else loss


def main(argv: list[str]) -> int:
    """``hf-llama3 reward``: train a reward model from a pre-trained checkpoint [4.1.2]."""
    from transformers import AutoModelForSequenceClassification

    from training.post_cli import (
        export_model,
        last_checkpoint,
        load_rows,
        load_stage_config,
        load_stage_tokenizer,
        lora_config,
        run_stage,
        stage_parser,
    )

    parser = stage_parser("reward", "Train a reward model on ranked responses (paper 4.1.2).", Llama3RewardConfig)
    args = parser.parse_args(argv)
    config = load_stage_config(Llama3RewardConfig, args)

    def train() -> None:
        tokenizer = load_stage_tokenizer(config)
        model = AutoModelForSequenceClassification.from_pretrained(config.model_name_or_path, num_labels=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer = Llama3RewardTrainer(
            model=model,
            args=config,
            train_dataset=load_rows(config.dataset_path),
            eval_dataset=load_rows(config.eval_dataset_path) if config.eval_dataset_path else None,
            processing_class=tokenizer,
            peft_config=lora_config(config, "SEQ_CLS"),
        )
        trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir))
        export_model(trainer, f"{config.output_dir}/final")

    return run_stage("reward", config, train)
