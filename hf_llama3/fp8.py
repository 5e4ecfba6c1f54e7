"""The paper's FP8 row-wise quantization [6.2]: numerics, the layer rule, and a CPU reference linear layer.

Llama 3 405B is served on one 8-GPU node with FP8 matrix multiplications [6.2]:

- weights: one fp32 scale per output row (``scale = amax(|row|) / 448``, e4m3 values ``round(w / scale)``);
- activations: dynamic per-token (per-row) scales, the row maximum clipped to an upper bound of 1200 so that a
  few outlier tokens cannot spoil the scale of the rest;
- only the feed-forward projections, and not in the first and last transformer layers; self-attention, the
  embeddings, norms and the output layer stay in bf16.

This is Meta's ``llama_models`` recipe (``llama3/quantization/loader.py`` skips ``layer_id == 0`` and
``n_layers - 1`` and quantizes ``w1``/``w3``/``w2``; ``quantize_impls.quantize_fp8`` calls fbgemm's
``quantize_fp8_per_row``) and the layout transformers' ``fbgemm_fp8`` quantizer loads (``FbgemmFp8Linear``:
``weight`` float8_e4m3fn ``[out, in]``, ``weight_scale`` float32 ``[out, 1]``, ``input_scale_ub`` from the
config's ``activation_scale_ub``). The functions here follow fbgemm's ``quantize_fp8_per_row`` rule in plain
torch so that quantization and the reference forward run on any CPU.
"""

from __future__ import annotations

import torch
from torch import nn

# e4m3 (float8_e4m3fn): 4 exponent bits, 3 mantissa bits, no infinities; largest finite value 448.
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
# fbgemm's floor on a row maximum, so that an all-zero row gets a finite scale.
ROW_MAX_EPS = 1e-12
# The upper bound on the dynamic activation scale (the row maximum of the activations) [6.2].
ACTIVATION_SCALE_UB = 1200.0
# Feed-forward (SwiGLU) projections quantized in each middle layer [6.2]: Meta's w1, w3, w2.
FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
# Rows quantized per step: bounds the fp32 working copy of a 405B FFN matrix (53248 x 16384).
ROW_BLOCK = 4096


def quantize_rowwise(
    x: torch.Tensor, scale_ub: float | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise FP8 quantization of a 2-D tensor, fbgemm's ``quantize_fp8_per_row`` rule in plain torch.

    For each row, ``row_max = max(|x|)`` (clipped to ``[1e-12, scale_ub]`` when ``scale_ub`` is given, the
    activation bound of [6.2]), ``inv = 448 / row_max``, ``q = clamp(x * inv, -448, 448)`` cast to e4m3
    (round to nearest even) and the stored scale is ``1 / inv``. Values beyond a clipped row maximum saturate
    at +-448.

    Args:
        x: ``[rows, cols]`` tensor (weights ``[out, in]``, or activations ``[tokens, features]``).
        scale_ub: Upper bound on the row maximum (activations only; weights are never clipped).

    Returns:
        ``(q, scale)``: ``q`` float8_e4m3fn with ``x``'s shape, ``scale`` float32 ``[rows]``, such that
        ``q.float() * scale[:, None]`` approximates ``x``.
    """
    if x.dim() != 2:
        raise ValueError(f"quantize_rowwise expects a 2-D tensor, got shape {tuple(x.shape)}.")
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    ub = float(scale_ub) if scale_ub is not None else None
    for start in range(0, x.shape[0], ROW_BLOCK):
        rows = x[start : start + ROW_BLOCK].float()
        row_max = rows.abs().amax(dim=1, keepdim=True)
        row_max = row_max.clamp(min=ROW_MAX_EPS, max=ub) if ub is not None else row_max.clamp(min=ROW_MAX_EPS)
        inv = FP8_MAX / row_max
        q[start : start + ROW_BLOCK] = (rows * inv).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        scale[start : start + ROW_BLOCK] = (1.0 / inv).squeeze(1)
    return q, scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` per row (``scale`` as ``[rows]`` or the exported ``[rows, 1]``), computed in fp32."""
    return (q.float() * scale.float().reshape(-1, 1)).to(dtype)


def fp8_layer_ids(num_layers: int) -> list[int]:
    """Transformer layers whose feed-forward projections are FP8: all but the first and the last [6.2]."""
    return list(range(1, num_layers - 1))


def fp8_module_names(num_layers: int) -> list[str]:
    """Full names of the linear modules that are quantized (``model.layers.{i}.mlp.{gate,up,down}_proj``)."""
    return [f"model.layers.{i}.mlp.{proj}" for i in fp8_layer_ids(num_layers) for proj in FFN_PROJECTIONS]


def modules_to_not_convert(num_layers: int, lm_head: bool = True) -> list[str]:
    """Every linear module that stays in bf16, by full name, in transformers' ``modules_to_not_convert`` form.

    transformers' fbgemm quantizer turns every ``nn.Linear`` not matched by this list into ``FbgemmFp8Linear``
    (and adds nothing itself when a list is given), so the list names all attention projections, the feed-forward
    projections of the first and last layers, and ``lm_head``. Full names match in both of transformers'
    matching rules (substring in older releases, regex with module boundaries in 5.x).
    """
    quantized = set(fp8_module_names(num_layers))
    names = []
    for i in range(num_layers):
        names += [f"model.layers.{i}.self_attn.{proj}" for proj in ATTENTION_PROJECTIONS]
        names += [name for proj in FFN_PROJECTIONS if (name := f"model.layers.{i}.mlp.{proj}") not in quantized]
    return names + (["lm_head"] if lm_head else [])


def fbgemm_quantization_config(num_layers: int, activation_scale_ub: float = ACTIVATION_SCALE_UB):
    """transformers' ``FbgemmFp8Config`` for a ``num_layers``-layer Llama quantized by the paper's rule."""
    from transformers.utils.quantization_config import FbgemmFp8Config

    return FbgemmFp8Config(
        activation_scale_ub=float(activation_scale_ub), modules_to_not_convert=modules_to_not_convert(num_layers)
    )


class Fp8RowwiseLinear(nn.Module):
    """A bias-free linear layer holding FP8 row-wise weights: the CPU reference of ``FbgemmFp8Linear``.

    Same parameter names, shapes and dtypes as transformers' ``FbgemmFp8Linear`` (``weight`` e4m3 ``[out, in]``,
    ``weight_scale`` fp32 ``[out, 1]``), so an exported state dict loads into either. The forward pass either
    emulates the GPU kernel (``activations="fp8"``: per-token FP8 activations with the row maximum bounded by
    ``activation_scale_ub``, products summed in fp32, output in the input dtype, as fbgemm's
    ``f8f8bf16_rowwise``) or multiplies the input by the dequantized weight (``activations="bf16"``:
    weight-only quantization).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation_scale_ub: float = ACTIVATION_SCALE_UB,
        activations: str = "fp8",
    ) -> None:
        super().__init__()
        if activations not in ("fp8", "bf16"):
            raise ValueError(f"activations must be 'fp8' or 'bf16', got {activations!r}.")
        self.in_features, self.out_features = in_features, out_features
        self.activations = activations
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.zeros(out_features, 1, dtype=torch.float32), requires_grad=False)
        self.register_buffer(
            "input_scale_ub", torch.tensor([float(activation_scale_ub)], dtype=torch.float32), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        weight = dequantize_rowwise(self.weight, self.weight_scale)
        if self.activations == "fp8":
            xq, x_scale = quantize_rowwise(flat, scale_ub=self.input_scale_ub)
            flat = dequantize_rowwise(xq, x_scale)
        out = flat.float() @ weight.t()
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        ub = float(self.input_scale_ub)
        return f"in_features={self.in_features}, out_features={self.out_features}, activations={self.activations}, ub={ub}"


__all__ = [
    "ACTIVATION_SCALE_UB",
    "FFN_PROJECTIONS",
    "FP8_DTYPE",
    "FP8_MAX",
    "Fp8RowwiseLinear",
    "dequantize_rowwise",
    "fbgemm_quantization_config",
    "fp8_layer_ids",
    "fp8_module_names",
    "modules_to_not_convert",
    "quantize_rowwise",
]
