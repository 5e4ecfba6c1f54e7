"""Shared command-line plumbing for the post-training stages (paper section 4).

Every stage is run as ``hf-llama3 <stage> --config recipe.yaml [--set key=value ...]``: the YAML recipe fills the
stage's config dataclass, ``--set`` overrides single fields (values parsed as YAML, so ``--set beta=0.2`` is a
float and ``--set 'weights=[1, 2]'`` a list), and unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

import hf_llama3  # noqa: F401  (registers model_type llama3 with the Auto classes every stage loads through)

ConfigT = TypeVar("ConfigT")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict; a missing file or a non-mapping document is a user error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist: pass --config with the path of a YAML recipe.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of config keys, got {type(data).__name__}.")
    return data


def build_config(cls: type[ConfigT], values: Mapping[str, Any], source: str = "config") -> ConfigT:
    """Instantiate the dataclass ``cls`` from ``values``, rejecting keys it does not define."""
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}. Valid keys: {', '.join(sorted(names))}."
        )
    return cls(**values)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` into a dict, each value parsed as YAML."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser every stage starts from: ``--config`` and repeated ``--set key=value``."""
    parser = argparse.ArgumentParser(prog=f"hf-llama3 {prog}", description=description)
    parser.add_argument("--config", type=Path, help="YAML recipe (see recipes/tiny/ and recipes/llama3-8b/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (value parsed as YAML); repeatable",
    )
    return parser


def load_stage_config(cls: type[ConfigT], args: argparse.Namespace, extra: Mapping[str, Any] | None = None) -> ConfigT:
    """Merge the YAML recipe, stage-specific flags (``extra``, None values skipped) and ``--set`` overrides."""
    values: dict[str, Any] = read_yaml(args.config) if args.config is not None else {}
    values.update({key: value for key, value in (extra or {}).items() if value is not None})
    values.update(parse_overrides(args.overrides))
    return build_config(cls, values, source=str(args.config) if args.config is not None else "command line")


@dataclasses.dataclass
class StageInputs:
    """Fields every post-training trainer stage shares: what to load, what to train on, and the LoRA option.

    Mixed into each stage's TRL config (``Llama3RewardConfig(RewardConfig, StageInputs)`` ...), so one YAML
    recipe holds both TRL's training arguments and these.

    Args:
        model_name_or_path: Folder (or Hub id, when online) of the model to start from.
        tokenizer_name_or_path: Tokenizer folder; ``None`` uses the model folder's tokenizer, or the real Llama 3
            tokenizer from ``hf_llama3.load_tokenizer`` when the folder has none.
        dataset_path: Training rows: a ``.json``/``.jsonl``/``.parquet`` file or a ``save_to_disk`` folder.
        eval_dataset_path: Optional held-out rows in the same format.
        use_peft: Train LoRA adapters through PEFT instead of all weights; the export is merged [our setting,
            the paper trains all weights].
        lora_r, lora_alpha, lora_dropout, lora_target_modules: The LoRA adapter (PEFT ``LoraConfig``).
    """

    model_name_or_path: str = ""
    tokenizer_name_or_path: str | None = None
    dataset_path: str = ""
    eval_dataset_path: str | None = None
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"

    def validate_inputs(self) -> None:
        """Errors for settings every stage needs; called from each stage config's ``__post_init__``."""
        if self.use_peft and self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive when use_peft is true, got {self.lora_r}.")


def lora_config(config: StageInputs, task_type: str):
    """The PEFT ``LoraConfig`` for a stage, or ``None`` when ``use_peft`` is off."""
    if not config.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
    )


def load_rows(path: str | Path):
    """Load a dataset file (json, jsonl, parquet) or a ``save_to_disk`` folder as a ``datasets.Dataset``."""
    import datasets

    path = Path(path)
    if not str(path) or not path.exists():
        raise FileNotFoundError(
            f"Dataset {str(path)!r} does not exist: set dataset_path to a json/jsonl/parquet file."
        )
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    kinds = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
    if path.suffix not in kinds:
        raise ValueError(f"Dataset {path}: unsupported extension {path.suffix!r}; use .json, .jsonl or .parquet.")
    return datasets.load_dataset(kinds[path.suffix], data_files=str(path), split="train")


def load_stage_tokenizer(config: StageInputs):
    """The stage's tokenizer: ``tokenizer_name_or_path``, else the model folder's, else the real Llama 3 one."""
    from transformers import AutoTokenizer

    source = config.tokenizer_name_or_path or config.model_name_or_path
    if config.tokenizer_name_or_path or (source and (Path(source) / "tokenizer.json").is_file()):
        return AutoTokenizer.from_pretrained(source)
    from hf_llama3.tokenization_llama3 import load_tokenizer

    return load_tokenizer()


def export_model(trainer, output_dir: str | Path) -> Path:
    """Save the trained model (LoRA adapters merged into the base weights) and tokenizer, atomically."""
    from hf_llama3.checkpoint_io import atomic_output_dir

    output_dir = Path(output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        with atomic_output_dir(output_dir, overwrite=True) as staging:
            model.save_pretrained(staging)
            trainer.processing_class.save_pretrained(staging)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder under ``output_dir`` to resume from, or ``None`` for a fresh run."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
