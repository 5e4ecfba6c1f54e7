"""Run a function on N local CPU processes joined by a gloo process group (tests, benchmarks, notebooks).

The processes are forked from the caller, so they share its already-imported torch and transformers and a
16-process world starts in about a second; each joins the group through a file store in a temporary folder.
Production runs use ``torchrun`` (see ``training.pretrain.cli``) instead.
"""

from __future__ import annotations

import datetime
import gc
import os
import tempfile
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, store_path: str, fn: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=180),
    )
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_local(world_size: int, fn: Callable, *args) -> None:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` forked processes; re-raises a child's exception.

    The caller must not hold a process group itself. Garbage is collected before the fork: a child that
    garbage-collects a process group left over from an earlier run in the parent (e.g. an in-process
    ``hf-llama3 pretrain``) blocks forever in its destructor, waiting for worker threads that fork did not copy.
    Threads are limited to one per process.
    """
    gc.collect()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.start_processes(_worker, args=(world_size, store, fn, args), nprocs=world_size, start_method="fork")
