"""``sharding: fsdp2`` is refused where accelerate would silently fall back to DDP (CPU) and with LoRA.

(SFT and DPO sharded by FSDP2 over 2 CPU ranks are compared with 1 rank in test_distributed.py.)"""

from __future__ import annotations

import pytest

from tests.post_training.conftest import trainer_args
from training.sft import Llama3SFTConfig


def test_fsdp2_setting_is_refused_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="sharding: fsdp2 needs accelerators"):
        Llama3SFTConfig(**trainer_args(tmp_path, sharding="fsdp2"))
    with pytest.raises(ValueError, match="sharding: fsdp2 with use_peft"):
        Llama3SFTConfig(**trainer_args(tmp_path, sharding="fsdp2", use_peft=True))
