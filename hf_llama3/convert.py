"""Checkpoint conversion between our format, transformers' stock Llama format and Meta's original layout.

- ``ours``: ``model_type="llama3"`` folder with ``auto_map`` and the modeling files (loads with
  ``trust_remote_code=True``, or directly once ``hf_llama3`` is imported).
- ``llama``: transformers' stock ``model_type="llama"`` folder; parameter names are identical to ours, only the
  config differs, so it loads with ``AutoModelForCausalLM`` and no remote code.
- ``meta``: Meta's ``consolidated.NN.pth`` tensor-parallel shards + ``params.json`` (the layout of the
  ``llama-models`` reference ``Transformer``). Meta rotates interleaved pairs of each head's dimensions while
  transformers rotates the first half against the second, so ``wq``/``wk`` rows are permuted on the way.

Outputs are safetensors (sharded with an index above ``max_shard_size``), written to a temporary folder and
renamed into place, with a model card. Command line: ``hf-llama3 convert --to {ours,llama,meta} SRC DST``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from .checkpoint_io import (
    CheckpointError,
    atomic_output_dir,
    check_state_dict_shapes,
    copy_companion_files,
    read_config_dict,
    read_state_dict,
)
from .cli_types import positive_int
from .configuration_llama3 import LLAMA3_ROPE_PARAMETERS, Llama3Config
from .model_card import write_model_card
from .modeling_llama3 import Llama3ForCausalLM, Llama3ForSequenceClassification

logger = logging.getLogger(__name__)

FORMATS = ("ours", "llama", "meta")
# Targets implemented outside hf_llama3 (which must not import the training package): "module:function" strings
# taking (src, dst, **options), imported only when used.
EXTERNAL_TARGETS: dict[str, str] = {
    # Nanotron's checkpoint layout (fused qkv/gate_up, one safetensors per TP shard).
    "nanotron": "training.nanotron.convert:convert_to_nanotron",
}
# Source formats read outside hf_llama3: "module:function" taking the folder, returning (our config, state dict).
EXTERNAL_SOURCES: dict[str, str] = {
    "nanotron": "training.nanotron.convert:read_nanotron_checkpoint",
}


def _resolve(target: str):
    module_name, _, function_name = target.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


# Config fields that exist only in our config (dropped for stock Llama) or only in stock Llama (dropped for ours).
_OUR_ONLY_FIELDS = {"loss_chunk_size"}
_NOT_CARRIED = {"model_type", "auto_map", "architectures", "transformers_version", "_name_or_path", "dtype"}

# HF parameter name -> (Meta name, dimension split across tensor-parallel shards; None = replicated).
_LAYER_KEYS = {
    "self_attn.q_proj.weight": ("attention.wq.weight", 0),
    "self_attn.k_proj.weight": ("attention.wk.weight", 0),
    "self_attn.v_proj.weight": ("attention.wv.weight", 0),
    "self_attn.o_proj.weight": ("attention.wo.weight", 1),
    "mlp.gate_proj.weight": ("feed_forward.w1.weight", 0),
    "mlp.up_proj.weight": ("feed_forward.w3.weight", 0),
    "mlp.down_proj.weight": ("feed_forward.w2.weight", 1),
    "input_layernorm.weight": ("attention_norm.weight", None),
    "post_attention_layernorm.weight": ("ffn_norm.weight", None),
}
# Llama 3 uses a vocab-parallel embedding (split on the vocabulary), unlike Llama 2.
_GLOBAL_KEYS = {
    "model.embed_tokens.weight": ("tok_embeddings.weight", 0),
    "model.norm.weight": ("norm.weight", None),
    "lm_head.weight": ("output.weight", 0),
}


def hf_to_meta_name(name: str) -> tuple[str, int | None]:
    """Meta's name for an HF parameter and the dimension Meta shards it on."""
    if name in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[name]
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if match and match.group(2) in _LAYER_KEYS:
        meta_name, dim = _LAYER_KEYS[match.group(2)]
        return f"layers.{match.group(1)}.{meta_name}", dim
    raise CheckpointError(f"Parameter {name!r} has no counterpart in Meta's Llama 3 layout.")


def meta_to_hf_name(name: str) -> str:
    """HF's name for a Meta parameter."""
    for hf_name, (meta_name, _) in _GLOBAL_KEYS.items():
        if name == meta_name:
            return hf_name
    match = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if match:
        for hf_suffix, (meta_suffix, _) in _LAYER_KEYS.items():
            if match.group(2) == meta_suffix:
                return f"model.layers.{match.group(1)}.{hf_suffix}"
    raise CheckpointError(f"Tensor {name!r} in the Meta checkpoint is not part of a Llama 3 text model.")


def permute_for_hf_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary pairs -> transformers' half-split layout, for ``wq``/``wk`` rows."""
    out_dim, in_dim = weight.shape
    return weight.view(num_heads, out_dim // num_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def permute_for_meta_rotary(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of :func:`permute_for_hf_rotary`."""
    out_dim, in_dim = weight.shape
    return weight.view(num_heads, 2, out_dim // num_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The SwiGLU width Meta's reference derives from ``params.json`` (``llama_models`` FeedForward)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def meta_ffn_params(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """``(multiple_of, ffn_dim_multiplier)`` reproducing ``intermediate_size``; Meta's own values when they fit
    (8B/70B: 1024 and 1.3; 405B: 1024 and 1.2)."""
    for multiple_of in (1024, 256):
        for multiplier in (1.3, 1.2, 1.5, None):
            if meta_ffn_dim(dim, multiple_of, multiplier) == intermediate_size:
                return multiple_of, multiplier
    base = int(2 * (4 * dim) / 3)
    return intermediate_size, None if base <= intermediate_size else intermediate_size / base


def _filtered_fields(config_dict: dict, config_class: type) -> dict:
    names = {f.name for f in dataclasses.fields(config_class)}
    return {k: v for k, v in config_dict.items() if k in names and k not in _NOT_CARRIED}


def llama_config_from_ours(config: Llama3Config) -> LlamaConfig:
    """Stock transformers `LlamaConfig` with the same shape, RoPE and special tokens."""
    values = {k: v for k, v in config.to_dict().items() if k not in _OUR_ONLY_FIELDS}
    return LlamaConfig(**_filtered_fields(values, LlamaConfig))


def ours_config_from_llama(config_dict: dict) -> Llama3Config:
    """Our config from a stock ``llama`` ``config.json`` dict."""
    values = dict(config_dict)
    if "rope_parameters" not in values and ("rope_scaling" in values or "rope_theta" in values):
        scaling = dict(values.pop("rope_scaling", None) or {"rope_type": "default"})
        scaling.setdefault("rope_type", scaling.pop("type", "default"))
        values["rope_parameters"] = {**scaling, "rope_theta": values.pop("rope_theta", 10000.0)}
    return Llama3Config(**_filtered_fields(values, Llama3Config))


def meta_params_from_config(config: Llama3Config) -> dict:
    """``params.json`` of Meta's layout for our config."""
    if config.head_dim * config.num_attention_heads != config.hidden_size:
        raise CheckpointError(
            f"Meta's layout derives head_dim from dim // n_heads, but this model has head_dim={config.head_dim} "
            f"with hidden_size={config.hidden_size} and {config.num_attention_heads} heads: it has no Meta form."
        )
    multiple_of, multiplier = meta_ffn_params(config.hidden_size, config.intermediate_size)
    rope = config.rope_parameters
    params = {
        "dim": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "n_heads": config.num_attention_heads,
        "n_kv_heads": config.num_key_value_heads,
        "vocab_size": config.vocab_size,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": multiplier,
        "norm_eps": config.rms_norm_eps,
        "rope_theta": rope["rope_theta"],
        "use_scaled_rope": rope.get("rope_type") == "llama3",
        # Not read by Meta's ModelArgs (it ignores unknown keys); kept so a round trip restores the config.
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    if rope.get("rope_type") == "llama3":
        scaling = {k: v for k, v in rope.items() if k not in ("rope_type", "rope_theta")}
        default = {k: v for k, v in LLAMA3_ROPE_PARAMETERS.items() if k not in ("rope_type", "rope_theta")}
        if scaling != default:
            # Meta's reference hard-codes the Llama 3.1 scaling; keep ours so a round trip is exact.
            params["rope_scaling"] = scaling
            logger.warning(
                "Meta's reference model hard-codes RoPE factor 8; this model's scaling %s is kept in "
                "params.json['rope_scaling'] for hf-llama3 but ignored by llama_models.",
                scaling,
            )
    return params


def config_from_meta_params(params: dict, tie_word_embeddings: bool) -> Llama3Config:
    """Our config from Meta's ``params.json``."""
    required = ("dim", "n_layers", "n_heads", "vocab_size")
    missing = [k for k in required if k not in params]
    if missing:
        raise CheckpointError(f"params.json lacks {missing}: it is not a Meta Llama 3 text-model params file.")
    rope = {"rope_type": "default", "rope_theta": float(params.get("rope_theta", 500000.0))}
    if params.get("use_scaled_rope"):
        scaling = params.get("rope_scaling") or {
            k: v for k, v in LLAMA3_ROPE_PARAMETERS.items() if k not in ("rope_type", "rope_theta")
        }
        rope = {**rope, "rope_type": "llama3", **scaling}
    return Llama3Config(
        hidden_size=params["dim"],
        num_hidden_layers=params["n_layers"],
        num_attention_heads=params["n_heads"],
        num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        vocab_size=params["vocab_size"],
        intermediate_size=meta_ffn_dim(
            params["dim"], params.get("multiple_of", 256), params.get("ffn_dim_multiplier")
        ),
        rms_norm_eps=params.get("norm_eps", 1e-5),
        rope_parameters=rope,
        tie_word_embeddings=tie_word_embeddings,
        **{k: params[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in params},
    )


def _expected_shapes(model_class: type, config) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = model_class(config)
    shapes = {name: p.shape for name, p in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    return shapes


def _is_classifier(state_dict: dict[str, torch.Tensor]) -> bool:
    return "score.weight" in state_dict


def detect_format(src: str | os.PathLike) -> str:
    """``ours``, ``llama``, ``meta`` or ``nanotron``, from the folder's files."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"Source folder {src} does not exist.")
    if (src / "params.json").exists() and list(src.glob("consolidated.*.pth")):
        return "meta"
    if (src / "model_config.json").exists() and (src / "model").is_dir():
        return "nanotron"
    if (src / "config.json").exists():
        model_type = read_config_dict(src).get("model_type")
        if model_type in ("llama3", "llama"):
            return "ours" if model_type == "llama3" else "llama"
        raise CheckpointError(f"{src}/config.json has model_type {model_type!r}; expected 'llama3' or 'llama'.")
    raise CheckpointError(
        f"{src} is neither a Hugging Face folder (config.json + safetensors), a Meta folder "
        "(params.json + consolidated.NN.pth) nor a Nanotron checkpoint (model_config.json + model/)."
    )


def read_meta_shards(src: Path) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """``params.json`` and the tensor-parallel shards of a Meta folder, checked complete and readable."""
    try:
        params = json.loads((src / "params.json").read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{src}/params.json is not valid JSON ({err}).") from err
    paths = sorted(src.glob("consolidated.*.pth"))
    numbers = [int(p.name.split(".")[1]) for p in paths]
    if numbers != list(range(len(paths))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise CheckpointError(
            f"{src} is missing shard(s) {', '.join(f'consolidated.{n:02d}.pth' for n in missing)}: copy all shards."
        )
    shards = []
    for path in paths:
        try:
            shards.append(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as err:  # torch raises RuntimeError/EOFError/UnpicklingError for damaged archives
            raise CheckpointError(
                f"{path} cannot be read ({err}); it is truncated or damaged: copy it again."
            ) from err
    return params, shards


def merge_meta_shards(params: dict, shards: list[dict[str, torch.Tensor]]) -> tuple[Llama3Config, dict]:
    """Merge Meta's tensor-parallel shards into one HF-named state dict (undoing the rotary permutation)."""
    names = set(shards[0])
    for i, shard in enumerate(shards[1:], start=1):
        if set(shard) != names:
            raise CheckpointError(f"consolidated.{i:02d}.pth holds different tensors than consolidated.00.pth.")
    names.discard("rope.freqs")  # stale RoPE table in some Meta checkpoints; recomputed from params
    state_dict = {}
    for name in sorted(names):
        hf_name = meta_to_hf_name(name)
        _, dim = hf_to_meta_name(hf_name)
        parts = [shard[name] for shard in shards]
        state_dict[hf_name] = parts[0].clone() if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    tied = "lm_head.weight" in state_dict and torch.equal(
        state_dict["lm_head.weight"], state_dict["model.embed_tokens.weight"]
    )
    config = config_from_meta_params(params, tie_word_embeddings=tied)
    if tied:
        state_dict.pop("lm_head.weight")
    for hf_name, heads in (("q_proj", config.num_attention_heads), ("k_proj", config.num_key_value_heads)):
        for layer in range(config.num_hidden_layers):
            key = f"model.layers.{layer}.self_attn.{hf_name}.weight"
            if key in state_dict:
                state_dict[key] = permute_for_hf_rotary(state_dict[key], heads)
    return config, state_dict


def split_meta_shards(config: Llama3Config, state_dict: dict[str, torch.Tensor], num_shards: int) -> list[dict]:
    """Meta-named tensor-parallel shards of an HF-named state dict (applying the rotary permutation)."""
    for what, size in (
        ("num_attention_heads", config.num_attention_heads),
        ("num_key_value_heads", config.num_key_value_heads),
        ("vocab_size", config.vocab_size),
        ("intermediate_size", config.intermediate_size),
    ):
        if size % num_shards != 0:
            raise CheckpointError(
                f"{what}={size} is not divisible by {num_shards} shards: choose a shard count that divides it."
            )
    state_dict = dict(state_dict)
    if "lm_head.weight" not in state_dict:  # tied embeddings: Meta's layout always has an output matrix
        state_dict["lm_head.weight"] = state_dict["model.embed_tokens.weight"]
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(num_shards)]
    for name, tensor in state_dict.items():
        meta_name, dim = hf_to_meta_name(name)
        if name.endswith("q_proj.weight"):
            tensor = permute_for_meta_rotary(tensor, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            tensor = permute_for_meta_rotary(tensor, config.num_key_value_heads)
        pieces = [tensor] * num_shards if dim is None else list(torch.chunk(tensor, num_shards, dim=dim))
        for shard, piece in zip(shards, pieces):
            shard[meta_name] = piece.clone().contiguous()
    return shards


def load_checkpoint(src: str | os.PathLike) -> tuple[str, Llama3Config, dict[str, torch.Tensor]]:
    """Read any supported folder into ``(format, our config, HF-named state dict)``, checked against the config."""
    src = Path(src)
    fmt = detect_format(src)
    if fmt in EXTERNAL_SOURCES:
        config, state_dict = _resolve(EXTERNAL_SOURCES[fmt])(src)
        config.architectures = ["Llama3ForCausalLM"]
    elif fmt == "meta":
        params, shards = read_meta_shards(src)
        config, state_dict = merge_meta_shards(params, shards)
        config.architectures = ["Llama3ForCausalLM"]
    else:
        config_dict = read_config_dict(src)
        config = Llama3Config.from_dict(config_dict) if fmt == "ours" else ours_config_from_llama(config_dict)
        state_dict = read_state_dict(src)
        config.architectures = [
            "Llama3ForSequenceClassification" if _is_classifier(state_dict) else "Llama3ForCausalLM"
        ]
    model_class = Llama3ForSequenceClassification if _is_classifier(state_dict) else Llama3ForCausalLM
    check_state_dict_shapes(state_dict, _expected_shapes(model_class, config), str(src))
    return fmt, config, state_dict


def _save_with_class(model_class: type, config, state_dict: dict, folder: Path, max_shard_size: str | int) -> None:
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state_dict, strict=not config.tie_word_embeddings, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    model.save_pretrained(folder, max_shard_size=max_shard_size)


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str,
    *,
    num_shards: int = 1,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
) -> Path:
    """Convert the checkpoint folder ``src`` (any supported format, detected) to format ``to`` in ``dst``.

    Args:
        src: A folder in our format, stock Llama format or Meta's layout.
        dst: Output folder; written atomically (nothing appears there unless the conversion succeeds).
        to: ``"ours"``, ``"llama"`` or ``"meta"`` (and targets registered in ``EXTERNAL_TARGETS``).
        num_shards: Tensor-parallel shards for Meta's layout (``consolidated.00.pth`` ...).
        max_shard_size: Largest safetensors shard for HF outputs; larger models get an index.
        overwrite: Replace an existing ``dst`` (only a folder hf-llama3 wrote, never one holding ``src``).
    """
    if to in EXTERNAL_TARGETS:
        return _resolve(EXTERNAL_TARGETS[to])(src, dst, overwrite=overwrite)
    if to not in FORMATS:
        raise ValueError(f"Unknown target format {to!r}; choose one of {', '.join((*FORMATS, *EXTERNAL_TARGETS))}.")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    fmt, config, state_dict = load_checkpoint(src)
    classifier = _is_classifier(state_dict)
    if to == "meta" and classifier:
        raise CheckpointError(
            "Meta's layout has no sequence-classification head; convert reward models to ours/llama."
        )
    logger.info("Converting %s (%s format, %d tensors) to %s format in %s", src, fmt, len(state_dict), to, dst)
    with atomic_output_dir(dst, overwrite=overwrite, inputs=[src]) as tmp:
        if to == "meta":
            for index, shard in enumerate(split_meta_shards(config, state_dict, num_shards)):
                torch.save(shard, tmp / f"consolidated.{index:02d}.pth")
            (tmp / "params.json").write_text(json.dumps(meta_params_from_config(config), indent=2))
        else:
            remote_code = to == "ours"
            out_config = config if remote_code else llama_config_from_ours(config)
            causal_class, classifier_class = (
                (Llama3ForCausalLM, Llama3ForSequenceClassification)
                if remote_code
                else (LlamaForCausalLM, LlamaForSequenceClassification)
            )
            model_class = classifier_class if classifier else causal_class
            out_config.architectures = [model_class.__name__]
            _save_with_class(model_class, out_config, state_dict, tmp, max_shard_size)
            write_model_card(
                tmp,
                out_config,
                title="Llama 3 (hf-llama3)" if remote_code else "Llama 3 (stock transformers format)",
                remote_code=remote_code,
                sections={"Provenance": f"Converted from a `{fmt}` checkpoint by `hf-llama3 convert`."},
            )
        # Meta folders carry the tiktoken `tokenizer.model` only; HF folders every tokenizer/generation file.
        copy_companion_files(src, tmp, names=("tokenizer.model",) if to == "meta" else None)
    return Path(dst)


def main(argv: list[str] | None = None) -> int:
    """``hf-llama3 convert --to {ours,llama,meta} SRC DST``."""
    parser = argparse.ArgumentParser(
        prog="hf-llama3 convert",
        description="Convert a Llama 3 checkpoint between our format, stock transformers Llama and Meta's layout. "
        "The source format is detected.",
    )
    parser.add_argument("src", help="source folder (ours, stock llama, or Meta consolidated.NN.pth + params.json)")
    parser.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--to", required=True, choices=[*FORMATS, *EXTERNAL_TARGETS], help="target format")
    parser.add_argument("--num-shards", type=positive_int, default=1, help="tensor-parallel shards for --to meta")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors file for HF outputs")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dst = convert_checkpoint(
        args.src,
        args.dst,
        args.to,
        num_shards=args.num_shards,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.to} checkpoint to {dst}")
    return 0
