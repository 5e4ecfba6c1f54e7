"""CPU versions of the two fbgemm-gpu operators transformers' ``FbgemmFp8Linear`` calls, for tests without a GPU.

``torch.ops.fbgemm.quantize_fp8_per_row(x, bs=None, scale_ub=None) -> (xq, x_scale)`` and
``torch.ops.fbgemm.f8f8bf16_rowwise(xq, wq, x_scale, w_scale, bias=None, use_fast_accum=True) -> bf16`` are
defined with torch.library from the documented rule (fbgemm ``_kernel_quantize_fp8_row``: row max clipped to
``[1e-12, scale_ub]``, ``scale = 448 / row_max``, stored as its reciprocal; rowwise GEMM: ``(xq * x_scale) @
(wq * w_scale).T`` in fp32, bf16 out). They are registered only when fbgemm-gpu is absent, so transformers'
own modules and quantizer code run on CPU against our export. The kernels' numerics on a GPU are checked by
``benchmarks/fp8_gpu.py``.
"""

from __future__ import annotations

import torch

from hf_llama3.fp8 import dequantize_rowwise, quantize_rowwise

_LIB: torch.library.Library | None = None


def register() -> None:
    """Define ``fbgemm::quantize_fp8_per_row`` and ``fbgemm::f8f8bf16_rowwise`` for CPU (idempotent)."""
    global _LIB
    if _LIB is not None or hasattr(torch.ops.fbgemm, "f8f8bf16_rowwise"):
        return
    lib = torch.library.Library("fbgemm", "DEF")
    lib.define("quantize_fp8_per_row(Tensor input, Tensor? bs=None, Tensor? scale_ub=None) -> Tensor[]")
    lib.define(
        "f8f8bf16_rowwise(Tensor XQ, Tensor WQ, Tensor x_scale, Tensor w_scale, Tensor? bias=None, "
        "bool use_fast_accum=True) -> Tensor"
    )

    def quantize_fp8_per_row(x, bs=None, scale_ub=None):
        q, scale = quantize_rowwise(x, scale_ub=scale_ub)
        return [q, scale]

    def f8f8bf16_rowwise(xq, wq, x_scale, w_scale, bias=None, use_fast_accum=True):
        out = dequantize_rowwise(xq, x_scale) @ dequantize_rowwise(wq, w_scale).t()
        if bias is not None:
            out = out + bias.float()
        return out.to(torch.bfloat16)

    lib.impl("quantize_fp8_per_row", quantize_fp8_per_row, "CPU")
    lib.impl("f8f8bf16_rowwise", f8f8bf16_rowwise, "CPU")
    _LIB = lib
