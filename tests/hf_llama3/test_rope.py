"""Llama 3.1 RoPE frequencies against transformers' and Meta's implementations (neither written here)."""

from __future__ import annotations

import pytest
import torch
from llama_models.llama3.model import apply_scaling, precompute_freqs_cis
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from hf_llama3 import Llama3Config
from hf_llama3.modeling_llama3 import Llama3RotaryEmbedding, llama3_inv_freq


@pytest.mark.parametrize("preset", ["llama3-8b", "llama3-405b", "tiny"])
def test_inv_freq_matches_meta_apply_scaling(preset):
    config = Llama3Config.from_preset(preset)
    dim = config.head_dim
    base = 1.0 / (500000.0 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    torch.testing.assert_close(llama3_inv_freq(config), apply_scaling(base), rtol=1e-6, atol=0)


def test_inv_freq_matches_transformers_llama3_rope():
    config = Llama3Config.from_preset("llama3-8b")
    expected, attention_factor = ROPE_INIT_FUNCTIONS["llama3"](config)
    assert attention_factor == 1.0
    torch.testing.assert_close(llama3_inv_freq(config), expected, rtol=1e-6, atol=0)


def test_scaling_follows_the_paper_rule():
    config = Llama3Config.from_preset("llama3-8b")
    plain = llama3_inv_freq(
        Llama3Config.from_preset("llama3-8b", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    )
    scaled = llama3_inv_freq(config)
    wavelength = 2 * torch.pi / plain
    high, low = wavelength < 8192 / 4, wavelength > 8192 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / 8)


def test_angles_are_fp32_and_match_meta_freqs_cis_at_128k():
    config = Llama3Config.from_preset("llama3-8b")
    rotary = Llama3RotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 8191, 65536, 131071]])
    x = torch.zeros(1, dtype=torch.bfloat16)
    cos, _ = rotary(x, positions)
    assert cos.dtype == torch.bfloat16
    cos32, sin32 = rotary(torch.zeros(1), positions)
    freqs_cis = precompute_freqs_cis(config.head_dim, 131072, 500000.0, use_scaled=True)[positions[0]]
    # Meta pairs (2i, 2i+1) share angle i; transformers' layout repeats the half: cos[..., i] == cos[..., i + d/2].
    half = config.head_dim // 2
    torch.testing.assert_close(cos32[0, :, :half], freqs_cis.real, rtol=0, atol=2e-5)
    torch.testing.assert_close(sin32[0, :, :half], freqs_cis.imag, rtol=0, atol=2e-5)
    torch.testing.assert_close(cos32[0, :, half:], cos32[0, :, :half])
