"""Our FP8 feed-forward layers against Meta's reference FP8 SwiGLU (``llama_models.quantize_impls``) [6.2].

``llama_models.quantize_impls`` imports fbgemm-gpu at import time; without it, an empty module stands in for the
import and the two fbgemm operators it calls run as the CPU versions of ``tests/hf_llama3/fbgemm_cpu_ops.py``.
Meta's own code then does the rest: ``load_fp8`` wraps our exported e4m3 weights and scales, and
``ffn_swiglu`` -> ``ffn_swiglu_dynamic`` -> ``fc_dynamic`` quantizes the activations with the 1200 bound,
multiplies, applies SiLU(w1 x) * (w3 x) and projects with w2.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

from hf_llama3.checkpoint_io import read_state_dict
from hf_llama3.fp8 import Fp8RowwiseLinear
from hf_llama3.fp8_loader import load_fp8_model
from hf_llama3.quantize import quantize_fp8_checkpoint
from tests.hf_llama3 import fbgemm_cpu_ops
from tests.hf_llama3.fp8_models import peaked_tiny_model, save_bf16


@pytest.fixture
def quantize_impls(monkeypatch):
    fbgemm_cpu_ops.register()
    try:
        import fbgemm_gpu.experimental.gen_ai  # noqa: F401
    except ImportError:
        for name in ("fbgemm_gpu", "fbgemm_gpu.experimental", "fbgemm_gpu.experimental.gen_ai"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.delitem(sys.modules, "llama_models.quantize_impls", raising=False)
    module = importlib.import_module("llama_models.quantize_impls")
    yield module
    sys.modules.pop("llama_models.quantize_impls", None)


def test_our_fp8_ffn_equals_metas_fp8_swiglu_on_the_exported_weights(quantize_impls, tmp_path):
    src = save_bf16(peaked_tiny_model(num_layers=4), tmp_path / "bf16")
    quantize_fp8_checkpoint(src, tmp_path / "fp8")
    tensors = read_state_dict(tmp_path / "fp8")
    ours = load_fp8_model(tmp_path / "fp8", activations="fp8", dtype=torch.bfloat16)
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) * 3
    x[0, 3, 5] = 4000.0  # an outlier token: its row maximum is clipped at 1200 on both sides
    # Meta's loader skips layer_id 0 and n_layers - 1 and quantizes w1 (gate), w3 (up), w2 (down).
    assert isinstance(ours.model.layers[0].mlp.gate_proj, torch.nn.Linear)
    assert isinstance(ours.model.layers[3].mlp.down_proj, torch.nn.Linear)
    for layer in (1, 2):
        prefix = f"model.layers.{layer}.mlp"
        assert isinstance(ours.model.layers[layer].mlp.up_proj, Fp8RowwiseLinear)
        w1, w3, w2 = (
            quantize_impls.load_fp8(tensors[f"{prefix}.{p}.weight"], tensors[f"{prefix}.{p}.weight_scale"], 1200.0)
            for p in ("gate_proj", "up_proj", "down_proj")
        )
        with torch.no_grad():
            meta = quantize_impls.ffn_swiglu(x, w1, w3, w2)
            mine = ours.model.layers[layer].mlp(x)
        assert meta.dtype == mine.dtype == torch.bfloat16
        torch.testing.assert_close(mine, meta, rtol=0, atol=0)
        with torch.no_grad():  # without the bound the outlier token changes: the bound is really applied
            unbounded = quantize_impls.ffn_swiglu_dynamic(x, w1, w3, w2, activation_scale_ub=None)
        assert not torch.equal(unbounded[0, 3], meta[0, 3]) and torch.equal(unbounded[1], meta[1])
