"""Meta's ``llama_models.llama3.multimodal`` reference, run on CPU at a tiny size (ground truth for parity tests).

Meta's ``CrossAttentionTransformerVision`` hard-codes the ViT-H/14 sizes (width 1280, 32 layers, 8 global
layers); the tiny reference below builds Meta's own ``VisionEncoder``, ``CrossAttentionTransformerText`` and
``CrossAttentionTransformer`` classes with the tiny sizes of ``params.json['vision_encoder']`` instead (the same
attributes Meta's ``__init__`` sets), inside a one-process gloo group with model-parallel size 1 (fairscale).

``llama_models.llama3.multimodal.model`` imports the image transform, which needs torchvision. When torchvision is
missing, the model parity tests load the model module with that one import replaced by a stand-in that raises if
used; the preprocessing parity test needs the real transform and is skipped without torchvision.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None
_TRANSFORM = "llama_models.llama3.multimodal.image_transform"


def multimodal_model_module():
    """``llama_models.llama3.multimodal.model`` (see the module docstring about torchvision)."""
    if not HAVE_TORCHVISION and _TRANSFORM not in sys.modules:
        stand_in = types.ModuleType(_TRANSFORM)

        class VariableSizeImageTransform:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("Meta's VariableSizeImageTransform needs torchvision, which is not installed.")

        stand_in.VariableSizeImageTransform = VariableSizeImageTransform
        sys.modules[_TRANSFORM] = stand_in
    return importlib.import_module("llama_models.llama3.multimodal.model")


@contextlib.contextmanager
def model_parallel_group(store: Path):
    """A one-process gloo group with fairscale model parallel size 1 (what Meta's layers need on CPU)."""
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        fs_init.initialize_model_parallel(1)
        yield
    finally:
        fs_init.destroy_model_parallel()
        dist.destroy_process_group()


def tiny_meta_model(params: dict, max_seq_len: int = 64, max_batch_size: int = 4):
    """Meta's ``CrossAttentionTransformer`` with the encoder sizes of ``params['vision_encoder']``."""
    from fairscale.nn.model_parallel.layers import ColumnParallelLinear
    from llama_models.llama3.args import ModelArgs

    mm = multimodal_model_module()
    args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=max_batch_size, **params)
    enc = params["vision_encoder"]
    vision = mm.CrossAttentionTransformerVision.__new__(mm.CrossAttentionTransformerVision)
    torch.nn.Module.__init__(vision)
    vision.vision_input_dim = (len(enc["return_intermediate"]) + 1) * enc["width"]
    vision.image_res = args.vision_chunk_size
    vision.max_num_chunks = args.vision_max_num_chunks
    vision.patch_size = enc["patch_size"]
    vision.vision_encoder = mm.VisionEncoder(
        max_num_tiles=args.vision_max_num_chunks,
        image_size=args.vision_chunk_size,
        patch_size=enc["patch_size"],
        width=enc["width"],
        layers=enc["layers"],
        heads=enc["heads"],
        mlp_ratio=enc["mlp_ratio"],
        n_global_layers=enc["n_global_layers"],
        global_model=True,
        return_intermediate=enc["return_intermediate"],
    )
    vision.vision_projection = ColumnParallelLinear(
        vision.vision_input_dim, args.dim, bias=True, init_method=lambda x: x
    )
    model = mm.CrossAttentionTransformer.__new__(mm.CrossAttentionTransformer)
    torch.nn.Module.__init__(model)
    model.params = args
    model.model_dim = args.dim
    model.vision_model = vision
    model.text_model = mm.CrossAttentionTransformerText(args)
    model.image_res = args.vision_chunk_size
    model.max_num_chunks = args.vision_max_num_chunks
    return model.float().eval()


@torch.no_grad()
def meta_logits(model, tokens: list[list[int]], tiles: list[torch.Tensor], aspect_ratios: list[tuple[int, int]]):
    """Logits of Meta's model for one image per row: ``tiles[i]`` ``[n_tiles, 3, H, W]`` with ratio (rows, cols).

    Meta's own ``compute_vision_tokens_masks`` runs with its image transform answering from the given tiles (the
    model is compared here; the transform has its own test), then Meta's ``forward`` on all positions.
    """
    from llama_models.llama3.chat_format import create_vision_mask

    lookup = {id(t): (t, ar) for t, ar in zip(tiles, aspect_ratios)}
    model.image_transform = lambda image: lookup[id(image)]
    masks = [create_vision_mask(row, 128256) for row in tokens]
    model.setup_cache(len(tokens), torch.device("cpu"), torch.float32)
    xattn_caches, xattn_masks, full_rows = model.compute_vision_tokens_masks(
        batch_images=[[t] for t in tiles], batch_masks=masks, total_len=len(tokens[0]), device=torch.device("cpu")
    )
    token_tensor = torch.tensor(tokens)
    positions = torch.arange(token_tensor.shape[1])
    return model(positions, token_tensor, xattn_masks, full_rows, xattn_caches)
