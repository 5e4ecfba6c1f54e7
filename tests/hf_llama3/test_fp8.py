"""FP8 row-wise numerics [6.2], the layer rule by name, and the memory accounting against hand-computed figures."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.quantizers.quantizers_utils import should_convert_module

from hf_llama3 import Llama3Config
from hf_llama3.fp8 import (
    FP8_DTYPE,
    Fp8RowwiseLinear,
    dequantize_rowwise,
    fp8_module_names,
    modules_to_not_convert,
    quantize_rowwise,
)
from hf_llama3.memory import kv_cache_bytes, memory_plan, parameter_counts, weight_bytes

# Every finite e4m3 value, from the 256 bit patterns (the reference grid for round-to-nearest).
E4M3_GRID = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
E4M3_GRID = torch.unique(E4M3_GRID[torch.isfinite(E4M3_GRID)])
SMALLEST_NORMAL = 2.0**-6  # e4m3: values below are subnormal, spaced 2**-9


def reference_rowwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward row-wise reference: scale = max|row| / 448, each value to the nearest e4m3 grid point."""
    scales = torch.stack([row.abs().max().clamp(min=1e-12) / 448.0 for row in w.float()])
    scaled = w.float() / scales[:, None]
    nearest = E4M3_GRID[(scaled[..., None] - E4M3_GRID).abs().argmin(-1)]
    return nearest, scales


def test_quantize_dequantize_matches_a_rowwise_reference_within_e4m3_resolution():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 96, generator=g) * torch.logspace(-4, 1, 48)[:, None]  # rows over 5 decades
    w[3] = 0.0  # an all-zero row
    w[7, 5] = 40.0  # an outlier that sets its row's scale (the rest of the row goes subnormal)
    w = w.to(torch.bfloat16)
    q, scale = quantize_rowwise(w)
    assert q.dtype == FP8_DTYPE and q.shape == w.shape and scale.dtype == torch.float32 and scale.shape == (48,)

    ref_q, ref_scale = reference_rowwise(w)
    torch.testing.assert_close(scale, ref_scale, rtol=1e-6, atol=0)
    differ = q.float() != ref_q
    assert differ.float().mean() < 0.01
    # Where the codes differ, the value sat on a midpoint between two grid points (ties round to even) or within
    # float rounding of one (w * (448 / max) vs w / (max / 448)): both candidates are equally near.
    scaled = w.float() / scale[:, None]
    gap = ((scaled - q.float()).abs() - (scaled - ref_q).abs()).abs()
    assert (gap[differ] <= 1e-5 * scaled.abs()[differ]).all()

    deq = dequantize_rowwise(q, scale)
    err = (deq - w.float()).abs()
    normal = scaled.abs() >= SMALLEST_NORMAL
    # Half a unit in the last place: 3 mantissa bits -> 2**-4 relative (normal), 2**-10 x scale (subnormal).
    assert (err[normal] <= 2.0**-4 * w.float().abs()[normal] + 1e-12).all()
    assert (err[~normal] <= 2.0**-10 * scale[:, None].expand_as(w)[~normal] + 1e-12).all()
    assert torch.equal(deq[3], torch.zeros(96)) and torch.isfinite(scale).all()
    assert float(deq[7, 5]) == 40.0  # the row maximum maps to +-448 exactly


def test_activation_row_maximum_is_bounded_by_the_upper_bound():
    x = torch.tensor([[5000.0, 600.0, -3.0, 1.0], [10.0, -2.0, 0.5, 0.25]])
    q, scale = quantize_rowwise(x, scale_ub=1200.0)
    assert scale[0] == pytest.approx(1200.0 / 448.0)  # clipped: the outlier saturates at the bound
    assert float(dequantize_rowwise(q, scale)[0, 0]) == pytest.approx(1200.0)
    unbounded_q, unbounded_scale = quantize_rowwise(x[1:])
    assert torch.equal(q[1].float(), unbounded_q[0].float()) and scale[1] == unbounded_scale[0]


def test_only_ffn_of_middle_layers_are_fp8_by_name():
    names = fp8_module_names(126)
    assert len(names) == 124 * 3
    assert "model.layers.1.mlp.gate_proj" in names and "model.layers.124.mlp.down_proj" in names
    assert not [n for n in names if n.startswith(("model.layers.0.", "model.layers.125.")) or "self_attn" in n]
    keep = modules_to_not_convert(126)
    assert "lm_head" in keep and "model.layers.0.mlp.up_proj" in keep and "model.layers.125.mlp.down_proj" in keep
    assert sum("self_attn" in n for n in keep) == 126 * 4


def test_transformers_matching_rule_converts_exactly_the_paper_modules():
    """transformers' own `should_convert_module` over every linear module of a stock Llama (10 and 11 layers,
    so 'layers.1' must not match 'layers.10')."""
    for layers in (10, 11):
        config = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4, vocab_size=64
        )
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        converted = [n for n in linear if should_convert_module(n, modules_to_not_convert(layers))]
        assert converted == fp8_module_names(layers)


def test_reference_linear_weight_only_and_emulated_fp8_activations():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 40, generator=g)
    x = torch.randn(2, 5, 40, generator=g)
    q, scale = quantize_rowwise(w)
    layer = Fp8RowwiseLinear(40, 24, activations="bf16")
    layer.load_state_dict({"weight": q, "weight_scale": scale[:, None]})
    assert torch.equal(layer(x), x @ dequantize_rowwise(q, scale).t())
    layer.activations = "fp8"
    xq, xs = quantize_rowwise(x.reshape(-1, 40), scale_ub=1200.0)
    expected = dequantize_rowwise(xq, xs) @ dequantize_rowwise(q, scale).t()
    torch.testing.assert_close(layer(x), expected.reshape(2, 5, 24))
    assert not torch.equal(layer(x), x @ dequantize_rowwise(q, scale).t())  # activations really are quantized


def test_memory_accounting_405b_by_hand():
    config = Llama3Config.from_preset("llama3-405b")
    # Table 3: 126 layers, dim 16384, FFN 53248, 128 heads / 8 KV heads (head_dim 128), vocab 128256.
    embedding = 128256 * 16384
    attention = 16384 * 16384 * 2 + 16384 * 1024 * 2  # q, o + k, v
    ffn = 3 * 16384 * 53248
    per_layer = attention + ffn + 2 * 16384
    params = 2 * embedding + 126 * per_layer + 16384
    assert params == 405_853_388_800 == parameter_counts(config).total
    assert weight_bytes(config) == 2 * params == 811_706_777_600
    fp8 = 2 * params - 124 * ffn + 124 * (53248 + 53248 + 16384) * 4  # 1 byte per FFN weight + fp32 row scales
    assert weight_bytes(config, fp8=True) == fp8 == 487_229_259_776
    assert kv_cache_bytes(config, batch=1, context=131072) == 2 * 126 * 8 * 128 * 2 * 131072 == 67_645_734_912
    plan = memory_plan(config, batch=1, context=131072, num_gpus=8, gpu_memory_gb=80)
    assert not plan["bf16"]["fits"] and plan["fp8"]["fits"]  # 812 GB vs 487 GB of weights on 640 GB
    assert plan["fp8"]["max_sequences_at_context"] == (640 * 10**9 - fp8) // 67_645_734_912 == 2
    tied = Llama3Config.from_preset("llama3.2-1b")
    assert parameter_counts(tied).lm_head == 0 and parameter_counts(tied).total == 1_235_814_400
