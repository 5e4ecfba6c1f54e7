"""Deferred initialisation: build the model on the meta device, shard it, then materialise and initialise the shards.

Building a 70B or 405B ``Llama3ForCausalLM`` eagerly needs its whole fp32 weights on every rank before any
sharding (263 GiB and 1.5 TiB). Instead the engine builds it under ``torch.device("meta")`` (shapes only, no
storage), applies the parallelisms (pipeline cut, TP, FSDP), allocates each rank's shards with ``to_empty`` and
only then fills them.

Why the fill is written here: transformers initialises a model in ``post_init``, once, over whole tensors of the
whole model with one RNG stream, so the value of a weight depends on everything drawn before it; and ``to_empty``
leaves uninitialised memory (the RoPE ``inv_freq`` buffers, which are not saved, included). Here every module is
initialised by the model's own ``_init_weights`` (the same distributions: normal(0, ``initializer_range``) for
projections and embeddings, ones for RMSNorm, a zero padding row, RoPE tables recomputed from the config) on full,
unsharded tensors of that one module, with the RNG seeded from ``(seed, module name)``; each rank then keeps its
own slice. The weights are therefore a function of the seed and the parameter names only: the same under every
layout, and the same as :func:`init_weights_by_name` applied to an eager single-process model. They are not the
values of ``torch.manual_seed(seed); Llama3ForCausalLM(config)`` (whose stream also depends on construction
order); they follow the same distribution, parameter by parameter. A rank holds at most one module's full
tensors at a time (the largest is the ``vocab x hidden`` embedding), never the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from hf_llama3 import Llama3Config, Llama3ForCausalLM

InitFn = Callable[[nn.Module], None]
# nn.Embedding's padding row is zeroed at init; tensor parallelism clears ``padding_idx`` (the local row index
# would be wrong), so the eager value is kept here for the initialisation.
_PADDING_ATTR = "_init_padding_idx"


def build_meta_model(config: Llama3Config) -> Llama3ForCausalLM:
    """``Llama3ForCausalLM(config)`` with every parameter and buffer on the meta device (no storage, no init)."""
    with torch.device("meta"):
        model = Llama3ForCausalLM(config)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            setattr(module, _PADDING_ATTR, module.padding_idx)
    return model


def module_seed(seed: int, name: str) -> int:
    """The RNG seed of module ``name``: a hash of the run seed and the name (independent of the layout)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _local_slice(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` that ``like`` (a DTensor shard or a plain tensor) holds on this rank."""
    if isinstance(like, DTensor):
        # Every rank computed the same full tensor: slice locally, no communication (src_data_rank=None).
        return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()
    return full


@torch.no_grad()
def init_weights_by_name(
    root: nn.Module, init_fn: InitFn, seed: int, device: torch.device | None = None, parameters: bool = True
) -> None:
    """Initialise every module of ``root`` with ``init_fn`` (the model's ``_init_weights``), layout-independently.

    Each module's direct parameters are swapped for full, unsharded tensors on ``device``, ``init_fn`` runs on the
    module with the RNG seeded by :func:`module_seed` of its name, and the rank's slice is copied back into the
    (possibly sharded) parameter. A parameter shared by two modules (tied embeddings) is initialised once, by the
    first. ``parameters=False`` recomputes only the buffers (RoPE tables), for weights loaded afterwards.
    """
    seen: set[int] = set()
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    for name, module in root.named_modules():
        own = {key: p for key, p in module._parameters.items() if p is not None}
        if any(id(p) in seen for p in own.values()) or (not parameters and own):
            continue
        seen.update(id(p) for p in own.values())
        full = {key: torch.empty(p.shape, dtype=p.dtype, device=device or _local(p).device) for key, p in own.items()}
        module._parameters.update({key: nn.Parameter(t, requires_grad=False) for key, t in full.items()})
        padding = module.padding_idx if isinstance(module, nn.Embedding) else None
        if isinstance(module, nn.Embedding):
            module.padding_idx = getattr(module, _PADDING_ATTR, padding)
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(module_seed(seed, name))
                init_fn(module)
        finally:
            module._parameters.update(own)
            if isinstance(module, nn.Embedding):
                module.padding_idx = padding
        for key, p in own.items():
            _local(p).copy_(_local_slice(full[key], p))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def materialize(
    modules: Iterable[nn.Module], init_fn: InitFn, seed: int, device: torch.device, parameters: bool = True
) -> None:
    """Allocate the (sharded) meta ``modules`` on ``device`` and initialise them with :func:`init_weights_by_name`."""
    for module in modules:
        module.to_empty(device=device)
        init_weights_by_name(module, init_fn, seed, device=device, parameters=parameters)
