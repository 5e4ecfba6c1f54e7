"""Shared fixtures for the post-training tests: tiny Llama 3 models with the real 128256-token vocabulary."""

from __future__ import annotations

import pytest
import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM, Llama3ForSequenceClassification


def tiny_causal_lm(seed: int = 0) -> Llama3ForCausalLM:
    """A freshly initialised tiny causal LM (preset "tiny"), deterministic in ``seed``."""
    torch.manual_seed(seed)
    return Llama3ForCausalLM(Llama3Config.from_preset("tiny")).eval()


def tiny_reward_model(seed: int = 0) -> Llama3ForSequenceClassification:
    """A freshly initialised tiny reward model (one score per sequence)."""
    torch.manual_seed(seed)
    return Llama3ForSequenceClassification(Llama3Config.from_preset("tiny", num_labels=1)).eval()


@pytest.fixture
def causal_lm() -> Llama3ForCausalLM:
    return tiny_causal_lm()
