"""Shared command-line plumbing for the post-training stages (paper section 4).

Every stage is run as ``hf-llama3 <stage> --config recipe.yaml [--set key=value ...]``: the YAML recipe fills the
stage's config dataclass, ``--set`` overrides single fields (values parsed as YAML, so ``--set beta=0.2`` is a
float and ``--set 'weights=[1, 2]'`` a list), and unknown keys are rejected with the list of valid ones.
The loading itself is the project's one recipe loader (:mod:`hf_llama3.recipe_loader`); the functions here are
the names the stages have always called.

A stage run (:func:`run_stage`) holds its ``output_dir``'s lock for the whole run and records a run fingerprint there
(:mod:`hf_llama3.run_fingerprint`): a rerun resumes TRL's last ``checkpoint-N`` only for the same recipe, model and
data, and a finished stage (``final/`` written) is never retrained.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import hf_llama3  # noqa: F401  (registers model_type llama3 with the Auto classes every stage loads through)
from hf_llama3 import recipe_loader
from hf_llama3.recipe_loader import read_yaml  # noqa: F401  (re-exported: stages and tests read recipes through it)
from training.post_rows import load_rows  # noqa: F401  (re-exported: every stage reads its data files through it)

ConfigT = TypeVar("ConfigT")

# Bounds for the TRL/transformers trainer arguments the stage configs inherit (their fields cannot carry our
# metadata): values where zero or a negative number is meaningless. Applied only to fields a config has.
TRAINER_CONSTRAINTS: dict[str, dict[str, float]] = {
    "learning_rate": {"gt": 0},
    "num_train_epochs": {"gt": 0},
    "max_steps": {"min": -1},  # -1: train for num_train_epochs
    "per_device_train_batch_size": {"min": 1},
    "per_device_eval_batch_size": {"min": 1},
    "gradient_accumulation_steps": {"min": 1},
    "warmup_ratio": {"min": 0, "max": 1},
    "warmup_steps": {"min": 0},
    "weight_decay": {"min": 0},
    "max_grad_norm": {"min": 0},
    "adam_beta1": {"min": 0, "lt": 1},
    "adam_beta2": {"min": 0, "lt": 1},
    "adam_epsilon": {"gt": 0},
    "logging_steps": {"gt": 0},
    "save_steps": {"gt": 0},
    "eval_steps": {"gt": 0},
    "save_total_limit": {"min": 1},
    "max_length": {"min": 1},
    "max_prompt_length": {"min": 1},
    "max_completion_length": {"min": 1},
    "beta": {"gt": 0},
    "lora_r": {"min": 1},
    "lora_alpha": {"gt": 0},
    "lora_dropout": {"min": 0, "lt": 1},
    "dataloader_num_workers": {"min": 0},
    "seed": {"min": 0},
}


def build_config(cls: type[ConfigT], values: Mapping[str, Any], source: str = "config") -> ConfigT:
    """Instantiate the dataclass ``cls`` from ``values``: unknown keys rejected, types and bounds checked."""
    return recipe_loader.build(cls, values, source=source)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` into a dict, each value parsed as YAML (dotted keys kept as they are)."""
    return dict(recipe_loader.split_override(pair) for pair in pairs)


def stage_parser(prog: str, description: str, config_cls: type | None = None) -> argparse.ArgumentParser:
    """The argument parser every stage starts from: ``--config`` and repeated ``--set key=value``.

    With ``config_cls``, ``--help`` ends with every config key (dotted path, type, default and help text).
    """
    parser = argparse.ArgumentParser(
        prog=f"hf-llama3 {prog}",
        description=description,
        epilog=recipe_loader.describe(config_cls) if config_cls is not None else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML recipe (see recipes/tiny/ and recipes/llama3-8b/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (value parsed as YAML; dotted keys reach sections); repeatable",
    )
    return parser


def load_stage_config(cls: type[ConfigT], args: argparse.Namespace, extra: Mapping[str, Any] | None = None) -> ConfigT:
    """Merge the YAML recipe, stage-specific flags (``extra``, None values skipped) and ``--set`` overrides."""
    return recipe_loader.load_recipe(cls, args.config, args.overrides, extra)


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
        weights_dtype: dtype of the trainable weights: ``float32`` (fp32 master weights, computed under bf16 autocast
            when ``bf16`` is on) or ``bfloat16`` (pure bf16: half the memory, but updates smaller than 1/512 of a
            weight are lost, so most weights never change at the paper's 1e-5; a warning says so).
        export_dtype: dtype of the exported model; ``None`` keeps the dtype of ``model_name_or_path``'s checkpoint.
        sharding: ``fsdp2`` shards the weights, gradients and optimizer state of the trained model (and DPO's
            reference) over the ranks of ``torchrun``/``accelerate launch`` through accelerate's FSDP2 plugin, one
            unit per decoder layer; the export is gathered by ``Trainer.save_model``. ``none``: every rank holds
            the whole model (DDP). Needs accelerators: accelerate ignores FSDP on CPU, so it is refused there.
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
    weights_dtype: Literal["float32", "bfloat16"] = "float32"
    export_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    sharding: Literal["none", "fsdp2"] = "none"

    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = TRAINER_CONSTRAINTS

    def validate_inputs(self) -> None:
        """Errors for settings every stage needs; called from each stage config's ``__post_init__``."""
        if self.use_peft and self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive when use_peft is true, got {self.lora_r}.")

    def apply_sharding(self) -> None:
        """Turn ``sharding: fsdp2`` into the trainer's FSDP2 settings; called before ``TrainingArguments`` reads them."""
        if self.sharding == "none":
            return
        import torch

        if self.use_peft:
            raise ValueError(
                "sharding: fsdp2 with use_peft is not supported: the LoRA export is merged on one process; "
                "train LoRA adapters with sharding: none."
            )
        if getattr(self, "use_cpu", False) or not torch.accelerator.is_available():
            raise ValueError(
                "sharding: fsdp2 needs accelerators (GPUs): accelerate runs FSDP only there and on CPU would "
                "silently train unsharded copies (DDP); set sharding: none."
            )
        self.fsdp = True
        # FULL_STATE_DICT: Trainer.save_model gathers the shards into one loadable checkpoint for the export.
        self.fsdp_config = {"version": 2, "state_dict_type": "FULL_STATE_DICT", **(self.fsdp_config or {})}


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


def load_stage_tokenizer(config: StageInputs):
    """The stage's tokenizer: ``tokenizer_name_or_path``, else the model folder's, else the real Llama 3 one."""
    from transformers import AutoTokenizer

    source = config.tokenizer_name_or_path or config.model_name_or_path
    if config.tokenizer_name_or_path or (source and (Path(source) / "tokenizer.json").is_file()):
        return AutoTokenizer.from_pretrained(source)
    from hf_llama3.tokenization_llama3 import load_tokenizer

    return load_tokenizer()


def check_model_path(path: str, key: str = "model_name_or_path") -> None:
    """Refuse a checkpoint folder that is not there (or holds no ``config.json``) before anything loads.

    A local path that does not exist would otherwise reach the Hub client, whose "Repo id must be in the form"
    error does not say the folder is missing. A bare ``org/name`` that is not a folder is left to the Hub.
    """
    folder = Path(path)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{key}: {path!r} holds no config.json; give a checkpoint folder (config.json + weights)."
            )
        return
    from huggingface_hub.constants import HF_HUB_OFFLINE

    # ``org/name`` whose ``org`` is no local folder, when the Hub may be asked: the Hub's to resolve.
    looks_like_hub_id = len(folder.parts) == 2 and not path.startswith((".", "/", "~")) and not folder.parent.exists()
    if not path or HF_HUB_OFFLINE or not looks_like_hub_id:
        raise FileNotFoundError(f"{key}: checkpoint folder {path!r} does not exist; give the folder of a saved model.")


def export_model(trainer, output_dir: str | Path, dtype=None, summary: Mapping[str, Any] | None = None) -> Path:
    """Write the trained model (in ``dtype``; LoRA adapters merged), its tokenizer and the data summary, atomically.

    Full-weight models go through ``Trainer.save_model`` on every rank, which gathers sharded (FSDP) weights into
    one checkpoint; the main process then reloads it with ``from_pretrained`` in ``dtype`` and installs it at
    ``output_dir``. A PEFT model is merged into its base weights first (not sharded: LoRA runs without FSDP).
    """
    import json
    import shutil

    from accelerate.utils import is_peft_model

    from hf_llama3.checkpoint_io import atomic_output_dir

    output_dir = Path(output_dir)
    accelerator = trainer.accelerator
    model = accelerator.unwrap_model(trainer.model)
    gathered = output_dir.parent / f".{output_dir.name}.gathered"
    if not is_peft_model(model):
        trainer.save_model(str(gathered))  # collective under FSDP: every rank takes part
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if is_peft_model(model):
            model = model.merge_and_unload()
        else:
            # FSDP2 swaps the module's class for a generated FSDP<Name> subclass: reload as the model's own class.
            model_class = next(c for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))
            model = model_class.from_pretrained(gathered, dtype=dtype or model.dtype)
        if dtype is not None:
            model = model.to(dtype)
        with atomic_output_dir(output_dir, overwrite=True) as staging:
            model.save_pretrained(staging)
            trainer.processing_class.save_pretrained(staging)
            if summary is not None:
                (staging / "data_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(gathered, ignore_errors=True)
    accelerator.wait_for_everyone()
    return output_dir


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder under ``output_dir`` to resume from, or ``None`` for a fresh run."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


# Where and how a stage runs, not what it trains: changing these keeps the run the same run (exact names, then
# prefixes). Evaluation settings are here too: they never change the trained weights.
STAGE_HOW_KEYS = frozenset(
    {
        "output_dir",
        "report_to",
        "run_name",
        "project",
        "disable_tqdm",
        "local_rank",
        "resume_from_checkpoint",
        "push_to_hub",
        "overwrite_output_dir",
        "do_train",
        "do_eval",
        "do_predict",
        "skip_memory_metrics",
        "use_cpu",
        "ddp_timeout",
        "ddp_backend",
        "sharding",
        "dataset_num_proc",
        "per_device_eval_batch_size",
        "prediction_loss_only",
        "batch_eval_metrics",
        "include_num_input_tokens_seen",
        "enable_jit_checkpoint",
        "restore_callback_states_from_checkpoint",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
    }
)
STAGE_HOW_PREFIXES = ("logging_", "log_", "save_", "eval_", "hub_", "trackio_")
# Config fields naming files or folders the stage reads: their content identity is part of the fingerprint.
STAGE_INPUT_SUFFIXES = ("_name_or_path", "_dataset_path", "_dataset_paths", "chat_template_path")


def _is_how_key(key: str) -> bool:
    return key in STAGE_HOW_KEYS or key.startswith(STAGE_HOW_PREFIXES)


def stage_input_paths(config: Any) -> list[str]:
    """The model, tokenizer, dataset and chat-template paths a stage config names (evaluation data excepted)."""
    paths: list[str] = []
    for field in dataclasses.fields(config):
        if _is_how_key(field.name) or not (field.name == "dataset_path" or field.name.endswith(STAGE_INPUT_SUFFIXES)):
            continue
        value = getattr(config, field.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, Path)) and str(item):
                paths.append(str(item))
    return sorted(set(paths))


def stage_fingerprint(stage: str, config: Any) -> dict[str, Any]:
    """The stage, its recipe without the where-and-how keys, and its inputs' content identity (JSON-able)."""
    from hf_llama3.run_fingerprint import inputs_identity, make_fingerprint

    settings = {k: v for k, v in config.to_dict().items() if not _is_how_key(k)}
    inputs = {}
    for path in stage_input_paths(config):  # one entry per path the recipe names: a model folder is one input
        files = inputs_identity([path])
        if Path(path).is_dir():
            inputs[path] = {str(Path(file).relative_to(path)): identity for file, identity in files.items()}
        else:
            inputs[path] = next(iter(files.values()))
    return make_fingerprint({"stage": stage, **settings}, inputs)


def check_stage_run(stage: str, config: Any) -> Path | None:
    """Refuse to resume another recipe's, model's or dataset's run in ``config.output_dir``; record it at first start.

    TRL resumes from the newest ``checkpoint-N`` in ``output_dir``, so a rerun there must be the very run that wrote
    it. Returns the ``final/`` export when the folder holds this run, already finished (nothing to train); a finished
    run is never extended (more steps or epochs are a changed recipe, refused like any other change).
    """
    from hf_llama3.run_fingerprint import check_fingerprint

    output_dir = Path(config.output_dir)
    final = output_dir / "final"
    finished = final.is_dir()
    if finished:
        fresh = (
            f"that run is finished (export in {final}) and a finished run is never extended: to train with these "
            "settings (e.g. more steps or epochs), set another output_dir (--set output_dir=...)"
        )
    else:
        fresh = "to start afresh with these settings, set another output_dir (--set output_dir=...)"
    check_fingerprint(
        output_dir,
        stage_fingerprint(stage, config),
        what=f"{'an' if stage == 'sft' else 'a'} {stage} run",
        fresh=fresh,
    )
    return final if finished else None


def is_launcher_process() -> bool:
    """Whether this process takes a run's locks: global rank 0 under torchrun/accelerate, or a plain process."""
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0


def run_stage(stage: str, config: Any, train: Callable[[], Any]) -> int:
    """Run one post-training stage into ``config.output_dir``: locked, fingerprinted, resumed, never re-finished.

    The whole output folder is locked for the run (rank 0 only: one lock per run), so a second run into it is
    refused at once; a rerun of another recipe or inputs is refused before anything loads; a finished run says so
    and returns 0 with ``final/`` untouched; otherwise ``train()`` runs (it resumes from :func:`last_checkpoint`).
    """
    import contextlib
    import sys

    from hf_llama3.output_lock import output_lock

    lock = output_lock(config.output_dir) if is_launcher_process() else contextlib.nullcontext()
    with lock:
        final = check_stage_run(stage, config)
        if final is not None:
            if is_launcher_process():
                print(
                    f"{config.output_dir} holds this {stage} run, already finished: nothing to train "
                    f"(export in {final}).",
                    file=sys.stderr,
                )
            return 0
        train()
    return 0
