"""Small Llama 3 models for the FP8 tests.

A randomly initialised model with the default 0.02 init predicts a near-uniform next token (perplexity about the
vocabulary size), which makes KL and top-1 agreement say nothing. Training a model takes too long on the 2-core
CI machine, so the model here is random with a larger init (0.05: the layers, FFN included, move the residual
stream, whose std grows from 0.05 to 0.23 over 5 layers) and an output layer scaled by 16, which gives peaked
next-token distributions (mean entropy about 1 nat) that depend on every layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import tiny_config

VOCAB = 512


def peaked_tiny_model(num_layers: int = 4, seed: int = 0, init: float = 0.05, head_scale: float = 16.0, **overrides):
    """A ``tiny``-shaped Llama 3 (vocab 512) with peaked next-token distributions, in bf16, eval mode."""
    from hf_llama3 import Llama3ForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(num_hidden_layers=num_layers, initializer_range=init, **overrides)
    model = Llama3ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model.to(torch.bfloat16).eval()


def random_prompts(n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` prompts of ``length`` random non-special token ids."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, length), generator=g).tolist()


def save_bf16(model, folder: Path) -> Path:
    """``save_pretrained`` a bf16 model; returns the folder."""
    model.to(torch.bfloat16).save_pretrained(folder)
    return folder
