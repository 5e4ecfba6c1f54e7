"""Reward modelling [paper 4.1.2] on TRL's RewardTrainer, extended to ranked 2- and 3-response rows.

What the paper does and TRL does not:
- each prompt has 2 or 3 responses ranked ``edited > chosen > rejected``; the loss is the Llama 2 ranking loss
  ``-log sigmoid(r_better - r_worse)`` over every ordered pair, without the margin term;
- the prompt and its responses, shuffled, are packed in one row: each response attends to the prompt and to itself
  only (a block mask), with positions continuing from the end of the prompt, so one forward scores all of them and
  each score equals the score of ``prompt + response`` on its own;
- only pairs rated "significantly better" or "better" are kept, and similar responses are dropped [4.2.1]
  (:mod:`training.post_rows`, counted in the summary).

Dataset columns: ``prompt`` and ``chosen``/``rejected`` (optionally ``edited``), or ``prompt`` and ``responses``
(a list ranked best first); prompts are strings or chat messages, responses strings (or assistant-message lists).
Pre-tokenized rows use ``prompt_ids`` and ``responses_ids``. Bad rows are reported with their file and row numbers.

    hf-llama3 reward --config recipes/tiny/reward.yaml
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from trl import RewardConfig, RewardTrainer

from training.post_cli import StageInputs
from training.post_rows import (  # noqa: F401  (ranked_responses, tokenize_prompt_and_responses, raise_for_problems: re-exported)
    PACKED_COLUMNS,
    PAD_SEGMENT,
    PROMPT_SEGMENT,
    PreferenceHygiene,
    clean_ranked_rows,
    dialog_options,
    load_rows,
    pack_ranked_row,
    raise_for_problems,
    ranked_responses,
    tokenize_prompt_and_responses,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Llama3RewardConfig(RewardConfig, StageInputs, PreferenceHygiene):
    """TRL's ``RewardConfig`` plus the paper's ranked-response settings [4.1.2] and the shared stage inputs.

    Args:
        strength_column, kept_strengths, similar_response_ratio: The preference hygiene rules [4.2.1]
            (:class:`training.post_rows.PreferenceHygiene`).
        extra_dataset_paths: More preference files trained on with ``dataset_path`` (each checked on its own).
        shuffle_responses: Shuffle the responses inside each packed row [4.1.2], seeded by ``seed`` and the row
            index, so the model cannot learn a position bias.
    """

    extra_dataset_paths: list[str] = dataclasses.field(default_factory=list)
    shuffle_responses: bool = True

    def __post_init__(self) -> None:
        self.apply_sharding()  # before TrainingArguments reads fsdp/fsdp_config
        super().__post_init__()
        self.validate_inputs()
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must hold a prompt and a response, got {self.max_length}.")
        # The packed rows carry their own columns; TRL's default would drop them before the collator sees them.
        self.remove_unused_columns = False


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
        self.data_summary: dict[str, dict[str, int]] = {}  # per split: what the hygiene rules kept and dropped
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, **kwargs
        )
        self._pair_counts = {"train": [0.0, 0.0], "eval": [0.0, 0.0]}  # (correctly ranked, all) ordered pairs

    def _prepare_dataset(self, dataset: Dataset, processing_class, args: Llama3RewardConfig, dataset_name: str):
        if set(PACKED_COLUMNS) <= set(dataset.column_names):
            return dataset
        packed, summary = prepare_reward_rows(dataset, processing_class, args, f"{dataset_name} dataset")
        self.data_summary[dataset_name] = summary
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


def prepare_reward_rows(
    dataset: Dataset, tokenizer, config: Llama3RewardConfig, what: str
) -> tuple[Dataset, dict[str, int]]:
    """Checked rows after the hygiene rules [4.2.1], packed [4.1.2]; with the counts of what each rule dropped."""
    rows, summary = clean_ranked_rows(dataset, what, **config.hygiene_settings())
    packed_rows = []
    for index, prompt, responses in rows:
        if "prompt_ids" in dataset.column_names:
            prompt_ids, response_ids = list(prompt), [list(r) for r in responses]
        else:
            options = dialog_options(dataset[index])  # the tools a tool-use dialog declares [4.3.5]
            prompt_ids, response_ids = tokenize_prompt_and_responses(tokenizer, prompt, responses, **options)
        order = list(range(len(response_ids)))
        if config.shuffle_responses:
            random.Random(config.seed * 1_000_003 + index).shuffle(order)
        packed_rows.append(pack_ranked_row(prompt_ids, response_ids, order))
    if config.max_length is not None:
        too_long = [
            f"row {index}: {len(packed['input_ids'])} tokens packed"
            for (index, _, _), packed in zip(rows, packed_rows)
            if len(packed["input_ids"]) > config.max_length
        ]
        raise_for_problems(too_long, f"{what} (max_length={config.max_length})")
    logger.info("%s: %s [paper 4.2.1]", what, summary)
    return Dataset.from_list(packed_rows), summary


def load_reward_data(config: Llama3RewardConfig, tokenizer) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """Train rows (``dataset_path`` + ``extra_dataset_paths``, each file checked and packed) and eval rows, packed.

    Returns the summary too: per file, what the hygiene rules [4.2.1] kept and dropped.
    """
    parts, summary = [], {}
    for path in [config.dataset_path, *config.extra_dataset_paths]:
        packed, summary[str(path)] = prepare_reward_rows(load_rows(path), tokenizer, config, str(path))
        parts.append(packed)
    evaluation = None
    if config.eval_dataset_path:
        evaluation, summary[config.eval_dataset_path] = prepare_reward_rows(
            load_rows(config.eval_dataset_path), tokenizer, config, config.eval_dataset_path
        )
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0], evaluation, summary


def train(config: Llama3RewardConfig, tokenizer=None, data=None, resume: bool = True) -> Path:
    """Train a reward model from ``config`` and export it to ``output_dir/final``; returns that folder.

    ``data`` is :func:`load_reward_data`'s result when the caller checked the data already; ``resume`` picks up
    the newest ``checkpoint-N`` in ``output_dir``.
    """
    from transformers import AutoModelForSequenceClassification

    from training.post_cli import export_model, last_checkpoint, load_stage_tokenizer, lora_config
    from training.post_precision import export_dtype, load_trainable

    tokenizer = tokenizer or load_stage_tokenizer(config)
    train_rows, eval_rows, summary = data or load_reward_data(config, tokenizer)
    model = load_trainable(AutoModelForSequenceClassification, config.model_name_or_path, config, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = Llama3RewardTrainer(
        model=model,
        args=config,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=lora_config(config, "SEQ_CLS"),
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir) if resume else None)
    return export_model(trainer, Path(config.output_dir) / "final", dtype=export_dtype(config), summary=summary)


def main(argv: list[str]) -> int:
    """``hf-llama3 reward``: train a reward model from a pre-trained checkpoint [4.1.2]."""
    from training.post_cli import check_model_path, load_stage_config, load_stage_tokenizer, run_stage, stage_parser

    parser = stage_parser("reward", "Train a reward model on ranked responses (paper 4.1.2).", Llama3RewardConfig)
    config = load_stage_config(Llama3RewardConfig, parser.parse_args(argv))
    # Checked before run_stage creates output_dir: a bad model path or data file leaves nothing behind.
    check_model_path(config.model_name_or_path)
    tokenizer = load_stage_tokenizer(config)
    data = load_reward_data(config, tokenizer)
    return run_stage("reward", config, lambda: train(config, tokenizer, data))
