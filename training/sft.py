"""Supervised fine-tuning [paper 4.1.3] on TRL's SFTTrainer.

The paper fine-tunes the pre-trained model on rejection-sampled data, mixed with other (human or synthetic)
SFT data, with the cross-entropy on target tokens only (the prompt masked) at learning rate 1e-5. Here:

- conversational rows (``messages``) are rendered with the Llama 3.1 chat template, whose ``{% generation %}``
  blocks give TRL the assistant-token mask, so only assistant content and its ``<|eot_id|>``/``<|eom_id|>`` carry
  loss (``assistant_only_loss``); prompt/completion rows use TRL's completion-only loss;
- short dialogs are packed into ``max_length`` rows (best-fit decreasing), and the model sees each packed row with
  position ids restarting at every dialog, which our model turns into a document mask (no attention across dialogs);
- ``dataset_path`` plus ``extra_dataset_paths`` are concatenated and shuffled: the rejection-sampled ``sft.jsonl``
  of the current round and the user's own SFT data.

    hf-llama3 sft --config recipes/tiny/sft.yaml
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from datasets import Dataset, Json, List, concatenate_datasets
from trl import SFTConfig, SFTTrainer

from training.post_cli import StageInputs, load_rows
from training.post_rows import DIALOG_OPTION_COLUMNS
from training.safety.mix import SafetyMixInputs, mix_from_config

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Llama3SFTConfig(SFTConfig, StageInputs, SafetyMixInputs):
    """TRL's ``SFTConfig`` with the paper's defaults [4.1.3] and the shared stage inputs.

    Args:
        extra_dataset_paths: More SFT files mixed with ``dataset_path`` (e.g. user data beside rejection samples).
        safety_dataset_path, safety_adversarial_ratio, safety_borderline_ratio: Safety data mixed in at set shares
            [5.4.3] (``training.safety.mix``).
    """

    # [4.1.3] "we use a learning rate of 1e-5".
    learning_rate: float = 1e-5
    # [4.1.3] loss on target tokens only: assistant turns of dialogs.
    assistant_only_loss: bool = True
    packing: bool = True
    extra_dataset_paths: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.apply_sharding()  # before TrainingArguments reads fsdp/fsdp_config
        super().__post_init__()
        self.validate_inputs()
        self.validate_safety_mix()


def check_sft_rows(dataset: Dataset, name: str = "SFT dataset") -> None:
    """Report malformed rows by number: wrong columns, no assistant turn, empty turns, messages that are no dialog."""
    from training.post_rows import dialog_options, dialog_problem, raise_for_problems

    columns = set(dataset.column_names)
    if "messages" not in columns and not {"prompt", "completion"} <= columns:
        looks_like = ""
        if "prompt" in columns and ({"chosen", "rejected"} <= columns or "responses" in columns):
            looks_like = " (these are preference rows: give them to `hf-llama3 dpo` or `hf-llama3 reward`)"
        raise ValueError(
            f"{name}: columns {sorted(columns)} have neither 'messages' (a dialog) nor 'prompt' and 'completion'"
            f"{looks_like}."
        )
    problems = []
    for index, row in enumerate(dataset):
        if "messages" in columns:
            messages = row["messages"] or []
            if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
                problems.append(f"row {index}: no assistant turn to train on")
            problems += [
                f"row {index}: message {k} ({m.get('role')}) is empty"
                for k, m in enumerate(messages)
                if isinstance(m, dict) and not str(m.get("content") or "").strip() and not m.get("tool_calls")
            ]
            problem = dialog_problem(messages, **dialog_options(row)) if messages else None
            if problem:
                problems.append(f"row {index}: messages: {problem}")
        else:
            for key in ("prompt", "completion"):
                if not row[key]:
                    problems.append(f"row {index}: empty {key}")
    raise_for_problems(problems, name)


# How TRL's SFT tokenization reads a row's rendering options: `tools` (JSON schemas, as a JSON string) and
# `chat_template_kwargs` (passed to the chat template: builtin_tools, tool_prompt_format, date_string).
TRL_OPTION_COLUMNS = ("tools", "chat_template_kwargs")


def with_dialog_options(dataset: Dataset) -> Dataset:
    """Dialog rows with their options (``training.post_rows.dialog_options``: the tools a tool-use dialog
    declares [4.3.5]) in the columns TRL passes to the chat template; every row gets both columns, so files with
    and without tools concatenate."""
    from training.post_rows import dialog_options

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        options = dialog_options(row)
        tools = options.pop("tools", None)
        kwargs = {key: options.get(key) for key in ("builtin_tools", "tool_prompt_format", "date_string")}
        return {"tools": json.dumps(tools) if tools else None, "chat_template_kwargs": kwargs}

    dropped = [c for c in dataset.column_names if c in DIALOG_OPTION_COLUMNS]
    return dataset.map(convert, remove_columns=dropped)


def load_sft_dataset(config: Llama3SFTConfig) -> Dataset:
    """``dataset_path`` and ``extra_dataset_paths`` checked, concatenated and shuffled with ``seed``."""
    loaded = []
    for path in [config.dataset_path, *config.extra_dataset_paths]:
        part = load_rows(path)
        check_sft_rows(part, name=str(path))
        loaded.append(part)
    # Tool-use dialogs carry their declared tools; then every dialog file gets the option columns (concatenation).
    tool_use = any(set(DIALOG_OPTION_COLUMNS) & set(part.column_names) for part in loaded)
    parts = []
    for part in loaded:
        if tool_use and "messages" in part.column_names:
            part = with_dialog_options(part)
        keep = [c for c in ("messages", "prompt", "completion", *TRL_OPTION_COLUMNS) if c in part.column_names]
        parts.append(part.select_columns(keep))
    if len({str(part.features.get("messages")) for part in parts}) > 1:
        # datasets reads a file of uniform messages as structs and one of varied messages (tool calls) as JSON
        # objects; concatenation needs one type: JSON objects hold both.
        parts = [
            part.cast_column("messages", List(Json())) if "messages" in part.column_names else part for part in parts
        ]
    dataset = concatenate_datasets(parts).shuffle(seed=config.seed) if len(parts) > 1 else parts[0]
    return mix_from_config(dataset, config, seed=config.seed)  # [5.4.3] adversarial + borderline rows, when set


def make_trainer(config: Llama3SFTConfig, model, tokenizer, train_dataset: Dataset, **kwargs) -> SFTTrainer:
    """An SFTTrainer for our model and tokenizer; rows longer than ``max_length`` are reported, not truncated."""
    from training.post_cli import lora_config
    from training.post_rows import raise_for_problems

    if config.max_length is not None and "messages" in train_dataset.column_names:
        too_long = []
        for index, row in enumerate(train_dataset):
            tools = json.loads(row["tools"]) if row.get("tools") else None
            options = row.get("chat_template_kwargs") or {}
            ids = tokenizer.apply_chat_template(
                row["messages"], tools=tools, tokenize=True, return_dict=True, **options
            )
            n = len(ids["input_ids"])
            if n > config.max_length:
                too_long.append(f"row {index}: {n} tokens")
        raise_for_problems(too_long, f"SFT dataset (max_length={config.max_length})")
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM"),
        **kwargs,
    )


def train(config: Llama3SFTConfig, tokenizer=None, data: Dataset | None = None, resume: bool = True) -> Path:
    """Fine-tune ``config.model_name_or_path`` and export it to ``output_dir/final``; returns that folder.

    ``data`` is :func:`load_sft_dataset`'s result when the caller checked the data already; ``resume`` picks up
    the newest ``checkpoint-N`` in ``output_dir``.
    """
    from transformers import AutoModelForCausalLM

    from training.post_cli import export_model, last_checkpoint, load_stage_tokenizer
    from training.post_precision import export_dtype, load_trainable

    tokenizer = tokenizer or load_stage_tokenizer(config)
    data = load_sft_dataset(config) if data is None else data
    model = load_trainable(AutoModelForCausalLM, config.model_name_or_path, config)
    trainer = make_trainer(config, model, tokenizer, data)
    trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir) if resume else None)
    summary = {"rows": len(data)}
    return export_model(trainer, Path(config.output_dir) / "final", dtype=export_dtype(config), summary=summary)


def main(argv: list[str]) -> int:
    """``hf-llama3 sft``: fine-tune a policy on SFT dialogs (rejection-sampled and user data) [4.1.3]."""
    from training.post_cli import check_model_path, load_stage_config, load_stage_tokenizer, run_stage, stage_parser

    args = stage_parser(
        "sft", "Supervised fine-tuning with assistant-only loss and packing (paper 4.1.3).", Llama3SFTConfig
    ).parse_args(argv)
    config = load_stage_config(Llama3SFTConfig, args)
    # Checked before run_stage creates output_dir: a bad model path or data file leaves nothing behind.
    check_model_path(config.model_name_or_path)
    data = load_sft_dataset(config)
    tokenizer = load_stage_tokenizer(config)
    return run_stage("sft", config, lambda: train(config, tokenizer, data))
