"""Shared fixtures: tiny Llama 3 configs and a stock transformers Llama with the same weights."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(**overrides):
    """The `tiny` preset with a small vocabulary (fast) unless overridden; special ids inside the vocabulary."""
    from hf_llama3 import Llama3Config

    values = dict(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    values.update(overrides)
    return Llama3Config.from_preset("tiny", **values)


def stock_llama_like(model):
    """transformers' `LlamaForCausalLM` with the same config values and a copy of ``model``'s weights."""
    from transformers import LlamaForCausalLM

    from hf_llama3.convert import llama_config_from_ours

    llama_config = llama_config_from_ours(model.config)
    llama_config._attn_implementation = model.config._attn_implementation
    reference = LlamaForCausalLM(llama_config)
    reference.load_state_dict(model.state_dict(), strict=True)
    return reference.train(model.training)


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
