"""Direct preference optimisation [paper 4.1.4] on TRL's DPOTrainer, with the paper's two changes.

- Formatting tokens are masked out of the chosen and rejected log-probabilities: header tokens
  (``<|start_header_id|>``, the role, ``<|end_header_id|>``, ``\\n\\n``) and termination tokens (``<|eot_id|>``,
  ``<|eom_id|>``). Both responses share them, so the paper found that keeping them pushes the model to both raise
  and lower the same tokens, which can make it generate tail repetitions or stop abruptly. The mask comes from
  ``hf_llama3.encode_dialog``'s ``formatting_mask``; it removes the tokens from the completion mask, so the DPO
  term, the reference log-probs and the NLL term all skip them.
- An NLL term on the chosen responses with coefficient 0.2: TRL's ``loss_type=["sigmoid", "sft"]`` with
  ``loss_weights=[1.0, 0.2]``.
- beta 0.1 and learning rate 1e-5 [4.1.4].

The reference model is a frozen in-memory copy of the starting policy (TRL would otherwise reload it from the
policy's ``name_or_path``, which an in-memory policy does not have); with LoRA the base weights (adapters off)
are the reference, as in TRL.

    hf-llama3 dpo --config recipes/tiny/dpo.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from training.post_cli import StageInputs
from training.safety.mix import SafetyMixInputs, mix_from_config

logger = logging.getLogger(__name__)

FORMATTING_COLUMNS = ["chosen_formatting_mask", "rejected_formatting_mask"]


@dataclasses.dataclass
class Llama3DPOConfig(DPOConfig, StageInputs, SafetyMixInputs):
    """TRL's ``DPOConfig`` with the paper's DPO settings [4.1.4] and the shared stage inputs.

    Args:
        mask_formatting_tokens: Drop header and termination tokens from the chosen/rejected log-probs [4.1.4].
        safety_dataset_path, safety_adversarial_ratio, safety_borderline_ratio: Safety preference rows mixed in at
            set shares [5.4.3] (``training.safety.mix``).
    """

    # [4.1.4] "we use a learning rate of 1e-5 and set the beta hyper-parameter to be 0.1".
    learning_rate: float = 1e-5
    beta: float = 0.1
    # [4.1.4] "an additional negative log-likelihood (NLL) loss term with a scaling coefficient of 0.2 on the chosen
    # sequences": DPO's sigmoid loss plus TRL's "sft" (NLL on chosen) weighted 0.2.
    loss_type: list[str] = dataclasses.field(default_factory=lambda: ["sigmoid", "sft"])
    loss_weights: list[float] | None = dataclasses.field(default_factory=lambda: [1.0, 0.2])
    mask_formatting_tokens: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate_inputs()
        self.validate_safety_mix()


@dataclasses.dataclass
class FormattingMaskedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, with formatting tokens removed from ``completion_mask`` [4.1.4].

    Rows carry ``chosen_formatting_mask``/``rejected_formatting_mask`` (1 on header and termination tokens of the
    completion); rows without them are collated as TRL does.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        if "chosen_formatting_mask" not in examples[0]:
            return output
        masks = [[0] * len(e["prompt_ids"]) + list(e["chosen_formatting_mask"]) for e in examples]
        masks += [[0] * len(e["prompt_ids"]) + list(e["rejected_formatting_mask"]) for e in examples]
        if self.max_length is not None:
            keep = (
                slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            )
            masks = [m[keep] for m in masks]
        formatting = pad(
            [torch.tensor(m, dtype=torch.long) for m in masks],
            padding_value=0,
            padding_side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        output["completion_mask"] = output["completion_mask"] * (1 - formatting)
        return output


def encode_preference_row(tokenizer, row: dict[str, Any]) -> dict[str, list[int]]:
    """Prompt, chosen and rejected ids of a conversational row, with the completions' formatting masks."""
    from hf_llama3 import encode_dialog

    prompt = encode_dialog(tokenizer, row["prompt"], add_generation_prompt=True)
    out: dict[str, list[int]] = {"prompt_ids": prompt.input_ids}
    start = len(prompt.input_ids)
    for key in ("chosen", "rejected"):
        full = encode_dialog(tokenizer, list(row["prompt"]) + list(row[key]))
        if full.input_ids[:start] != prompt.input_ids:
            raise ValueError(f"The dialog encodes the prompt differently with the {key} response.")
        out[f"{key}_ids"] = full.input_ids[start:]
        out[f"{key}_formatting_mask"] = full.formatting_mask[start:]
    return out


def find_bad_preference_rows(dataset: Dataset) -> list[str]:
    """Row problems by number: missing columns, empty prompt, chosen or rejected."""
    missing = {"prompt", "chosen", "rejected"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"DPO dataset columns {sorted(dataset.column_names)} lack {sorted(missing)}: each row needs a prompt "
            "(chat messages) and chosen/rejected assistant messages."
        )
    from training.reward import _is_empty

    return [
        f"row {i}: empty {key}"
        for i, row in enumerate(dataset)
        for key in ("prompt", "chosen", "rejected")
        if _is_empty(row[key])
    ]


class Llama3DPOTrainer(DPOTrainer):
    """TRL's DPOTrainer with formatting-token masking [4.1.4] and an in-memory reference model."""

    def __init__(
        self, model, args: Llama3DPOConfig, train_dataset: Dataset, processing_class, ref_model=None, **kwargs
    ):
        from accelerate.utils import is_peft_model

        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model)
        uses_peft = kwargs.get("peft_config") is not None or is_peft_model(model)
        if ref_model is None and not uses_peft and not args.precompute_ref_log_probs:
            # The starting policy, frozen: the reference without a round trip through disk.
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        kwargs.setdefault(
            "data_collator",
            FormattingMaskedPreferenceCollator(
                pad_token_id=processing_class.pad_token_id,
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
            ),
        )
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            **kwargs,
        )

    def _prepare_dataset(self, dataset: Dataset, processing_class, args, dataset_name: str):
        if "prompt_ids" in dataset.column_names:
            return dataset
        from training.reward import raise_for_problems

        raise_for_problems(find_bad_preference_rows(dataset), f"{dataset_name} dataset")
        first = dataset[0]
        if not (getattr(args, "mask_formatting_tokens", False) and isinstance(first["prompt"], list)):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        encoded = dataset.map(
            lambda row: encode_preference_row(processing_class, row), remove_columns=dataset.column_names
        )
        if args.max_length is not None:
            too_long = [
                f"row {i}: {len(r['prompt_ids']) + max(len(r['chosen_ids']), len(r['rejected_ids']))} tokens"
                for i, r in enumerate(encoded)
                if len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) > args.max_length
            ]
            raise_for_problems(too_long, f"{dataset_name} dataset (max_length={args.max_length})")
        return encoded

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *FORMATTING_COLUMNS]


def main(argv: list[str]) -> int:
    """``hf-llama3 dpo``: preference-optimise a policy on the latest preference data [4.1.4]."""
    from transformers import AutoModelForCausalLM

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

    args = stage_parser(
        "dpo", "DPO with formatting-token masking and an NLL term (paper 4.1.4).", Llama3DPOConfig
    ).parse_args(argv)
    config = load_stage_config(Llama3DPOConfig, args)

    def train() -> None:
        trainer = Llama3DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(config.model_name_or_path),
            args=config,
            train_dataset=mix_from_config(load_rows(config.dataset_path), config, seed=config.seed),
            eval_dataset=load_rows(config.eval_dataset_path) if config.eval_dataset_path else None,
            processing_class=load_stage_tokenizer(config),
            peft_config=lora_config(config, "CAUSAL_LM"),
        )
        trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir))
        export_model(trainer, f"{config.output_dir}/final")

    return run_stage("dpo", config, train)
