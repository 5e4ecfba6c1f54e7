"""Fully sharded data parallelism with FSDP2 ``fully_shard`` over ``dp_shard x cp`` (HSDP with ``dp_replicate``).

Each decoder layer is its own FSDP unit, then the stage root takes the rest (embedding, final norm, head).
The paper keeps parameters unsharded after the forward pass to save the all-gather in backward and reduces
gradients in fp32 [3.3.2, "Numerical stability"]: ``reshard_after_forward=False`` and ``reduce_dtype=float32``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from .stage import Llama3Stage

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class FSDPConfig:
    """FSDP2 options.

    Args:
        param_dtype: Compute dtype of the unsharded parameters (``bfloat16`` on GPUs, ``float32`` on CPU).
        reduce_dtype: Gradient reduction dtype; the paper reduces in fp32 [3.3.2].
        reshard_after_forward: Free the gathered parameters after forward (``False``: keep them, the paper's choice,
            costs memory, saves one all-gather per layer in backward).
    """

    param_dtype: str = "float32"
    reduce_dtype: str = "float32"
    reshard_after_forward: bool = False

    def __post_init__(self) -> None:
        for name in ("param_dtype", "reduce_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"FSDPConfig.{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}.")


def apply_fsdp(stage: Llama3Stage, mesh: DeviceMesh, config: FSDPConfig) -> None:
    """Shard ``stage`` in place over ``mesh`` (1-D: FSDP; 2-D ``(replicate, shard)``: HSDP)."""
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype])
    kwargs = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    for layer in stage.model.layers.values():
        fully_shard(layer, **kwargs)
    # The root's parameters are used last in backward; keeping them gathered avoids a useless re-gather.
    fully_shard(stage, **{**kwargs, "reshard_after_forward": False})
