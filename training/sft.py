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
import logging

from datasets import Dataset, concatenate_datasets
from trl import SFTConfig, SFTTrainer

from training.post_cli import StageInputs, load_rows
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
        super().__post_init__()
        self.validate_inputs()
        self.validate_safety_mix()


def check_sft_rows(dataset: Dataset, name: str = "SFT dataset") -> None:
    """Report malformed rows by number: no ``messages``/``prompt``+``completion``, no assistant turn, empty turns."""
    from training.reward import raise_for_problems

    columns = set(dataset.column_names)
    if "messages" not in columns and not {"prompt", "completion"} <= columns:
        raise ValueError(
            f"{name}: columns {sorted(columns)} have neither 'messages' (a dialog) nor 'prompt' and 'completion'."
        )
    problems = []
    for index, row in enumerate(dataset):
        if "messages" in columns:
            messages = row["messages"] or []
            if not any(m.get("role") == "assistant" for m in messages):
                problems.append(f"row {index}: no assistant turn to train on")
            problems += [
                f"row {index}: message {k} ({m.get('role')}) is empty"
                for k, m in enumerate(messages)
                if not str(m.get("content") or "").strip() and not m.get("tool_calls")
            ]
        else:
            for key in ("prompt", "completion"):
                if not row[key]:
                    problems.append(f"row {index}: empty {key}")
    raise_for_problems(problems, name)


def load_sft_dataset(config: Llama3SFTConfig) -> Dataset:
    """``dataset_path`` and ``extra_dataset_paths`` checked, concatenated and shuffled with ``seed``."""
    parts = []
    for path in [config.dataset_path, *config.extra_dataset_paths]:
        part = load_rows(path)
        check_sft_rows(part, name=str(path))
        keep = [c for c in ("messages", "prompt", "completion", "tools") if c in part.column_names]
        parts.append(part.select_columns(keep))
    dataset = concatenate_datasets(parts).shuffle(seed=config.seed) if len(parts) > 1 else parts[0]
    return mix_from_config(dataset, config, seed=config.seed)  # [5.4.3] adversarial + borderline rows, when set


def make_trainer(config: Llama3SFTConfig, model, tokenizer, train_dataset: Dataset, **kwargs) -> SFTTrainer:
    """An SFTTrainer for our model and tokenizer; rows longer than ``max_length`` are reported, not truncated."""
    from training.post_cli import lora_config
    from training.reward import raise_for_problems

    if config.max_length is not None and "messages" in train_dataset.column_names:
        too_long = []
        for index, row in enumerate(train_dataset):
            n = len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
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


def main(argv: list[str]) -> int:
    """``hf-llama3 sft``: fine-tune a policy on SFT dialogs (rejection-sampled and user data) [4.1.3]."""
    from transformers import AutoModelForCausalLM

    from training.post_cli import (
        export_model,
        last_checkpoint,
        load_stage_config,
        load_stage_tokenizer,
        run_stage,
        stage_parser,
    )

    args = stage_parser(
        "sft", "Supervised fine-tuning with assistant-only loss and packing (paper 4.1.3).", Llama3SFTConfig
    ).parse_args(argv)
    config = load_stage_config(Llama3SFTConfig, args)

    def train() -> None:
        tokenizer = load_stage_tokenizer(config)
        model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path)
        trainer = make_trainer(config, model, tokenizer, load_sft_dataset(config))
        trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir))
        export_model(trainer, f"{config.output_dir}/final")

    return run_stage("sft", config, train)
