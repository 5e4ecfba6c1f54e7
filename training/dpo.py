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
- Only pairs rated "significantly better" or "better" are kept and similar responses are dropped [4.2.1]; the
  reward model's ranked rows (``edited > chosen > rejected``, or a ``responses`` list) become every ordered pair.
  The summary (logged, and ``data_summary.json`` in the export) counts what each rule dropped.

Every row format gets the formatting mask: chat rows through ``encode_dialog``, plain-text rows on their EOS token;
pre-tokenized rows must carry ``chosen_formatting_mask``/``rejected_formatting_mask`` (or set
``mask_formatting_tokens: false``), otherwise they are refused.

The reference model is a frozen in-memory copy of the starting policy (TRL would otherwise reload it from the
policy's ``name_or_path``, which an in-memory policy does not have); with LoRA the base weights (adapters off)
are the reference, as in TRL.

    hf-llama3 dpo --config recipes/tiny/dpo.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from training.post_cli import StageInputs
from training.post_rows import (
    PreferenceHygiene,
    clean_ranked_rows,
    dialog_options,
    encode_prompt_and_responses,
    raise_for_problems,
)
from training.safety.mix import SafetyMixInputs, mix_from_config

logger = logging.getLogger(__name__)

FORMATTING_COLUMNS = ["chosen_formatting_mask", "rejected_formatting_mask"]


@dataclasses.dataclass
class Llama3DPOConfig(DPOConfig, StageInputs, SafetyMixInputs, PreferenceHygiene):
    """TRL's ``DPOConfig`` with the paper's DPO settings [4.1.4] and the shared stage inputs.

    Args:
        mask_formatting_tokens: Drop header and termination tokens from the chosen/rejected log-probs [4.1.4].
        strength_column, kept_strengths, similar_response_ratio: The preference hygiene rules [4.2.1]
            (:class:`training.post_rows.PreferenceHygiene`), shared with the reward model.
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
        self.apply_sharding()  # before TrainingArguments reads fsdp/fsdp_config
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


def prepare_dpo_rows(
    dataset: Dataset, tokenizer, config: Llama3DPOConfig, what: str
) -> tuple[Dataset, dict[str, int]]:
    """Checked preference rows after the hygiene rules [4.2.1], as tokenized pairs with formatting masks [4.1.4].

    A row with ``k`` ranked responses gives its ``k (k - 1) / 2`` ordered pairs (better, worse). Returns the pairs
    (``prompt_ids``, ``chosen_ids``, ``rejected_ids`` and, with ``mask_formatting_tokens``, the two masks) and the
    counts of what each rule kept and dropped.
    """
    columns = set(dataset.column_names)
    pretokenized = "prompt_ids" in columns
    if pretokenized and config.mask_formatting_tokens and not set(FORMATTING_COLUMNS) <= columns:
        raise ValueError(
            f"{what}: pre-tokenized rows carry no {FORMATTING_COLUMNS}, so the formatting tokens cannot be masked "
            "[4.1.4]; add those columns (1 on header and termination tokens) or set mask_formatting_tokens: false."
        )
    rows, summary = clean_ranked_rows(dataset, what, max_responses=8, **config.hygiene_settings())
    if pretokenized:
        kept = dataset.select([index for index, _, _ in rows])
        keep = ["prompt_ids", "chosen_ids", "rejected_ids"] + (
            FORMATTING_COLUMNS if config.mask_formatting_tokens else []
        )
        return kept.select_columns(keep), summary | {"pairs": len(kept)}
    pairs, origins = [], []
    for index, prompt, responses in rows:
        options = dialog_options(dataset[index])  # the tools a tool-use pair declares [4.3.5]
        prompt_ids, response_ids, masks = encode_prompt_and_responses(tokenizer, prompt, responses, **options)
        for better in range(len(responses)):
            for worse in range(better + 1, len(responses)):
                pair = {
                    "prompt_ids": prompt_ids,
                    "chosen_ids": response_ids[better],
                    "rejected_ids": response_ids[worse],
                }
                if config.mask_formatting_tokens:
                    pair |= {"chosen_formatting_mask": masks[better], "rejected_formatting_mask": masks[worse]}
                pairs.append(pair)
                origins.append(index)
    summary |= {"ranked_rows": sum(len(r) > 2 for _, _, r in rows), "pairs": len(pairs)}
    if config.max_length is not None:
        too_long = [
            f"row {index}: {n} tokens"
            for index, pair in zip(origins, pairs)
            if (n := len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"])))
            > config.max_length
        ]
        raise_for_problems(sorted(set(too_long)), f"{what} (max_length={config.max_length})")
    logger.info("%s: %s [paper 4.2.1]", what, summary)
    return Dataset.from_list(pairs), summary


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
        self.data_summary: dict[str, dict[str, int]] = {}  # per split: what the hygiene rules kept and dropped
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
        columns = set(dataset.column_names)
        if "chosen_ids" in columns and (set(FORMATTING_COLUMNS) <= columns or not args.mask_formatting_tokens):
            return dataset  # prepared already (by prepare_dpo_rows in train(), or by the user)
        prepared, summary = prepare_dpo_rows(dataset, processing_class, args, f"{dataset_name} dataset")
        self.data_summary[dataset_name] = summary
        return prepared

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *FORMATTING_COLUMNS]


def load_dpo_data(config: Llama3DPOConfig, tokenizer) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """Train pairs (``dataset_path`` with the safety mix [5.4.3]) and eval pairs, checked and cleaned [4.2.1]."""
    from training.post_rows import load_rows

    summary = {}
    rows = mix_from_config(load_rows(config.dataset_path), config, seed=config.seed)
    train_rows, summary[config.dataset_path] = prepare_dpo_rows(rows, tokenizer, config, config.dataset_path)
    eval_rows = None
    if config.eval_dataset_path:
        eval_rows, summary[config.eval_dataset_path] = prepare_dpo_rows(
            load_rows(config.eval_dataset_path), tokenizer, config, config.eval_dataset_path
        )
    return train_rows, eval_rows, summary


def train(config: Llama3DPOConfig, tokenizer=None, data=None, resume: bool = True) -> Path:
    """Preference-optimise ``config.model_name_or_path`` and export it to ``output_dir/final``; returns that folder.

    ``data`` is :func:`load_dpo_data`'s result when the caller checked the data already; ``resume`` picks up the
    newest ``checkpoint-N`` in ``output_dir``.
    """
    from transformers import AutoModelForCausalLM

    from training.post_cli import export_model, last_checkpoint, load_stage_tokenizer, lora_config
    from training.post_precision import export_dtype, load_trainable

    tokenizer = tokenizer or load_stage_tokenizer(config)
    train_rows, eval_rows, summary = data or load_dpo_data(config, tokenizer)
    trainer = Llama3DPOTrainer(
        model=load_trainable(AutoModelForCausalLM, config.model_name_or_path, config),
        args=config,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM"),
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(config.output_dir) if resume else None)
    return export_model(trainer, Path(config.output_dir) / "final", dtype=export_dtype(config), summary=summary)


def main(argv: list[str]) -> int:
    """``hf-llama3 dpo``: preference-optimise a policy on the latest preference data [4.1.4]."""
    from training.post_cli import check_model_path, load_stage_config, load_stage_tokenizer, run_stage, stage_parser

    args = stage_parser(
        "dpo", "DPO with formatting-token masking and an NLL term (paper 4.1.4).", Llama3DPOConfig
    ).parse_args(argv)
    config = load_stage_config(Llama3DPOConfig, args)
    # Checked before run_stage creates output_dir: a bad model path or data file leaves nothing behind.
    check_model_path(config.model_name_or_path)
    tokenizer = load_stage_tokenizer(config)
    data = load_dpo_data(config, tokenizer)
    return run_stage("dpo", config, lambda: train(config, tokenizer, data))
