"""The process group of a training run: the launcher's (``torchrun``/``accelerate``) or a one-process group.

Hangs: every collective waits at most the process-group timeout, then the group aborts and the rank fails with an
error naming the collective. On NCCL, the flight recorder keeps the last collectives of every rank and dumps them
when a timeout fires, which tells which rank stopped where. Turn it on in the launch environment:

- ``TORCH_NCCL_TRACE_BUFFER_SIZE=2000``: collectives kept per rank (0, the default, turns the recorder off);
- ``TORCH_NCCL_DUMP_ON_TIMEOUT=1``: write each rank's record when a timeout fires, to
  ``TORCH_NCCL_DEBUG_INFO_TEMP_FILE`` (default ``/tmp/nccl_trace_rank_<rank>``);

then read the dumps of all ranks with ``torchfrtrace <folder>`` (torch's analyser), which names the mismatched or
missing collective.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init_distributed(device: str, timeout_s: float | None = None) -> bool:
    """Join the launcher's process group, or make a one-process group; returns whether it was launched.

    Under ``torchrun``/``accelerate`` the group comes from the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``); ``device`` picks the backend (``cuda``: nccl on ``LOCAL_RANK``'s GPU, ``cpu``: gloo).
    ``timeout_s``: how long a collective may wait before the group aborts (``None``: torch's default, 10 minutes
    for NCCL and 30 for gloo). A hang is found sooner with less; a first step that compiles, or a checkpoint
    written to slow storage while other ranks wait, may need more.
    """
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"The process-group timeout must be > 0 seconds, got {timeout_s}.")
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s is not None else None
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if launched:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return launched
