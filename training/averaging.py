"""Model averaging [paper 4.1.5]: average the weights of checkpoints from runs with different data or hyperparameters.

The paper averages models at the reward-model, SFT and DPO stages. Inputs and output are Hugging Face folders with
safetensors weights, single-file or sharded (``model.safetensors.index.json``). Memory stays bounded by one shard:
the output is written shard by shard in the first checkpoint's layout, and each tensor of the other checkpoints is
read lazily from its own shard with ``safe_open``. Floating-point tensors are accumulated in fp32 and cast back to
their stored dtype; non-float tensors must be identical everywhere and are copied.

    hf-llama3 average --config recipes/tiny/average.yaml
    hf-llama3 average --set 'checkpoints=[run_a, run_b]' --set output_dir=avg
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from hf_llama3.checkpoint_io import atomic_output_dir
from hf_llama3.cli_types import finite_float
from training.post_cli import load_stage_config, stage_parser

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclasses.dataclass
class AveragingConfig:
    """What to average and where to write it.

    Args:
        checkpoints: Two or more model folders (policies or reward models of the same architecture).
        output_dir: Folder for the averaged model; written to a temporary folder, then renamed.
        weights: One non-negative weight per checkpoint, normalised to sum to 1; ``None`` is the uniform average
            the paper uses [4.1.5] (the paper gives no weights: weighted averaging is our setting).
        overwrite: Replace ``output_dir`` if it exists.
    """

    checkpoints: list[str] = dataclasses.field(default_factory=list)
    output_dir: str = ""
    weights: list[float] | None = None
    overwrite: bool = False

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader) before the config is built.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {"weights": {"min": 0}}

    def __post_init__(self) -> None:
        if len(self.checkpoints) < 2:
            raise ValueError(f"checkpoints needs at least two model folders to average, got {len(self.checkpoints)}.")
        if not self.output_dir:
            raise ValueError("output_dir is required: the folder to write the averaged model to.")
        if self.weights is not None:
            if len(self.weights) != len(self.checkpoints):
                raise ValueError(
                    f"weights has {len(self.weights)} entries for {len(self.checkpoints)} checkpoints: give one each."
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"weights must be non-negative with a positive sum, got {self.weights}.")


def shard_map(folder: str | Path) -> dict[str, str]:
    """Map each tensor name of a safetensors checkpoint folder to the file (inside ``folder``) that holds it."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        return dict(index["weight_map"])
    if (folder / SINGLE_FILE).is_file():
        with safe_open(folder / SINGLE_FILE, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), SINGLE_FILE)
    if not folder.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {folder} does not exist.")
    raise FileNotFoundError(
        f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}: save the model with "
        "`save_pretrained(..., safe_serialization=True)` (pytorch_model.bin checkpoints are not averaged)."
    )


def _tensor_specs(folder: Path, names_by_file: dict[str, list[str]]) -> dict[str, tuple[str, list[int]]]:
    specs = {}
    for filename, names in names_by_file.items():
        with safe_open(folder / filename, framework="pt") as handle:
            for name in names:
                tensor_slice = handle.get_slice(name)
                specs[name] = (tensor_slice.get_dtype(), list(tensor_slice.get_shape()))
    return specs


def _group_by_file(weight_map: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name, filename in weight_map.items():
        groups.setdefault(filename, []).append(name)
    return groups


def check_compatible(folders: Sequence[Path]) -> list[dict[str, str]]:
    """Check that every checkpoint has the same tensor names, shapes and dtypes (headers only, no weights read)."""
    maps = [shard_map(folder) for folder in folders]
    reference = _tensor_specs(folders[0], _group_by_file(maps[0]))
    for folder, weight_map in zip(folders[1:], maps[1:]):
        specs = _tensor_specs(folder, _group_by_file(weight_map))
        missing, extra = sorted(set(reference) - set(specs)), sorted(set(specs) - set(reference))
        if missing or extra:
            raise ValueError(
                f"{folder} does not match {folders[0]}: missing tensors {missing[:5]}, extra tensors {extra[:5]}. "
                "Only checkpoints of the same architecture can be averaged."
            )
        for name, spec in reference.items():
            if specs[name] != spec:
                raise ValueError(
                    f"Tensor {name!r} is {specs[name]} in {folder} but {spec} in {folders[0]}: the checkpoints have "
                    "different shapes or dtypes."
                )
    return maps


def average_checkpoints(
    checkpoints: Sequence[str | Path],
    output_dir: str | Path,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the (weighted) average of ``checkpoints`` to ``output_dir`` and return it.

    Non-weight files of the first checkpoint (config, generation config, tokenizer, remote-code modules) are
    copied; the weights keep its shard layout. The folder appears only when complete.
    """
    folders = [Path(c) for c in checkpoints]
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists: choose another output_dir or set overwrite: true.")
    raw = [1.0] * len(folders) if weights is None else [float(w) for w in weights]
    total = sum(raw)
    coefficients = [w / total for w in raw]
    maps = check_compatible(folders)
    layout = _group_by_file(maps[0])

    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=folders) as staging:
        for path in folders[0].iterdir():
            if path.is_file() and not path.name.endswith(".safetensors") and path.name != INDEX_FILE:
                shutil.copy2(path, staging / path.name)
        for filename, names in tqdm(layout.items(), desc="averaging shards", disable=len(layout) < 2):
            averaged = _average_shard(folders, maps, filename, names, coefficients)
            save_file(averaged, staging / filename, metadata={"format": "pt"})
            del averaged
        if (folders[0] / INDEX_FILE).is_file():
            shutil.copy2(folders[0] / INDEX_FILE, staging / INDEX_FILE)
        (staging / "averaging.json").write_text(
            json.dumps({"checkpoints": [str(f) for f in folders], "weights": coefficients}, indent=2) + "\n",
            encoding="utf-8",
        )
    logger.info("Averaged %d checkpoints into %s (weights %s)", len(folders), output_dir, coefficients)
    return output_dir


def _average_shard(
    folders: Sequence[Path],
    maps: Sequence[dict[str, str]],
    filename: str,
    names: list[str],
    coefficients: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Average the tensors of one output shard; the others' tensors are read one at a time."""
    with safe_open(folders[0] / filename, framework="pt") as handle:
        first = {name: handle.get_tensor(name) for name in names}
    sums = {name: t.float() * coefficients[0] for name, t in first.items() if t.is_floating_point()}
    for folder, weight_map, coefficient in zip(folders[1:], maps[1:], coefficients[1:]):
        for other_file, other_names in _group_by_file({name: weight_map[name] for name in names}).items():
            with safe_open(folder / other_file, framework="pt") as handle:
                for name in other_names:
                    tensor = handle.get_tensor(name)
                    if name in sums:
                        sums[name].add_(tensor.float(), alpha=coefficient)
                    elif not torch.equal(tensor, first[name]):
                        raise ValueError(
                            f"Non-float tensor {name!r} differs between {folders[0]} and {folder}; it cannot be "
                            "averaged."
                        )
    return {name: sums[name].to(t.dtype) if name in sums else t for name, t in first.items()}


def main(argv: list[str]) -> int:
    """``hf-llama3 average``: average checkpoints as configured by a YAML recipe and ``--set`` overrides."""
    parser = stage_parser(
        "average", "Average model checkpoints (paper 4.1.5), sharded safetensors in and out.", AveragingConfig
    )
    parser.add_argument("--checkpoints", nargs="+", help="model folders to average")
    parser.add_argument("--output-dir", help="where to write the averaged model")
    parser.add_argument("--weights", nargs="+", type=finite_float, help="one weight per checkpoint (default: uniform)")
    args = parser.parse_args(argv)
    config = load_stage_config(
        AveragingConfig,
        args,
        {"checkpoints": args.checkpoints, "output_dir": args.output_dir, "weights": args.weights},
    )
    average_checkpoints(config.checkpoints, config.output_dir, config.weights, config.overwrite)
    print(config.output_dir)
    return 0
