"""The model's Llama 3.1 RoPE (transformers' rope functions, inherited) against Meta's reference and the paper rule."""

from __future__ import annotations

import pytest
import torch
from llama_models.llama3.model import apply_scaling, precompute_freqs_cis

from hf_llama3 import Llama3Config, Llama3Model


def model_inv_freq(config: Llama3Config) -> torch.Tensor:
    """The inverse frequencies the model actually uses (its rotary module's buffer)."""
    return rotary_of(config).inv_freq


def rotary_of(config: Llama3Config) -> torch.nn.Module:
    return Llama3Model(Llama3Config.from_preset("tiny", **{k: getattr(config, k) for k in ROTARY_KEYS})).rotary_emb


# The config fields the rotary tables depend on; the rest stays tiny so building the model is cheap.
ROTARY_KEYS = ("head_dim", "rope_parameters", "max_position_embeddings")


@pytest.mark.parametrize("preset", ["llama3-8b", "llama3-405b", "tiny"])
def test_inv_freq_matches_meta_apply_scaling(preset):
    config = Llama3Config.from_preset(preset)
    dim = config.head_dim
    base = 1.0 / (500000.0 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    torch.testing.assert_close(model_inv_freq(config), apply_scaling(base), rtol=1e-6, atol=0)


def test_rope_buffer_is_recomputed_after_meta_device_loading(tmp_path):
    """Buffers are not in the checkpoint: loading (meta device, then materialised) must compute them again."""
    config = Llama3Config.from_preset("tiny")
    Llama3Model(config).save_pretrained(tmp_path)
    loaded = Llama3Model.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.rotary_emb.inv_freq, model_inv_freq(config), rtol=0, atol=0)
    assert loaded.rotary_emb.inv_freq.abs().sum() > 0


def test_scaling_follows_the_paper_rule():
    config = Llama3Config.from_preset("llama3-8b")
    plain = model_inv_freq(
        Llama3Config.from_preset("llama3-8b", rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    )
    scaled = model_inv_freq(config)
    wavelength = 2 * torch.pi / plain
    high, low = wavelength < 8192 / 4, wavelength > 8192 / 1
    assert high.any() and low.any() and (~high & ~low).any()
    torch.testing.assert_close(scaled[high], plain[high])
    torch.testing.assert_close(scaled[low], plain[low] / 8)


def test_angles_are_fp32_and_match_meta_freqs_cis_at_128k():
    config = Llama3Config.from_preset("llama3-8b")
    rotary = rotary_of(config)
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
