"""``hf-llama3 quantize --fp8``: export a Llama 3 folder with the paper's FP8 row-wise weights [6.2].

The output is the layout of Meta's FP8 release as transformers loads it (``quant_method: fbgemm_fp8``): for every
layer but the first and the last, ``mlp.{gate,up,down}_proj.weight`` becomes float8_e4m3fn ``[out, in]`` beside a
float32 ``weight_scale`` ``[out, 1]``; every other tensor is kept (cast to bf16); ``config.json`` carries
``FbgemmFp8Config(activation_scale_ub=1200, modules_to_not_convert=[...])`` as transformers serialises it. On a
GPU with compute capability 9.0 and ``fbgemm-gpu``, ``AutoModelForCausalLM.from_pretrained(folder)`` runs it with
FP8 kernels; anywhere else :func:`hf_llama3.fp8_loader.load_fp8_model` runs it by dequantizing.

Source shards are processed one at a time (a 405B export needs the memory of one shard, not of the model), the
shard layout and index are kept, and everything is written to a temporary folder renamed into place at the end.

    hf-llama3 quantize --fp8 SRC DST [--activation-scale-ub 1200] [--check PROMPTS.jsonl --reward-model RM]
    hf-llama3 quantize --memory --preset llama3-405b --batch 1 --context 131072 --gpus 8 --gpu-memory-gb 80
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint_io import (
    SAFE_WEIGHTS_INDEX_NAME,
    CheckpointError,
    atomic_output_dir,
    check_safetensors_file,
    check_state_dict_shapes,
    copy_companion_files,
    read_config_dict,
    weight_files,
)
from .cli_types import positive_float, positive_int
from .fp8 import ACTIVATION_SCALE_UB, fbgemm_quantization_config, fp8_module_names, quantize_rowwise
from .memory import format_plan, memory_plan

logger = logging.getLogger(__name__)

REPORT_NAME = "quantization_report.json"
QUALITY_REPORT_NAME = "fp8_quality.json"
# The quality check lives in evaluation/ (which imports hf_llama3, never the reverse); imported only when asked for.
QUALITY_CHECK = "evaluation.fp8_quality:check_folders"
SUPPORTED_MODEL_TYPES = ("llama3", "llama")


def _source_config(src: Path) -> tuple[dict, Any]:
    """The source's ``config.json`` and our config built from it, after the checks that reject bad input."""
    if not src.is_dir():
        raise FileNotFoundError(f"Source folder {src} does not exist.")
    if (src / "params.json").exists() and not (src / "config.json").exists():
        raise CheckpointError(
            f"{src} is a Meta consolidated.NN.pth folder: convert it first with "
            f"`hf-llama3 convert --to ours {src} OUT`, then quantize OUT."
        )
    config_dict = read_config_dict(src)
    if config_dict.get("quantization_config"):
        method = config_dict["quantization_config"].get("quant_method", "unknown")
        raise CheckpointError(
            f"{src}/config.json already has a quantization_config (quant_method {method!r}): the folder is "
            "quantized. Quantize the bf16 folder it came from."
        )
    model_type = config_dict.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{src}/config.json has model_type {model_type!r}: FP8 export supports Llama 3 decoders (model_type "
            "'llama3' or 'llama'). Other architectures are not quantized by this command."
        )
    architectures = config_dict.get("architectures") or []
    if any(not a.endswith("ForCausalLM") for a in architectures):
        raise CheckpointError(
            f"{src}/config.json architectures {architectures} is not a causal LM: the paper quantizes the served "
            "decoder [6.2]; reward models and classifiers stay in bf16."
        )
    from .configuration_llama3 import Llama3Config
    from .convert import ours_config_from_llama

    values = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    config = Llama3Config.from_dict(values) if model_type == "llama3" else ours_config_from_llama(values)
    if getattr(config, "mlp_bias", False):
        raise CheckpointError(
            f"{src}/config.json has mlp_bias=true: the FP8 export covers bias-free feed-forward layers (Llama 3 has "
            "no biases); this model is not supported."
        )
    if config.num_hidden_layers < 3:
        raise CheckpointError(
            f"{src} has {config.num_hidden_layers} layer(s): the paper keeps the first and last layers in bf16 "
            "[6.2], so there is no layer to quantize. Use a model with at least 3 layers."
        )
    return config_dict, config


def _check_source_tensors(src: Path, files: list[Path], config) -> None:
    """Every shard complete, no FP8 tensor already present, shapes as the config says (read from headers only)."""
    from .convert import _expected_shapes
    from .modeling_llama3 import Llama3ForCausalLM

    shapes: dict[str, torch.Tensor] = {}
    for path in files:
        check_safetensors_file(path)
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                dtype = f.get_slice(name).get_dtype()
                if name.endswith("weight_scale") or dtype.startswith("F8"):
                    raise CheckpointError(
                        f"{path.name} holds {name!r} ({dtype}): the folder is already FP8-quantized. "
                        "Quantize the bf16 folder it came from."
                    )
                shapes[name] = torch.empty(f.get_slice(name).get_shape(), device="meta")
    check_state_dict_shapes(shapes, _expected_shapes(Llama3ForCausalLM, config), str(src))


def _write_config(tmp: Path, config_dict: dict, config, activation_scale_ub: float, dtype: torch.dtype | None) -> Any:
    """``config.json`` with transformers' ``FbgemmFp8Config``; our format also gets the modeling files."""
    quantization_config = fbgemm_quantization_config(config.num_hidden_layers, activation_scale_ub)
    if config_dict["model_type"] == "llama3":
        from transformers.dynamic_module_utils import custom_object_save

        from .modeling_llama3 import Llama3ForCausalLM

        out = config
        with torch.device("meta"):
            model = Llama3ForCausalLM(out)
        custom_object_save(model, tmp, config=out)  # modeling files + auto_map, as save_pretrained does
    else:
        from transformers import LlamaConfig

        out = LlamaConfig.from_dict({k: v for k, v in config_dict.items() if k != "quantization_config"})
    out.architectures = config_dict.get("architectures") or [
        "Llama3ForCausalLM" if config_dict["model_type"] == "llama3" else "LlamaForCausalLM"
    ]
    out.quantization_config = quantization_config
    if dtype is not None:
        out.dtype = str(dtype).removeprefix("torch.")
    out.save_pretrained(tmp)
    return out


def _quantize_shard(path: Path, targets: set[str], dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], int]:
    """Tensors of one source shard with the target modules quantized; also the number quantized."""
    out: dict[str, torch.Tensor] = {}
    count = 0
    with safe_open(path, framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            tensor = f.get_tensor(name)
            module = name.removesuffix(".weight")
            if module in targets and name.endswith(".weight"):
                q, scale = quantize_rowwise(tensor)
                out[name], out[f"{module}.weight_scale"] = q, scale.reshape(-1, 1)
                count += 1
            else:
                out[name] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return out, count


def quantize_fp8_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    activation_scale_ub: float = ACTIVATION_SCALE_UB,
    dtype: torch.dtype | None = torch.bfloat16,
    overwrite: bool = False,
    check_prompts: str | os.PathLike | None = None,
    reward_model: str | os.PathLike | None = None,
    max_new_tokens: int = 32,
) -> dict[str, Any]:
    """Write ``dst``: ``src`` (ours or stock Llama, bf16/fp32 safetensors) with FP8 row-wise FFN weights [6.2].

    Args:
        src: A Hugging Face Llama 3 folder (``model_type`` ``llama3`` or ``llama``) of a causal LM.
        dst: Output folder, written atomically (nothing appears there unless the export and its checks succeed).
        activation_scale_ub: Upper bound on the activation row maximum (1200 in the paper [6.2]).
        dtype: dtype of the tensors that stay unquantized (bf16, as Meta's release); ``None`` keeps the source's.
        overwrite: Replace an existing ``dst``.
        check_prompts: Optional prompts file; runs the paper's quality checks (``evaluation.fp8_quality``) on the
            new folder against ``src`` and writes ``fp8_quality.json`` into it.
        reward_model: Reward-model folder for the score-distribution check (with ``check_prompts``).
        max_new_tokens: Tokens generated per prompt for the reward-model check.

    Returns:
        The report written to ``dst/quantization_report.json`` (counts, bytes before/after, quality summary).
    """
    if activation_scale_ub <= 0:
        raise ValueError(f"activation_scale_ub must be positive, got {activation_scale_ub}.")
    if reward_model is not None and check_prompts is None:
        raise ValueError("--reward-model needs --check PROMPTS: the scores are of responses to those prompts.")
    if check_prompts is not None and not Path(check_prompts).is_file():
        raise FileNotFoundError(f"Prompts file {check_prompts} (--check) does not exist.")
    src = Path(src)
    config_dict, config = _source_config(src)
    files = weight_files(src)
    _check_source_tensors(src, files, config)
    targets = set(fp8_module_names(config.num_hidden_layers))
    report: dict[str, Any] = {
        "source": str(src),
        "format": config_dict["model_type"],
        "method": "fp8 row-wise weights, dynamic per-token activations [6.2]",
        "activation_scale_ub": float(activation_scale_ub),
        "fp8_layers": sorted({int(name.split(".")[2]) for name in targets}),
        "bf16_layers": [0, config.num_hidden_layers - 1],
        # Weights + KV cache of this model for one 128K-token sequence on 8 x 80 GB, bf16 vs FP8 (hf_llama3.memory).
        "memory": memory_plan(config),
    }
    bytes_before = sum(p.stat().st_size for p in files)
    logger.info("Quantizing %d FFN projections of %s to FP8 into %s", len(targets), src, dst)
    with atomic_output_dir(dst, overwrite=overwrite, inputs=[src]) as tmp:
        out_config = _write_config(tmp, config_dict, config, activation_scale_ub, dtype)
        weight_map: dict[str, str] = {}
        quantized = 0
        for path in files:
            tensors, count = _quantize_shard(path, targets, dtype)
            quantized += count
            save_file(tensors, tmp / path.name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, path.name))
            del tensors
        if quantized != len(targets):
            raise CheckpointError(f"{src}: quantized {quantized} of {len(targets)} FFN projections; weights missing.")
        if (src / SAFE_WEIGHTS_INDEX_NAME).exists():
            index = {
                "metadata": {"total_size": sum((tmp / name).stat().st_size for name in {*weight_map.values()})},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (tmp / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        copy_companion_files(src, tmp)
        _write_card(tmp, out_config, config_dict["model_type"] == "llama3", activation_scale_ub)
        report.update(
            quantized_modules=quantized,
            bytes_before=bytes_before,
            bytes_after=sum(tmp.joinpath(name).stat().st_size for name in {*weight_map.values()}),
        )
        if check_prompts is not None:
            module_name, _, function = QUALITY_CHECK.partition(":")
            check = getattr(importlib.import_module(module_name), function)
            quality = check(src, tmp, check_prompts, reward_model=reward_model, max_new_tokens=max_new_tokens)
            quality.setdefault("setup", {})["quantized"] = str(dst)  # checked in the temporary folder before rename
            (tmp / QUALITY_REPORT_NAME).write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n")
            report["quality"] = quality.get("summary", quality)
        report["output"] = str(dst)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def _write_card(tmp: Path, config, remote_code: bool, activation_scale_ub: float) -> None:
    from .model_card import write_model_card

    layers = config.num_hidden_layers
    text = (
        f"Feed-forward projections of layers 1-{layers - 2} are FP8 (e4m3) with one fp32 scale per output row; "
        f"activations are quantized per token at run time with the row maximum bounded by {activation_scale_ub:g} "
        "[Llama 3 paper, 6.2]. Self-attention, layers 0 and "
        f"{layers - 1}, embeddings, norms and the output layer are bf16.\n\n"
        "On a GPU with compute capability >= 9.0 and `fbgemm-gpu`: "
        '`AutoModelForCausalLM.from_pretrained(path, device_map="cuda")` (transformers\' `fbgemm_fp8` quantizer). '
        "Without FP8 kernels: `hf_llama3.fp8_loader.load_fp8_model(path)` (dequantizing reference, CPU)."
    )
    write_model_card(
        tmp,
        config,
        title="Llama 3, FP8 row-wise (hf-llama3)",
        remote_code=remote_code,
        sections={"Quantization": text, "Provenance": "Written by `hf-llama3 quantize --fp8`."},
        tags=["fp8", "fbgemm_fp8"],
    )


def _memory_config(args: argparse.Namespace):
    from .configuration_llama3 import Llama3Config
    from .convert import ours_config_from_llama

    if args.preset:
        return Llama3Config.from_preset(args.preset)
    folder = Path(args.config_from or args.src)
    values = {k: v for k, v in read_config_dict(folder).items() if k != "quantization_config"}
    return Llama3Config.from_dict(values) if values.get("model_type") == "llama3" else ours_config_from_llama(values)


def main(argv: list[str] | None = None) -> int:
    """``hf-llama3 quantize --fp8 SRC DST`` and ``hf-llama3 quantize --memory``."""
    parser = argparse.ArgumentParser(
        prog="hf-llama3 quantize",
        description="FP8 row-wise quantization of the feed-forward layers [6.2], exported in transformers' "
        "fbgemm_fp8 format; --memory prints weight and KV-cache bytes (bf16 vs FP8).",
    )
    parser.add_argument("src", nargs="?", help="bf16 Llama 3 folder (ours or stock llama)")
    parser.add_argument("dst", nargs="?", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--fp8", action="store_true", help="quantize SRC into DST (the only method: FP8 row-wise)")
    parser.add_argument("--activation-scale-ub", type=positive_float, default=ACTIVATION_SCALE_UB, help="[6.2]: 1200")
    parser.add_argument("--keep-dtype", action="store_true", help="keep unquantized tensors' dtype (default: bf16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--check",
        metavar="PROMPTS",
        help="JSONL prompts ({'text'} or {'input_ids'}): run the "
        "quality checks (KL, top-1, perplexity, reward scores) against SRC",
    )
    parser.add_argument("--reward-model", help="reward-model folder for the score-distribution check")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, help="response length for the reward check")
    memory = parser.add_argument_group("memory accounting")
    memory.add_argument("--memory", action="store_true", help="print weight + KV-cache bytes, bf16 vs FP8")
    memory.add_argument("--preset", help="model size for --memory without a folder (e.g. llama3-405b)")
    memory.add_argument("--config-from", help="folder whose config.json sizes --memory")
    memory.add_argument("--batch", type=positive_int, default=1, help="sequences in the KV cache")
    memory.add_argument("--context", type=positive_int, default=131072, help="tokens per sequence (128K by default)")
    memory.add_argument("--gpus", type=positive_int, default=8, help="GPUs in the node")
    memory.add_argument("--gpu-memory-gb", type=positive_float, default=80.0, help="memory per GPU, GB (1e9 bytes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.fp8 and not args.memory:
        raise ValueError("Nothing to do: pass --fp8 SRC DST to quantize, or --memory to print the memory plan.")
    if args.fp8:
        if not (args.src and args.dst):
            raise ValueError("--fp8 needs SRC and DST folders: hf-llama3 quantize --fp8 SRC DST.")
        report = quantize_fp8_checkpoint(
            args.src,
            args.dst,
            activation_scale_ub=args.activation_scale_ub,
            dtype=None if args.keep_dtype else torch.bfloat16,
            overwrite=args.overwrite,
            check_prompts=args.check,
            reward_model=args.reward_model,
            max_new_tokens=args.max_new_tokens,
        )
        print(
            f"wrote FP8 checkpoint to {report['output']}: {report['quantized_modules']} FFN projections in layers "
            f"{report['fp8_layers'][0]}-{report['fp8_layers'][-1]}, weights {report['bytes_before'] / 1e6:.1f} MB -> "
            f"{report['bytes_after'] / 1e6:.1f} MB"
        )
        if "quality" in report:
            print("quality: " + json.dumps(report["quality"], sort_keys=True))
    if args.memory:
        if not (args.preset or args.config_from or args.src):
            raise ValueError("--memory needs a model: --preset NAME, --config-from FOLDER, or SRC.")
        plan = memory_plan(_memory_config(args), args.batch, args.context, args.gpus, args.gpu_memory_gb)
        print(format_plan(plan))
    return 0


__all__ = ["main", "quantize_fp8_checkpoint"]
