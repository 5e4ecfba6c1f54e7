"""The process group of a training run: the launcher's (``torchrun``/``accelerate``) or a one-process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device: str) -> bool:
    """Join the launcher's process group, or make a one-process group; returns whether it was launched.

    Under ``torchrun``/``accelerate`` the group comes from the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``); ``device`` picks the backend (``cuda``: nccl on ``LOCAL_RANK``'s GPU, ``cpu``: gloo).
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if launched:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return launched
