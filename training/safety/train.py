"""Training a Llama Guard 3-style guard [paper 5.4.7]: SFT on the guard's answer, exported as a stock Llama folder.

Llama Guard 3 is Llama 3.1 8B fine-tuned to answer the guard prompt (:mod:`training.safety.prompt`) with ``safe`` or
``unsafe`` and the violated categories. Here one of our checkpoints is fine-tuned the same way with TRL's
``SFTTrainer``: each labelled conversation becomes one pre-tokenized row, ``prompt ids + answer ids`` with a
completion mask on the answer (``\\n\\nsafe<|eot_id|>`` or ``\\n\\nunsafe\\nS1<|eot_id|>``), so the loss is on the answer
only (TRL projects only those positions through the output layer).

Labelled rows (``.jsonl``/``.json``/``.parquet``): ``messages`` (the conversation), ``label`` (``"safe"`` or
``"unsafe"``), ``categories`` (violated codes; empty when safe) and optionally ``check`` (``"input"``, ``"output"``
or ``"auto"``, the default). ``training.safety.synthetic.guard_rows`` builds such rows in code.

The export (``<output_dir>/final``) is a stock ``model_type="llama"`` folder (``LlamaForCausalLM``, loadable by
``AutoModelForCausalLM`` without remote code), the tokenizer with the guard chat template (its default categories
are the trained policy) and ``guard.json`` (policy, threshold, descriptions flag).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from training.post_cli import TRAINER_CONSTRAINTS
from training.safety.classifier import DEFAULT_THRESHOLD, GUARD_CONFIG_NAME
from training.safety.policy import SafetyPolicy
from training.safety.prompt import EOT, format_answer, guard_chat_template, render_guard_prompt

IGNORE_INDEX = -100

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GuardTrainConfig(SFTConfig):
    """TRL's ``SFTConfig`` plus what a guard needs. The paper gives no guard fine-tuning hyper-parameters: the learning
    rate defaults to the SFT one [4.1.3], everything else to TRL's defaults.

    Args:
        model_name_or_path: The checkpoint to fine-tune into a guard (ours, stock Llama, or a guard to continue).
        dataset_path: Labelled rows (see the module docstring); or ``synthetic_rows`` > 0 to build them in code.
        synthetic_rows: Number of synthetic labelled rows (:func:`training.safety.synthetic.guard_rows`).
        categories: Policy subset (codes); ``None``: Llama Guard 3's 14 categories.
        with_descriptions: List the category descriptions in the prompt.
        threshold: Decision threshold on P(unsafe) stored with the guard.
    """

    model_name_or_path: str = ""
    dataset_path: str | None = None
    synthetic_rows: int = 0
    categories: list[str] | None = None
    with_descriptions: bool = False
    threshold: float = DEFAULT_THRESHOLD
    # [4.1.3] the SFT learning rate; the paper gives none for the guard.
    learning_rate: float = 1e-5
    completion_only_loss: bool | None = True
    packing: bool = False
    max_length: int | None = None
    report_to: Any = "none"
    remove_unused_columns: bool = False

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader) before the config is built.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        **TRAINER_CONSTRAINTS,
        "synthetic_rows": {"min": 0},
        "threshold": {"min": 0, "max": 1},
    }

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("model_name_or_path is required: the checkpoint to fine-tune into a guard (--model).")
        if not self.dataset_path and self.synthetic_rows <= 0:
            raise ValueError("Give dataset_path (labelled conversations, --data) or synthetic_rows > 0 (--synthetic).")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}.")
        super().__post_init__()

    @property
    def policy(self) -> SafetyPolicy:
        default = SafetyPolicy.default()
        return default.subset(self.categories) if self.categories else default


def check_labelled_row(row: Mapping[str, Any], index: int, policy: SafetyPolicy) -> tuple[bool, list[str], str]:
    """``(unsafe, categories, check)`` of a labelled row; a bad row is a ValueError naming the row and the fix."""
    label = row.get("label")
    if label not in ("safe", "unsafe"):
        raise ValueError(f"row {index}: label must be 'safe' or 'unsafe', got {label!r}.")
    categories = list(row.get("categories") or [])
    try:
        policy.check_codes(categories, f"row {index}")
    except ValueError as err:
        raise ValueError(str(err)) from None
    if label == "unsafe" and not categories:
        raise ValueError(f"row {index}: an unsafe row needs its violated category codes in 'categories'.")
    if label == "safe" and categories:
        raise ValueError(f"row {index}: a safe row names no categories, got {categories}.")
    check = row.get("check") or "auto"
    return label == "unsafe", categories, check


def encode_guard_rows(
    tokenizer, rows: Sequence[Mapping[str, Any]], policy: SafetyPolicy, with_descriptions: bool = False
) -> Dataset:
    """Pre-tokenized SFT rows: ``input_ids`` = guard prompt + answer + ``<|eot_id|>``, ``completion_mask`` on the answer.

    Every bad row is reported at once (row number and problem).
    """
    from training.reward import raise_for_problems

    columns: dict[str, list] = {"input_ids": [], "completion_mask": []}
    problems = []
    for index, row in enumerate(rows):
        try:
            unsafe, categories, check = check_labelled_row(row, index, policy)
            prompt = render_guard_prompt(row.get("messages"), check, policy, with_descriptions)
        except ValueError as err:
            message = str(err)
            problems.append(message if message.startswith(f"row {index}") else f"row {index}: {message}")
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(format_answer(unsafe, categories, policy) + EOT, add_special_tokens=False)["input_ids"]
        columns["input_ids"].append(prompt_ids + answer_ids)
        columns["completion_mask"].append([0] * len(prompt_ids) + [1] * len(answer_ids))
    raise_for_problems(problems, "guard dataset")
    if not columns["input_ids"]:
        raise ValueError("guard dataset: no rows to train on.")
    return Dataset.from_dict(columns)


@dataclasses.dataclass
class LeftPaddedAnswerCollator:
    """Left-pads pre-tokenized rows so every answer ends at the last column (position ids skip the padding).

    With the answers right-aligned, the loss needs the output layer only on the last few columns
    (:class:`GuardSFTTrainer`), not on the whole prompt: the guard's loss is on its answer only.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.tensor(example["input_ids"], dtype=torch.long)
            if "labels" in example:
                target = torch.tensor(example["labels"], dtype=torch.long)
            else:
                mask = torch.tensor(example["completion_mask"], dtype=torch.bool)
                target = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
            input_ids[row, width - len(ids) :] = ids
            labels[row, width - len(ids) :] = target
            attention_mask[row, width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
        }


class GuardSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with the answer-only loss computed from the last columns' logits.

    Rows are left-padded (:class:`LeftPaddedAnswerCollator`), so the labelled answer tokens sit in the last
    ``K`` columns; the model is asked for ``logits_to_keep=K + 1`` and the mean cross-entropy of the answer tokens is
    the loss: the same value as the full causal-LM loss with the prompt masked, without projecting every prompt
    position onto the 128K vocabulary.
    """

    def __init__(self, *args, **kwargs) -> None:
        processing_class = kwargs.get("processing_class")
        kwargs.setdefault("data_collator", LeftPaddedAnswerCollator(pad_token_id=processing_class.pad_token_id))
        super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch.nn.functional as F

        labels = inputs["labels"]
        counted = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        keep = labels.shape[1] - int(counted.min()) + 1 if len(counted) else 2
        keep = min(keep, labels.shape[1])
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
            use_cache=False,
            logits_to_keep=keep,
        )
        logits = outputs.logits[:, -keep:-1].float()  # position t predicts token t + 1
        targets = labels[:, -keep + 1 :]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        count = (targets != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss / torch_clamp_min(count)
        return (loss, outputs) if return_outputs else loss


def torch_clamp_min(count):
    """``count`` as a tensor of at least 1 (a batch without answer tokens gives a zero loss, not 0/0)."""
    import torch

    return torch.as_tensor(count).clamp(min=1)


def load_labelled_rows(config: GuardTrainConfig) -> list[dict[str, Any]]:
    """The labelled rows: ``dataset_path`` (json/jsonl/parquet) or ``synthetic_rows`` synthetic ones."""
    if config.dataset_path:
        from training.post_cli import load_rows

        return [dict(row) for row in load_rows(config.dataset_path)]
    from training.safety.synthetic import guard_rows

    return guard_rows(config.synthetic_rows, seed=config.seed)


def export_guard(
    model, tokenizer, output_dir: str | Path, policy: SafetyPolicy, threshold: float, with_descriptions: bool = False
) -> Path:
    """Write the guard as a stock Llama folder (no remote code) with the guard chat template and ``guard.json``.

    Atomic: the folder appears only when complete (``hf_llama3.checkpoint_io.atomic_output_dir``; the stock-Llama
    conversion is ``hf_llama3.convert.convert_checkpoint``).
    """
    from hf_llama3.checkpoint_io import atomic_output_dir
    from hf_llama3.convert import convert_checkpoint

    tokenizer.chat_template = guard_chat_template(policy, with_descriptions)
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory(dir=output_dir.parent if output_dir.parent.exists() else None) as scratch:
        source = Path(scratch) / "source"
        model.save_pretrained(source)
        tokenizer.save_pretrained(source)
        with atomic_output_dir(output_dir, overwrite=True) as staging:
            # Replaces the (empty) staging folder with the converted one, atomically, at the same path.
            convert_checkpoint(source, staging, "llama", overwrite=True)
            guard_config = {
                "policy": policy.to_config(),
                "threshold": threshold,
                "with_descriptions": with_descriptions,
                "answer": "first token 'unsafe' probability after '\\n\\n'; categories on the next line",
            }
            (staging / GUARD_CONFIG_NAME).write_text(json.dumps(guard_config, indent=2), encoding="utf-8")
    return output_dir


def train_guard(config: GuardTrainConfig, model=None, tokenizer=None, rows: Sequence[Mapping] | None = None) -> Path:
    """Fine-tune ``config.model_name_or_path`` (or ``model``) into a guard and export it to ``<output_dir>/final``."""
    from transformers import AutoModelForCausalLM

    import hf_llama3  # noqa: F401  (registers our model type)
    from training.post_cli import StageInputs, load_stage_tokenizer

    if tokenizer is None:
        tokenizer = load_stage_tokenizer(StageInputs(model_name_or_path=config.model_name_or_path))
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path)
    policy = config.policy
    rows = list(rows) if rows is not None else load_labelled_rows(config)
    dataset = encode_guard_rows(tokenizer, rows, policy, config.with_descriptions)
    logger.info("Guard training: %d rows, policy %s", len(dataset), ", ".join(policy.codes))
    trainer = GuardSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    return export_guard(
        trained, tokenizer, Path(config.output_dir) / "final", policy, config.threshold, config.with_descriptions
    )
