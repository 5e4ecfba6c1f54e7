"""Fixtures of the pre-training recipe tests: a one-process gloo group and tiny packed shards."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture
def single_process_group():
    """A one-process gloo group (what ``hf-llama3 pretrain`` makes without torchrun), destroyed afterwards."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()
