"""Vision-encoder presets and the cross-attention schedule of the compositional vision adapter [paper 7.2].

- Image encoder [7.2]: ViT-H/14 (630M parameters, 32 layers of width 1280, 16 heads); its output concatenates
  the features of the 4th, 8th, 16th, 24th and 31st layers (Meta's ``return_intermediate`` 3, 7, 15, 23, 30:
  the inputs of those blocks) with the final ones, and
  8 extra gated self-attention layers ("global" layers) are added on top: 40 blocks, 16x16 patches x 7680 dims.
- Tiles [7.4]: images are resized to fit within at most 4 tiles (336x336 each in the paper's initial pre-training,
  higher per-tile resolution in annealing) with aspect-ratio embeddings; Meta's Llama 3.2 Vision release uses
  560x560 tiles (the ``vit-h-14`` preset), CPU presets use tiny tiles.
- Cross-attention layers [7.2]: inserted after every fourth self-attention layer of the frozen language model,
  with grouped-query attention and tanh gates initialised at zero. Meta's release places them right before text
  layers 3, 7, ..., 31 of a 32-layer model (``llama_models`` ``_init_fusion_schedule``), which transformers'
  ``mllama`` flattens to layer indices 3, 8, 13, ..., 38 of a 40-layer stack.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.mllama.configuration_mllama import MllamaConfig, MllamaTextConfig, MllamaVisionConfig
from transformers.models.mllama.image_processing_pil_mllama import get_all_supported_aspect_ratios

# [7.2] a cross-attention layer after every fourth self-attention layer.
CROSS_ATTENTION_EVERY = 4
# [7.4] at most four tiles per image.
MAX_NUM_TILES = 4
# CLIP normalisation, as in Meta's `VariableSizeImageTransform` (llama_models.llama3.multimodal.image_transform).
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
# Meta's text model adds 8 learnable embeddings after the frozen vocabulary (`learnable_embedding`); the first
# is the `<|image|>` token, so its id is the text vocabulary size (128256 for Llama 3).
NUM_NEW_EMBEDDINGS = 8

# Vision encoder sizes. Meta's reference fixes mlp_ratio 4 (intermediate = 4 x width) and GELU.
VISION_PRESETS: dict[str, dict[str, Any]] = {
    # [7.2] ViT-H/14 as released in Llama 3.2 Vision (560 px tiles).
    "vit-h-14": dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_global_layers=8,
        attention_heads=16,
        intermediate_size=5120,
        image_size=560,
        patch_size=14,
        intermediate_layers_indices=[3, 7, 15, 23, 30],
    ),
    # CPU sizes: same structure (local layers, gated global layers, intermediate features, tiles).
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_global_layers=2,
        attention_heads=2,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
        intermediate_layers_indices=[0, 2],
    ),
    "small": dict(
        hidden_size=128,
        num_hidden_layers=8,
        num_global_layers=2,
        attention_heads=4,
        intermediate_size=512,
        image_size=112,
        patch_size=14,
        intermediate_layers_indices=[2, 6],
    ),
}


def fusion_schedule(
    num_text_layers: int, every: int = CROSS_ATTENTION_EVERY, source: str = "the text model"
) -> list[int]:
    """Text-layer indices that get a cross-attention layer right before them [7.2].

    Same positions as Meta's ``_init_fusion_schedule`` (counted back from the last layer); the paper's spacing
    must divide the layer count, otherwise the layers would not be evenly spread.
    """
    if every < 1:
        raise ValueError(f"cross-attention spacing must be >= 1, got {every}.")
    if num_text_layers < every or num_text_layers % every:
        raise ValueError(
            f"{source} has {num_text_layers} layers, which a cross-attention layer every {every} layers cannot "
            f"use evenly: pass --cross-attention-every with a divisor of {num_text_layers} "
            f"(e.g. {max(d for d in range(1, num_text_layers + 1) if num_text_layers % d == 0 and d <= every)})."
        )
    return list(range(every - 1, num_text_layers, every))


def mllama_layer_indices(num_text_layers: int, fusion: list[int]) -> tuple[list[int], list[int]]:
    """``(cross_attention_layers, text_layer_positions)`` in the flattened ``mllama`` stack.

    ``cross_attention_layers`` goes into ``MllamaTextConfig``; ``text_layer_positions[i]`` is where text layer
    ``i`` of the frozen model lands.
    """
    cross, text = [], []
    for i in range(num_text_layers):
        if i in fusion:
            cross.append(i + len(cross))
        text.append(i + len(cross))
    return cross, text


def vision_config_from_preset(preset: str, max_num_tiles: int = MAX_NUM_TILES, **overrides: Any) -> MllamaVisionConfig:
    """A ``MllamaVisionConfig`` from a preset name; ``vision_output_dim`` follows the concatenated features."""
    if preset not in VISION_PRESETS:
        raise ValueError(f"Unknown vision preset {preset!r}; choose one of {', '.join(VISION_PRESETS)}.")
    values = {**VISION_PRESETS[preset], **overrides}
    if max_num_tiles < 1:
        raise ValueError(f"max_num_tiles must be >= 1, got {max_num_tiles}.")
    values["max_num_tiles"] = max_num_tiles
    values["supported_aspect_ratios"] = [list(r) for r in get_all_supported_aspect_ratios(max_num_tiles)]
    values["vision_output_dim"] = values["hidden_size"] * (len(values["intermediate_layers_indices"]) + 1)
    if values["image_size"] % values["patch_size"]:
        raise ValueError(f"image_size {values['image_size']} is not a multiple of patch_size {values['patch_size']}.")
    return MllamaVisionConfig(**values)


def mllama_config_from_text(
    text_config: Any,
    vision_config: MllamaVisionConfig,
    every: int = CROSS_ATTENTION_EVERY,
    source: str = "the text model",
) -> MllamaConfig:
    """The full ``MllamaConfig`` for a Llama 3 text config (ours or stock ``LlamaConfig``) plus a vision config."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    if head_dim * text_config.num_attention_heads != text_config.hidden_size:
        raise ValueError(
            f"{source} has head_dim {head_dim} x {text_config.num_attention_heads} heads != hidden_size "
            f"{text_config.hidden_size}; mllama derives head_dim from hidden_size / heads, so it cannot hold it."
        )
    fusion = fusion_schedule(text_config.num_hidden_layers, every, source)
    cross, _ = mllama_layer_indices(text_config.num_hidden_layers, fusion)
    text = MllamaTextConfig(
        vocab_size=text_config.vocab_size,
        hidden_size=text_config.hidden_size,
        hidden_act=text_config.hidden_act,
        num_hidden_layers=text_config.num_hidden_layers + len(cross),
        num_attention_heads=text_config.num_attention_heads,
        num_key_value_heads=text_config.num_key_value_heads or text_config.num_attention_heads,
        intermediate_size=text_config.intermediate_size,
        rope_parameters=dict(text_config.rope_parameters),
        rms_norm_eps=text_config.rms_norm_eps,
        max_position_embeddings=text_config.max_position_embeddings,
        tie_word_embeddings=False,  # the embedding has 8 extra rows; a tied head is copied (see build.py)
        cross_attention_layers=cross,
        bos_token_id=text_config.bos_token_id,
        eos_token_id=text_config.eos_token_id,
        pad_token_id=text_config.pad_token_id,
    )
    config = MllamaConfig(
        vision_config=vision_config.to_dict(), text_config=text.to_dict(), image_token_index=text_config.vocab_size
    )
    config.architectures = ["MllamaForConditionalGeneration"]
    return config


# --- tile-position embeddings: Meta's [tiles, tiles, ...] grid <-> mllama's per-aspect-ratio rows -------------


def precompute_tile_grid(grid: torch.Tensor, aspect_ratios: list[list[int]]) -> torch.Tensor:
    """Meta's ``[T, T, n, W]`` grid -> mllama's ``[len(ratios) + 1, T * n * W]`` rows (row 0: padding)."""
    tiles, _, tokens, width = grid.shape
    out = torch.zeros(len(aspect_ratios) + 1, tiles, tokens, width, dtype=grid.dtype)
    for i, (h, w) in enumerate(aspect_ratios):
        out[i + 1, : h * w] = grid[:h, :w].reshape(h * w, tokens, width)
    return out.reshape(len(aspect_ratios) + 1, -1)


def tile_rows_to_grid(rows: torch.Tensor, aspect_ratios: list[list[int]], tiles: int, width: int, name: str):
    """Inverse of :func:`precompute_tile_grid`; raises when two aspect ratios disagree on a shared tile."""
    tokens = rows.shape[1] // (tiles * width)
    rows = rows.reshape(len(aspect_ratios) + 1, tiles, tokens, width)
    grid = torch.zeros(tiles, tiles, tokens, width, dtype=rows.dtype)
    seen = torch.zeros(tiles, tiles, dtype=torch.bool)
    for i, (h, w) in enumerate(aspect_ratios):
        block = rows[i + 1, : h * w].reshape(h, w, tokens, width)
        for r in range(h):
            for c in range(w):
                if seen[r, c] and not torch.allclose(grid[r, c], block[r, c], rtol=0, atol=1e-6):
                    raise ValueError(
                        f"{name}: aspect ratio {h}x{w} has its own embedding for tile ({r}, {c}), but Meta's layout "
                        "shares one per tile position; this mllama folder (trained with untied per-ratio "
                        "embeddings) has no exact Meta form."
                    )
                grid[r, c], seen[r, c] = block[r, c], True
    return grid
