"""Prompts sharded across data-parallel ranks (``torchrun`` / ``accelerate launch``), results merged in order.

Rank ``r`` of ``W`` takes prompts ``r, r + W, r + 2W, ...`` (strided, so long and short prompts spread evenly);
rank 0 gathers every rank's results and puts them back in prompt order. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from training.parallel.distributed import init_distributed


@contextlib.contextmanager
def data_parallel(device: torch.device) -> Iterator[tuple[int, int]]:
    """``(rank, world_size)`` of this process: the launcher's group, one already joined, or ``(0, 1)``.

    A group this function joined (from ``RANK``/``WORLD_SIZE`` set by the launcher) is left on exit.
    """
    if dist.is_available() and dist.is_initialized():
        yield dist.get_rank(), dist.get_world_size()
        return
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        yield 0, 1
        return
    init_distributed(device.type)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def shard(num_items: int, rank: int, world_size: int) -> list[int]:
    """The item indices rank ``rank`` of ``world_size`` handles (strided)."""
    return list(range(rank, num_items, world_size))


def gather_in_order(indices: Sequence[int], results: Sequence[Any], world_size: int) -> list[Any] | None:
    """Every rank's ``results`` (one per index of its shard) in item order on rank 0; ``None`` on other ranks."""
    if world_size == 1:
        return list(results)
    gathered: list[Any] | None = [None] * world_size if dist.get_rank() == 0 else None
    dist.gather_object((list(indices), list(results)), gathered, dst=0)
    if gathered is None:
        return None
    merged = {index: result for part_indices, part in gathered for index, result in zip(part_indices, part)}
    return [merged[index] for index in sorted(merged)]
