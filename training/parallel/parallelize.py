"""Apply the parallelisms to a ``Llama3ForCausalLM`` from outside, in torchtitan's order:
pipeline split -> TP -> CP -> activation checkpointing -> compile -> FSDP."""

from __future__ import annotations

import logging

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from hf_llama3 import Llama3ForCausalLM

from .context_parallel import register_parallel_attention
from .dims import ParallelDims, submesh
from .fsdp import FSDPConfig, apply_fsdp
from .pipeline_parallel import split_into_stages
from .stage import Llama3Stage
from .tensor_parallel import apply_tensor_parallel

logger = logging.getLogger(__name__)

CHECKPOINT_MODES = ("full", "selective")
_aten = torch.ops.aten
# Selective checkpointing keeps the outputs of the ops that cost the FLOPs (matmuls, attention) and of the
# tensor-parallel reduce-scatter (a recomputation would repeat the communication); it recomputes the rest (norms,
# RoPE, SiLU, elementwise products, casts): cheap to redo, and most of a layer's activation bytes.
SAVED_OPS = {
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.higher_order.flex_attention,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
}


def _selective_policy(_ctx, op, *_args, **_kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint_context():
    """The forward/recompute context pair of per-op (selective) activation checkpointing (``SAVED_OPS`` kept)."""
    return create_selective_checkpoint_contexts(_selective_policy)


def checkpoint_mode(activation_checkpointing: bool | str) -> str | None:
    """``None`` (off), ``full`` (recompute each decoder layer) or ``selective`` (recompute all but ``SAVED_OPS``)."""
    if activation_checkpointing in (False, None):
        return None
    mode = "full" if activation_checkpointing is True else activation_checkpointing
    if mode not in CHECKPOINT_MODES:
        raise ValueError(
            f"activation_checkpointing must be true/false or one of {CHECKPOINT_MODES}, got {activation_checkpointing!r}."
        )
    return mode


def fsdp_mesh(mesh: DeviceMesh, dims: ParallelDims) -> DeviceMesh:
    """The FSDP mesh: ``dp_shard x cp`` flattened, with ``dp_replicate`` as the outer (HSDP) dim when > 1."""
    if dims.dp_replicate > 1:
        return submesh(mesh, "dp_replicate", "dp_shard_cp")
    return submesh(mesh, "dp_shard_cp")


def uses_fsdp(dims: ParallelDims, fsdp: FSDPConfig | None) -> bool:
    """FSDP wraps the model when parameters are sharded, and also on a single rank for mixed precision."""
    return dims.fsdp_enabled or (fsdp is not None and fsdp.param_dtype != "float32")


def parallelize_llama(
    model: Llama3ForCausalLM,
    dims: ParallelDims,
    mesh: DeviceMesh,
    fsdp: FSDPConfig | None = None,
    activation_checkpointing: bool | str = False,
    compile_layers: bool = False,
    loss_parallel: bool = True,
) -> list[tuple[int, Llama3Stage]]:
    """Cut ``model`` into this rank's pipeline stages and shard them; returns ``(stage_index, stage)`` pairs.

    ``loss_parallel`` leaves the logits vocab-sharded under TP (compute the loss in ``loss_parallel()``); the
    pipeline schedules pass the sharded logits of the last stage to the loss function as they are.
    """
    dims.validate_model(model.config)
    model.config._attn_implementation = register_parallel_attention()
    model.config.use_cache = False
    mode = checkpoint_mode(activation_checkpointing)
    if mode is not None:
        # The model's GradientCheckpointingLayer checkpoints each decoder layer's forward (FSDP hooks stay outside).
        kwargs = {"use_reentrant": False}
        if mode == "selective":
            kwargs["context_fn"] = selective_checkpoint_context
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    stages = split_into_stages(model, dims, submesh(mesh, "pp").get_local_rank())
    for _, stage in stages:
        if dims.tp > 1:
            apply_tensor_parallel(stage, submesh(mesh, "tp"), loss_parallel=loss_parallel)
        if dims.cp > 1:
            stage.cp_group = submesh(mesh, "cp").get_group()
        if compile_layers:
            for layer in stage.model.layers.values():
                layer.compile()
        if uses_fsdp(dims, fsdp):
            apply_fsdp(stage, fsdp_mesh(mesh, dims), fsdp or FSDPConfig())
    logger.info("Parallelized %s into stages %s", dims, [index for index, _ in stages])
    return stages
