"""Exact checkpoint conversion between Hugging Face Llama 3 folders and Nanotron's on-disk layout.

Nanotron saves one safetensors file per parameter (per tensor-parallel shard) under ``<ckpt>/model/``, in a
folder path spelled by the parameter name, e.g. ``model/model/decoder/3/pp_block/attn/qkv_proj/
model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors`` with the tensor under ``"data"`` and metadata
``version``, ``unsharded_shape`` and ``local_global_slices_pairs`` (which slice of the unsharded tensor each
part of the shard holds). Its Llama fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``; a fused
weight is sliced per tensor-parallel rank chunk by chunk (rank r holds ``[q_r; k_r; v_r]``), which the slice
pairs record. ``model_config.json`` and ``checkpoint_metadata.json`` sit beside ``model/``.

Limits, said plainly: Nanotron 0.4 (PyPI) rotates interleaved RoPE pairs with a fixed base of 10000 and has no
field for Llama 3's base 500000 or the Llama 3.1 frequency scaling; Nanotron's main branch has ``rope_theta``
and ``rope_interleaved`` but its Llama path ignores ``rope_scaling`` (so contexts beyond 8K differ), and it has
context parallelism only on its Qwen2 path. Our full config is stored beside the checkpoint
(``hf_llama3_config.json``) so a round trip through Nanotron's layout restores it exactly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.checkpoint_io import CheckpointError, atomic_output_dir, copy_companion_files
from hf_llama3.cli_types import positive_int
from hf_llama3.convert import _save_with_class, load_checkpoint, permute_for_hf_rotary, permute_for_meta_rotary

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = "1.2"  # nanotron.constants.CHECKPOINT_VERSION of the 0.4 release
OUR_CONFIG_FILE = "hf_llama3_config.json"
_SHARD_FILE = re.compile(
    r"model_(?P<suffix>\w+?)(_pp-rank-\d+-of-\d+_tp-rank-(?P<tp>\d+)-of-(?P<tps>\d+))?\.safetensors"
)
_EMBED = "model.token_position_embeddings.pp_block.token_embedding.weight"
_FINAL_NORM = "model.final_layer_norm.pp_block.weight"
_LM_HEAD = "model.lm_head.pp_block.weight"


def _slice_str(s: slice) -> str:
    return ",".join("None" if x is None else str(x) for x in (s.start, s.stop, s.step))


def _pairs_str(pairs: list[tuple[tuple[slice, ...], tuple[slice, ...]]]) -> str:
    """Nanotron's ``SlicesPair.tuple_to_str``: ``local#global`` per pair, dims joined by ``|``, pairs by ``;``."""
    return ";".join(
        "|".join(map(_slice_str, local)) + "#" + "|".join(map(_slice_str, global_)) for local, global_ in pairs
    )


def _parse_slice(text: str) -> slice:
    return slice(*(None if x == "None" else int(x) for x in text.split(",")))


def _parse_pairs(text: str) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    pairs = []
    for pair in text.split(";"):
        local, global_ = pair.split("#")
        pairs.append((tuple(map(_parse_slice, local.split("|"))), tuple(map(_parse_slice, global_.split("|")))))
    return pairs


def shard_with_slices(
    tensor: torch.Tensor, chunks: Sequence[int], split_dim: int, tp: int, rank: int
) -> tuple[torch.Tensor, list[tuple[tuple[slice, ...], tuple[slice, ...]]]]:
    """Rank ``rank``'s shard of ``tensor`` split on ``split_dim`` chunk by chunk (Nanotron's ``contiguous_chunks``),
    and its (local, global) slice pairs."""
    pieces, pairs, global_start, local_start = [], [], 0, 0
    for chunk in chunks:
        if chunk % tp:
            raise CheckpointError(
                f"A fused chunk of {chunk} rows does not split over tp={tp}: choose a tp dividing it."
            )
        length = chunk // tp
        begin = global_start + rank * length
        pieces.append(tensor.narrow(split_dim, begin, length))
        full = [slice(None)] * tensor.dim()
        local, global_ = list(full), list(full)
        local[split_dim] = slice(local_start, local_start + length)
        global_[split_dim] = slice(begin, begin + length)
        pairs.append((tuple(local), tuple(global_)))
        global_start += chunk
        local_start += length
    return torch.cat(pieces, dim=split_dim).contiguous(), pairs


def _nanotron_tensors(config: Llama3Config, state_dict: dict[str, torch.Tensor], rope_interleaved: bool):
    """``(nanotron name, tensor, chunks or None for replicated, split dim, HF layer index or None)`` per parameter."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    embed = state_dict["model.embed_tokens.weight"]
    yield _EMBED, embed, (embed.shape[0],), 0, None
    for i in range(config.num_hidden_layers):
        prefix, block = f"model.layers.{i}.", f"model.decoder.{i}.pp_block."
        q, k, v = (state_dict[f"{prefix}self_attn.{n}_proj.weight"] for n in "qkv")
        if rope_interleaved:
            q, k = permute_for_meta_rotary(q, heads), permute_for_meta_rotary(k, kv_heads)
        yield f"{block}attn.qkv_proj.weight", torch.cat([q, k, v]), (q.shape[0], k.shape[0], v.shape[0]), 0, i
        o = state_dict[f"{prefix}self_attn.o_proj.weight"]
        yield f"{block}attn.o_proj.weight", o, (o.shape[1],), 1, i
        gate, up = state_dict[f"{prefix}mlp.gate_proj.weight"], state_dict[f"{prefix}mlp.up_proj.weight"]
        yield f"{block}mlp.gate_up_proj.weight", torch.cat([gate, up]), (gate.shape[0], up.shape[0]), 0, i
        down = state_dict[f"{prefix}mlp.down_proj.weight"]
        yield f"{block}mlp.down_proj.weight", down, (down.shape[1],), 1, i
        for norm in ("input_layernorm", "post_attention_layernorm"):
            yield f"{block}{norm}.weight", state_dict[f"{prefix}{norm}.weight"], None, 0, i
    yield _FINAL_NORM, state_dict["model.norm.weight"], None, 0, None
    if not config.tie_word_embeddings:
        head = state_dict["lm_head.weight"]
        yield _LM_HEAD, head, (head.shape[0],), 0, None


def nanotron_model_config(config: Llama3Config, schema: str = "main", rope_interleaved: bool = False) -> dict:
    """Nanotron's ``LlamaConfig`` fields for our config (``schema``: ``"0.4"`` PyPI release or ``"main"``)."""
    if schema not in ("0.4", "main"):
        raise ValueError(f"schema must be '0.4' or 'main', got {schema!r}.")
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    out = dict(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos,
        hidden_act=config.hidden_act,
        hidden_size=config.hidden_size,
        initializer_range=config.initializer_range,
        intermediate_size=config.intermediate_size,
        is_llama_config=True,
        max_position_embeddings=config.max_position_embeddings,
        num_attention_heads=config.num_attention_heads,
        num_hidden_layers=config.num_hidden_layers,
        num_key_value_heads=config.num_key_value_heads,
        pad_token_id=config.pad_token_id,
        pretraining_tp=1,
        rms_norm_eps=config.rms_norm_eps,
        rope_scaling=None,
        tie_word_embeddings=config.tie_word_embeddings,
        use_cache=True,
        vocab_size=config.vocab_size,
    )
    rope = config.rope_parameters
    if schema == "main":
        out.update(rope_theta=float(rope["rope_theta"]), rope_interleaved=rope_interleaved, attention_bias=False)
        if rope.get("rope_type") == "llama3":
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def rope_warnings(config: Llama3Config, schema: str) -> list[str]:
    """What Nanotron will compute differently from our model for this config."""
    rope = config.rope_parameters
    messages = []
    if schema == "0.4" and rope["rope_theta"] != 10000:
        messages.append(
            f"Nanotron 0.4 fixes the RoPE base at 10000; this model uses {rope['rope_theta']:g}. Training it there "
            "changes the positional encoding (use Nanotron's main branch, which has rope_theta)."
        )
    if rope.get("rope_type") == "llama3":
        messages.append(
            "Nanotron's Llama ignores Llama 3.1 rope scaling (rope_type 'llama3'): positions beyond "
            f"{rope['original_max_position_embeddings']} tokens are encoded differently than in hf_llama3."
        )
    return messages


def write_nanotron_checkpoint(
    config: Llama3Config,
    state_dict: dict[str, torch.Tensor],
    folder: str | os.PathLike,
    tp: int = 1,
    pp: int = 1,
    rope_interleaved: bool = False,
    schema: str = "main",
) -> None:
    """Write ``state_dict`` (HF names) in Nanotron's layout into the existing, empty ``folder``.

    ``pp`` only names the files (Nanotron's loader finds shards by glob, whatever pipeline rank wrote them).
    """
    if tp < 1 or pp < 1:
        raise ValueError(f"tp and pp must be >= 1, got tp={tp}, pp={pp}.")
    folder = Path(folder)
    layers_per_rank = -(-config.num_hidden_layers // pp)
    for name, tensor, chunks, split_dim, layer in _nanotron_tensors(config, state_dict, rope_interleaved):
        *parents, leaf = name.split(".")
        directory = folder.joinpath("model", *parents)
        directory.mkdir(parents=True, exist_ok=True)
        if chunks is None:
            save_file({"data": tensor.contiguous()}, directory / f"model_{leaf}.safetensors")
            continue
        pp_rank = 0 if name == _EMBED else pp - 1 if layer is None else layer // layers_per_rank
        for rank in range(tp):
            shard, pairs = shard_with_slices(tensor, chunks, split_dim, tp, rank)
            metadata = {
                "version": CHECKPOINT_VERSION,
                "local_global_slices_pairs": _pairs_str(pairs),
                "unsharded_shape": str(tuple(tensor.shape)),
            }
            filename = f"model_{leaf}_pp-rank-{pp_rank}-of-{pp}_tp-rank-{rank}-of-{tp}.safetensors"
            save_file({"data": shard}, directory / filename, metadata=metadata)
    (folder / "model_config.json").write_text(
        json.dumps(nanotron_model_config(config, schema, rope_interleaved), indent=2)
    )
    checkpoint_metadata = {
        "dp": 1,
        "metas": {"consumed_train_samples": 0, "last_train_step": 0},
        "tp": tp,
        "version": CHECKPOINT_VERSION,
    }
    (folder / "checkpoint_metadata.json").write_text(json.dumps(checkpoint_metadata, indent=2, sort_keys=True))
    (folder / OUR_CONFIG_FILE).write_text(config.to_json_string())


def _read_unsharded(folder: Path) -> dict[str, torch.Tensor]:
    """Every parameter of a Nanotron checkpoint, merged from its shards through their slice metadata."""
    root = folder / "model"
    if not root.is_dir():
        raise CheckpointError(f"{folder} has no model/ folder: not a Nanotron checkpoint.")
    groups: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.safetensors")):
        match = _SHARD_FILE.fullmatch(path.name)
        if match is None:
            raise CheckpointError(f"Unexpected file {path} in a Nanotron checkpoint.")
        name = ".".join([*path.parent.relative_to(root).parts, match["suffix"]])
        groups.setdefault(name, []).append(path)
    tensors = {}
    for name, paths in groups.items():
        full = None
        for path in paths:
            with safe_open(path, framework="pt") as f:
                data, metadata = f.get_tensor("data"), f.metadata() or {}
            if "unsharded_shape" not in metadata:
                full = data
                continue
            if full is None:
                shape = [int(x) for x in metadata["unsharded_shape"].strip("()").split(",") if x.strip()]
                full = torch.empty(shape, dtype=data.dtype)
            for local, global_ in _parse_pairs(metadata["local_global_slices_pairs"]):
                full[global_] = data[local]
        tensors[name] = full
    return tensors


def read_nanotron_checkpoint(folder: str | os.PathLike) -> tuple[Llama3Config, dict[str, torch.Tensor]]:
    """Our config and HF-named state dict from a Nanotron checkpoint folder (written by us or by Nanotron)."""
    folder = Path(folder)
    model_config_file = folder / "model_config.json"
    if not model_config_file.is_file():
        raise CheckpointError(f"{folder} has no model_config.json: not a Nanotron checkpoint.")
    nanotron_config = json.loads(model_config_file.read_text())
    # Nanotron 0.4 has no `rope_interleaved` field and always rotates interleaved pairs.
    interleaved = nanotron_config.get("rope_interleaved", True)
    if (folder / OUR_CONFIG_FILE).is_file():
        config = Llama3Config.from_dict(json.loads((folder / OUR_CONFIG_FILE).read_text()))
    else:
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        keys += ("num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings")
        keys += ("bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "hidden_act")
        config = Llama3Config(
            **{k: nanotron_config[k] for k in keys if k in nanotron_config},
            rope_parameters={"rope_type": "default", "rope_theta": float(nanotron_config.get("rope_theta", 10000.0))},
        )
    tensors = _read_unsharded(folder)
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    state_dict = {"model.embed_tokens.weight": tensors.pop(_EMBED), "model.norm.weight": tensors.pop(_FINAL_NORM)}
    if not config.tie_word_embeddings:
        state_dict["lm_head.weight"] = tensors.pop(_LM_HEAD)
    for i in range(config.num_hidden_layers):
        prefix, block = f"model.layers.{i}.", f"model.decoder.{i}.pp_block."
        q, k, v = tensors.pop(f"{block}attn.qkv_proj.weight").split([heads * head_dim, *[kv_heads * head_dim] * 2])
        if interleaved:
            q, k = permute_for_hf_rotary(q, heads), permute_for_hf_rotary(k, kv_heads)
        state_dict.update({f"{prefix}self_attn.q_proj.weight": q, f"{prefix}self_attn.k_proj.weight": k})
        state_dict[f"{prefix}self_attn.v_proj.weight"] = v
        state_dict[f"{prefix}self_attn.o_proj.weight"] = tensors.pop(f"{block}attn.o_proj.weight")
        gate, up = tensors.pop(f"{block}mlp.gate_up_proj.weight").chunk(2)
        state_dict.update({f"{prefix}mlp.gate_proj.weight": gate, f"{prefix}mlp.up_proj.weight": up})
        state_dict[f"{prefix}mlp.down_proj.weight"] = tensors.pop(f"{block}mlp.down_proj.weight")
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state_dict[f"{prefix}{norm}.weight"] = tensors.pop(f"{block}{norm}.weight")
    if tensors:
        raise CheckpointError(f"Nanotron checkpoint {folder} has parameters a Llama 3 model lacks: {sorted(tensors)}.")
    return config, {name: tensor.contiguous() for name, tensor in state_dict.items()}


def convert_to_nanotron(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    tp: int = 1,
    pp: int = 1,
    rope_interleaved: bool = False,
    schema: str = "main",
) -> Path:
    """Convert an HF folder (ours or stock Llama) to a Nanotron checkpoint folder, atomically.

    ``rope_interleaved=True`` permutes q/k rows for Nanotron 0.4 (or main with ``rope_interleaved: true``).
    """
    _, config, state_dict = load_checkpoint(src)
    for message in rope_warnings(config, schema):
        logger.warning(message)
    with atomic_output_dir(dst, overwrite=overwrite, inputs=[src]) as tmp:
        write_nanotron_checkpoint(
            config, state_dict, tmp, tp=tp, pp=pp, rope_interleaved=rope_interleaved, schema=schema
        )
        copy_companion_files(src, tmp)  # tokenizer files ride along; Nanotron's loader only reads model/
    return Path(dst)


def convert_from_nanotron(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert a Nanotron checkpoint folder to our HF format (``save_pretrained`` layout), atomically."""
    config, state_dict = read_nanotron_checkpoint(src)
    config.architectures = ["Llama3ForCausalLM"]
    with atomic_output_dir(dst, overwrite=overwrite, inputs=[src]) as tmp:
        _save_with_class(Llama3ForCausalLM, config, state_dict, tmp, "5GB")
        copy_companion_files(src, tmp)
    return Path(dst)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.nanotron.convert {to,from} SRC DST``: the Nanotron side of ``hf-llama3 convert``."""
    parser = argparse.ArgumentParser(prog="python -m training.nanotron.convert", description=__doc__.split("\n")[0])
    parser.add_argument("direction", choices=["to", "from"], help="to: HF folder -> Nanotron; from: Nanotron -> HF")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel shards to write (to)")
    parser.add_argument("--pp", type=positive_int, default=1, help="pipeline ranks named in the file names (to)")
    parser.add_argument("--schema", choices=["0.4", "main"], default="main", help="Nanotron version targeted (to)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.direction == "to":
        dst = convert_to_nanotron(
            args.src,
            args.dst,
            overwrite=args.overwrite,
            tp=args.tp,
            pp=args.pp,
            rope_interleaved=args.schema == "0.4",
            schema=args.schema,
        )
    else:
        dst = convert_from_nanotron(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
