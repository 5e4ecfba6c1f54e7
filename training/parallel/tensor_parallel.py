"""Tensor parallelism with sequence parallelism through DTensor plans [3.3.2].

Inside each decoder layer the projections follow the model's own ``base_model_tp_plan`` (Megatron column/row
split: q/k/v and gate/up column-wise, o and down row-wise). Sequence parallelism keeps the residual stream and
the RMSNorms sharded along the sequence between the two blocks (all-gather before attention and MLP,
reduce-scatter after). The embedding is vocab-parallel (row-wise), and the output projection column-wise with
its logits left sharded over the vocabulary, so the cross-entropy runs under ``loss_parallel`` and the full
``[tokens, vocab]`` logits are never gathered.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def _layer_plan(base_model_tp_plan: dict[str, str]) -> dict[str, object]:
    """The per-layer DTensor plan: the config's column/row styles plus the sequence-parallel glue."""
    plan: dict[str, object] = {
        "input_layernorm": SequenceParallel(),
        # transformers' decoder layer calls its attention with keyword arguments, its MLP positionally.
        "self_attn": PrepareModuleInput(
            input_kwarg_layouts={"hidden_states": Shard(1)}, desired_input_kwarg_layouts={"hidden_states": Replicate()}
        ),
        "post_attention_layernorm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
    }
    for pattern, style in base_model_tp_plan.items():
        prefix, _, name = pattern.partition("layers.*.")
        if prefix or not name:
            raise ValueError(f"Unsupported tensor-parallel plan entry {pattern!r}: expected 'layers.*.<module>'.")
        if style == "colwise":
            plan[name] = ColwiseParallel()
        elif style == "rowwise":
            plan[name] = RowwiseParallel(output_layouts=Shard(1))
        else:
            raise ValueError(f"Unsupported tensor-parallel style {style!r} for {pattern!r}: use colwise or rowwise.")
    return plan


def apply_tensor_parallel(stage: nn.Module, tp_mesh: DeviceMesh, loss_parallel: bool = True) -> None:
    """Shard a ``Llama3Stage`` over ``tp_mesh`` in place.

    With ``loss_parallel`` the stage returns vocab-sharded logits (a DTensor); compute the cross-entropy inside
    ``torch.distributed.tensor.parallel.loss_parallel()``. Otherwise the logits are gathered to full tensors.
    """
    config = stage.config
    base = stage.model
    if base.embed_tokens is not None:
        # The padding row's zero gradient would land on local row `padding_idx` of every vocab shard.
        base.embed_tokens.padding_idx = None
        parallelize_module(
            base.embed_tokens, tp_mesh, RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
        )
    layer_plan = _layer_plan(config.base_model_tp_plan)
    for layer in base.layers.values():
        parallelize_module(layer, tp_mesh, layer_plan)
    if stage.lm_head is not None:
        parallelize_module(base.norm, tp_mesh, SequenceParallel())
        parallelize_module(
            stage.lm_head,
            tp_mesh,
            ColwiseParallel(
                input_layouts=Shard(1),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        )
