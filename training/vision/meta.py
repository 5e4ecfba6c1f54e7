"""``hf-llama3 vision convert``: Meta's reference layout <-> a stock ``mllama`` folder.

Meta's layout is the state dict of ``llama_models.llama3.multimodal.model.CrossAttentionTransformer``
(``consolidated.00.pth`` + ``params.json``), the same role ``hf-llama3 convert --to meta`` plays for text models.
Differences the conversion handles:

- text self-attention ``wq``/``wk`` rows use Meta's interleaved rotary pairs (permuted as for text models);
  cross-attention has no rotary embedding, so its projections and q/k norms copy unchanged;
- Meta keeps the frozen vocabulary (``tok_embeddings``) and the 8 new rows (``learnable_embedding``) apart;
  ``mllama`` concatenates them into one ``embed_tokens``;
- Meta's cross-attention layers sit in their own list and run right before the text layers of its fusion
  schedule; ``mllama`` interleaves them into one flat layer list (:func:`~.config.mllama_layer_indices`);
- Meta's tile-position and gated positional embeddings are ``[tiles, tiles, ...]`` grids indexed by the tile's
  (row, column); ``mllama`` stores one precomputed row per supported aspect ratio. A grid converts to rows exactly;
  rows convert back only when every aspect ratio agrees on a shared tile (true for folders from ``vision init``
  and for Meta conversions; training in ``mllama`` layout may untie them, which the converter reports);
- the patch embedding is Meta's unfold + linear, ``mllama``'s conv weight reshaped;
- Meta's ``CrossAttentionTransformerVision`` hard-codes ViT-H/14; ``params.json`` carries the encoder shape in
  an extra ``vision_encoder`` entry (ignored by Meta's ``ModelArgs``) so tiny models round-trip.

Only single-shard Meta folders (``consolidated.00.pth``) are read and written here.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration

from hf_llama3 import Llama3Config
from hf_llama3.checkpoint_io import (
    CheckpointError,
    atomic_output_dir,
    check_safetensors_file,
    check_state_dict_shapes,
    read_config_dict,
    weight_files,
)
from hf_llama3.convert import (
    config_from_meta_params,
    meta_params_from_config,
    permute_for_hf_rotary,
    permute_for_meta_rotary,
)
from hf_llama3.tokenization_llama3 import default_tokenizer_model_path, load_tokenizer

from .build import processor_for
from .config import (
    NUM_NEW_EMBEDDINGS,
    mllama_config_from_text,
    mllama_layer_indices,
    precompute_tile_grid,
    tile_rows_to_grid,
    vision_config_from_preset,
)
from .tokenizer import vision_tokenizer

T = "model.language_model."
V = "model.vision_model."
MT = "text_model."
MV = "vision_model.vision_encoder."

# Text self-attention / feed-forward / norm suffixes: mllama -> Meta (as in hf_llama3.convert).
_TEXT_LAYER = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_CROSS_LAYER = {
    "cross_attn.q_proj.weight": "attention.wq.weight",
    "cross_attn.k_proj.weight": "attention.wk.weight",
    "cross_attn.v_proj.weight": "attention.wv.weight",
    "cross_attn.o_proj.weight": "attention.wo.weight",
    "cross_attn.q_norm.weight": "attention.q_norm.weight",
    "cross_attn.k_norm.weight": "attention.k_norm.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "cross_attn_attn_gate": "gate_attn",
    "cross_attn_mlp_gate": "gate_ffwd",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
}
_VISION_LAYER = {
    "self_attn.q_proj.weight": "attn.wq.weight",
    "self_attn.k_proj.weight": "attn.wk.weight",
    "self_attn.v_proj.weight": "attn.wv.weight",
    "self_attn.o_proj.weight": "attn.wo.weight",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "input_layernorm.weight": "ln_1.weight",
    "input_layernorm.bias": "ln_1.bias",
    "post_attention_layernorm.weight": "ln_2.weight",
    "post_attention_layernorm.bias": "ln_2.bias",
    "gate_attn": "gate_attn",
    "gate_ffn": "gate_ffn",
}
_VISION_GLOBAL = {
    "class_embedding": "class_embedding",
    "gated_positional_embedding.embedding": "positional_embedding",
    "gated_positional_embedding.gate": "gated_positional_embedding_gate",
    "pre_tile_positional_embedding.gate": "pre_tile_pos_embed.gate",
    "post_tile_positional_embedding.gate": "post_tile_pos_embed.gate",
    "layernorm_pre.weight": "ln_pre.weight",
    "layernorm_pre.bias": "ln_pre.bias",
    "layernorm_post.weight": "ln_post.weight",
    "layernorm_post.bias": "ln_post.bias",
}
# mllama precomputed per-aspect-ratio embedding -> Meta [tiles, tiles, tokens, width] grid.
_TILE_GRIDS = {
    "gated_positional_embedding.tile_embedding.weight": "gated_positional_embedding",
    "pre_tile_positional_embedding.embedding.weight": "pre_tile_pos_embed.embedding",
    "post_tile_positional_embedding.embedding.weight": "post_tile_pos_embed.embedding",
}


@functools.cache
def intermediate_index_shift() -> int:
    """How far ``mllama``'s ``intermediate_layers_indices`` sit from Meta's ``return_intermediate`` indices.

    Meta's ``ImageTransformer`` keeps the *input* of block ``i`` for each returned index ``i``. transformers'
    ``MllamaVisionEncoder`` has recorded either the input of each layer (0, as Meta; huggingface/transformers#39785)
    or, in the version locked here (5.24), the *output* of each layer (1: mllama index ``i`` is Meta index
    ``i + 1``). Probed on a one-layer encoder so conversions stay exact under either behaviour.
    """
    from transformers.models.mllama.modeling_mllama import MllamaVisionEncoder

    probe = MllamaVisionEncoder(vision_config_from_preset("tiny", 1), num_layers=1)
    x = torch.randn(1, 8, probe.config.hidden_size)
    with torch.no_grad():
        first = probe(x).hidden_states[0]
    return 0 if torch.equal(first, x) else 1


def meta_fusion_schedule(num_text_layers: int, num_cross_layers: int) -> list[int]:
    """Meta's ``CrossAttentionTransformerText._init_fusion_schedule`` (text layers preceded by cross-attention)."""
    k = math.ceil(num_text_layers / num_cross_layers)
    return list(range(num_text_layers))[::-1][::k][:num_cross_layers][::-1]


def mllama_to_meta(config: MllamaConfig, state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(params.json dict, Meta state dict)`` of an ``mllama`` model."""
    text, vision = config.text_config, config.vision_config
    cross = list(text.cross_attention_layers)
    num_text = text.num_hidden_layers - len(cross)
    text_positions = [i for i in range(text.num_hidden_layers) if i not in cross]
    fusion = [text_positions.index(c + 1) for c in cross] if cross and cross[-1] + 1 < text.num_hidden_layers else None
    if fusion is None or fusion != meta_fusion_schedule(num_text, len(cross)):
        raise CheckpointError(
            f"cross_attention_layers {cross} do not follow Meta's fusion schedule for {num_text} text layers; "
            "Meta's reference cannot place them."
        )
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    out: dict[str, torch.Tensor] = {}
    tiles, width = vision.max_num_tiles, vision.hidden_size
    for name, tensor in state_dict.items():
        if name.startswith(T + "layers."):
            index, suffix = re.fullmatch(r"layers\.(\d+)\.(.+)", name[len(T) :]).groups()
            index = int(index)
            if index in cross:
                out[f"{MT}cross_attention_layers.{cross.index(index)}.{_CROSS_LAYER[suffix]}"] = tensor
            else:
                i = text_positions.index(index)
                if suffix == "self_attn.q_proj.weight":
                    tensor = permute_for_meta_rotary(tensor, heads)
                elif suffix == "self_attn.k_proj.weight":
                    tensor = permute_for_meta_rotary(tensor, kv_heads)
                out[f"{MT}layers.{i}.{_TEXT_LAYER[suffix]}"] = tensor
        elif name == T + "embed_tokens.weight":
            out[f"{MT}tok_embeddings.weight"] = tensor[: text.vocab_size]
            out[f"{MT}learnable_embedding.weight"] = tensor[text.vocab_size :]
        elif name == T + "norm.weight":
            out[f"{MT}norm.weight"] = tensor
        elif name == "lm_head.weight":
            out[f"{MT}output.weight"] = tensor
        elif name.startswith("model.multi_modal_projector."):
            out["vision_model.vision_projection." + name.rsplit(".", 1)[1]] = tensor
        elif name == V + "patch_embedding.weight":
            out[MV + "conv1._linear.weight"] = tensor.reshape(tensor.shape[0], -1)
        elif name[len(V) :] in _VISION_GLOBAL:
            out[MV + _VISION_GLOBAL[name[len(V) :]]] = tensor
        elif name[len(V) :] in _TILE_GRIDS:
            grid = tile_rows_to_grid(tensor, vision.supported_aspect_ratios, tiles, width, name)
            out[MV + _TILE_GRIDS[name[len(V) :]]] = grid
        else:
            match = re.fullmatch(rf"{re.escape(V)}(transformer|global_transformer)\.layers\.(\d+)\.(.+)", name)
            if not match or match.group(3) not in _VISION_LAYER:
                raise CheckpointError(f"Tensor {name!r} has no counterpart in Meta's multimodal layout.")
            out[f"{MV}{match.group(1)}.resblocks.{match.group(2)}.{_VISION_LAYER[match.group(3)]}"] = tensor
    params = meta_params_from_config(_text_config_as_ours(config))
    params.update(
        vision_chunk_size=vision.image_size,
        vision_max_num_chunks=vision.max_num_tiles,
        vision_num_cross_attention_layers=len(cross),
        vision_encoder={
            "width": vision.hidden_size,
            "layers": vision.num_hidden_layers,
            "heads": vision.attention_heads,
            "n_global_layers": vision.num_global_layers,
            "patch_size": vision.patch_size,
            "return_intermediate": [i + intermediate_index_shift() for i in vision.intermediate_layers_indices],
            "mlp_ratio": vision.intermediate_size / vision.hidden_size,
        },
    )
    return params, {k: v.contiguous().clone() for k, v in out.items()}


def _text_config_as_ours(config: MllamaConfig) -> Llama3Config:
    text = config.text_config
    eos = text.eos_token_id
    return Llama3Config(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers - len(text.cross_attention_layers),
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters=dict(text.rope_parameters),
        max_position_embeddings=text.max_position_embeddings,
        bos_token_id=text.bos_token_id,
        eos_token_id=eos,
        pad_token_id=text.pad_token_id,
    )


def meta_to_mllama(params: dict, meta: dict[str, torch.Tensor]) -> tuple[MllamaConfig, dict[str, torch.Tensor]]:
    """``(MllamaConfig, mllama state dict)`` of Meta's params and state dict."""
    for key in ("vision_chunk_size", "vision_num_cross_attention_layers"):
        if key not in params:
            raise CheckpointError(f"params.json lacks {key!r}: it is not a Meta Llama 3.2 Vision params file.")
    text_config = config_from_meta_params(params, tie_word_embeddings=False)
    num_text, num_cross = text_config.num_hidden_layers, params["vision_num_cross_attention_layers"]
    encoder = params.get("vision_encoder") or {  # Meta's hard-coded ViT-H/14
        "width": 1280,
        "layers": 32,
        "heads": 16,
        "n_global_layers": 8,
        "patch_size": 14,
        "return_intermediate": [3, 7, 15, 23, 30],
        "mlp_ratio": 4.0,
    }
    vision_config = vision_config_from_preset(
        "vit-h-14",
        params.get("vision_max_num_chunks", 4),
        hidden_size=encoder["width"],
        num_hidden_layers=encoder["layers"],
        attention_heads=encoder["heads"],
        num_global_layers=encoder["n_global_layers"],
        patch_size=encoder["patch_size"],
        intermediate_layers_indices=_mllama_intermediate(encoder["return_intermediate"]),
        intermediate_size=int(encoder["mlp_ratio"] * encoder["width"]),
        image_size=params["vision_chunk_size"],
    )
    fusion = meta_fusion_schedule(num_text, num_cross)
    every = num_text // num_cross if num_text % num_cross == 0 else None
    if every is None or fusion != list(range(every - 1, num_text, every)):
        raise CheckpointError(
            f"{num_text} text layers with {num_cross} cross-attention layers is not an even spacing; "
            "hf-llama3 only converts evenly spaced schedules."
        )
    config = mllama_config_from_text(text_config, vision_config, every=every, source="params.json")
    cross, positions = mllama_layer_indices(num_text, fusion)
    text_inv = {m: h for h, m in _TEXT_LAYER.items()}
    cross_inv = {m: h for h, m in _CROSS_LAYER.items()}
    vision_layer_inv = {m: h for h, m in _VISION_LAYER.items()}
    vision_global_inv = {m: h for h, m in _VISION_GLOBAL.items()}
    grids_inv = {m: h for h, m in _TILE_GRIDS.items()}
    out: dict[str, torch.Tensor] = {}
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    ratios = config.vision_config.supported_aspect_ratios
    for name, tensor in meta.items():
        if name == f"{MT}tok_embeddings.weight":
            out[T + "embed_tokens.weight"] = torch.cat([tensor, meta[f"{MT}learnable_embedding.weight"]])
        elif name == f"{MT}learnable_embedding.weight":
            if tensor.shape[0] != NUM_NEW_EMBEDDINGS:
                raise CheckpointError(f"{name} has {tensor.shape[0]} rows; mllama expects {NUM_NEW_EMBEDDINGS}.")
        elif name == f"{MT}norm.weight":
            out[T + "norm.weight"] = tensor
        elif name == f"{MT}output.weight":
            out["lm_head.weight"] = tensor
        elif name.startswith("vision_model.vision_projection."):
            out["model.multi_modal_projector." + name.rsplit(".", 1)[1]] = tensor
        elif name == MV + "conv1._linear.weight":
            p = config.vision_config.patch_size
            out[V + "patch_embedding.weight"] = tensor.reshape(tensor.shape[0], 3, p, p)
        elif name.startswith(MV) and name[len(MV) :] in vision_global_inv:
            out[V + vision_global_inv[name[len(MV) :]]] = tensor
        elif name.startswith(MV) and name[len(MV) :] in grids_inv:
            out[V + grids_inv[name[len(MV) :]]] = precompute_tile_grid(tensor, ratios)
        elif match := re.fullmatch(rf"{re.escape(MT)}layers\.(\d+)\.(.+)", name):
            i, suffix = int(match.group(1)), match.group(2)
            if suffix not in text_inv:
                raise CheckpointError(f"Tensor {name!r} is not part of Meta's multimodal text model.")
            if suffix == "attention.wq.weight":
                tensor = permute_for_hf_rotary(tensor, heads)
            elif suffix == "attention.wk.weight":
                tensor = permute_for_hf_rotary(tensor, kv_heads)
            out[f"{T}layers.{positions[i]}.{text_inv[suffix]}"] = tensor
        elif match := re.fullmatch(rf"{re.escape(MT)}cross_attention_layers\.(\d+)\.(.+)", name):
            j, suffix = int(match.group(1)), match.group(2)
            if suffix not in cross_inv:
                raise CheckpointError(f"Tensor {name!r} is not part of a Meta cross-attention layer.")
            out[f"{T}layers.{cross[j]}.{cross_inv[suffix]}"] = tensor
        elif match := re.fullmatch(rf"{re.escape(MV)}(transformer|global_transformer)\.resblocks\.(\d+)\.(.+)", name):
            if match.group(3) not in vision_layer_inv:
                raise CheckpointError(f"Tensor {name!r} is not part of a Meta image transformer block.")
            out[f"{V}{match.group(1)}.layers.{match.group(2)}.{vision_layer_inv[match.group(3)]}"] = tensor
        else:
            raise CheckpointError(f"Tensor {name!r} in the Meta checkpoint has no counterpart in mllama.")
    return config, {k: v.contiguous().clone() for k, v in out.items()}


def _mllama_intermediate(meta_indices: list[int]) -> list[int]:
    shift = intermediate_index_shift()
    if any(i - shift < 0 for i in meta_indices):
        raise CheckpointError(
            f"return_intermediate {meta_indices} includes the encoder input (index 0), which this transformers "
            "version's mllama cannot return."
        )
    return [i - shift for i in meta_indices]


def _expected_shapes(config: MllamaConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        model = MllamaForConditionalGeneration(config)
    return {name: p.shape for name, p in model.state_dict().items()}


def load_mllama_checked(src: str | os.PathLike) -> MllamaForConditionalGeneration:
    """``MllamaForConditionalGeneration`` of a folder, refusing one with missing or mismatched tensors.

    (transformers maps the saved names, e.g. ``language_model.model.*``, to the module's; a missing tensor would
    otherwise be initialised at random with only a warning.)
    """
    for path in weight_files(src):
        check_safetensors_file(path)
    model, info = MllamaForConditionalGeneration.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        raise CheckpointError(
            f"{src} does not match its config.json: {problems}. The weights and config come from different models."
        )
    return model.eval()


def detect_vision_format(src: Path) -> str:
    if (src / "params.json").is_file() and (src / "consolidated.00.pth").is_file():
        return "meta"
    if (src / "config.json").is_file():
        model_type = read_config_dict(src).get("model_type")
        if model_type != "mllama":
            raise CheckpointError(f"{src}/config.json has model_type {model_type!r}; expected 'mllama'.")
        return "mllama"
    raise CheckpointError(f"{src} is neither an mllama folder (config.json) nor a Meta folder (params.json + .pth).")


def convert_vision_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, overwrite: bool = False
) -> Path:
    """Convert a vision checkpoint between ``mllama`` and ``meta`` (source detected), written atomically."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"Source folder {src} does not exist.")
    if to not in ("meta", "mllama"):
        raise ValueError(f"Unknown target format {to!r}; choose 'meta' or 'mllama'.")
    fmt = detect_vision_format(src)
    if fmt == to:
        raise ValueError(f"{src} is already in {to} format.")
    with atomic_output_dir(dst, overwrite=overwrite) as tmp:
        if to == "meta":
            model = load_mllama_checked(src)
            params, meta = mllama_to_meta(model.config, model.state_dict())
            torch.save(meta, tmp / "consolidated.00.pth")
            (tmp / "params.json").write_text(json.dumps(params, indent=2))
            # Meta folders carry the tiktoken file (the llama-models one: the ranks every Llama 3 tokenizer shares).
            shutil.copy2(default_tokenizer_model_path(), tmp / "tokenizer.model")
        else:
            if list(src.glob("consolidated.*.pth")) != [src / "consolidated.00.pth"]:
                raise CheckpointError(
                    f"{src} has several consolidated.NN.pth shards; only single-shard folders convert."
                )
            try:
                params = json.loads((src / "params.json").read_text())
                meta = torch.load(src / "consolidated.00.pth", map_location="cpu", weights_only=True)
            except (json.JSONDecodeError, RuntimeError, EOFError) as err:
                raise CheckpointError(f"{src} cannot be read ({err}); copy it again.") from err
            config, state_dict = meta_to_mllama(params, meta)
            check_state_dict_shapes(state_dict, _expected_shapes(config), str(src))
            with torch.device("meta"):
                model = MllamaForConditionalGeneration(config)
            model.load_state_dict(state_dict, strict=True, assign=True)
            model.save_pretrained(tmp)
            text_tokenizer = load_tokenizer(src if (src / "tokenizer.model").is_file() else None)
            processor_for(config, vision_tokenizer(text_tokenizer)).save_pretrained(tmp)
    return Path(dst)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="mllama folder or Meta folder (consolidated.00.pth + params.json)")
    parser.add_argument("dst", help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--to", required=True, choices=["meta", "mllama"], help="target layout")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run_convert(args: argparse.Namespace) -> int:
    dst = convert_vision_checkpoint(args.src, args.dst, args.to, overwrite=args.overwrite)
    print(f"wrote {args.to} vision checkpoint to {dst}")
    return 0
