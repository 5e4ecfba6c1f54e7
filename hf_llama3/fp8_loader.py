"""Run an ``fbgemm_fp8`` folder without FP8 kernels: the CPU reference path of the paper's FP8 inference [6.2].

transformers loads these folders only on a GPU with ``fbgemm-gpu`` (its quantizer refuses CPU). Here the FP8
modules (every linear module with a ``weight_scale`` in the checkpoint) become :class:`Fp8RowwiseLinear`, which
holds the same e4m3 weights and fp32 row scales and computes what fbgemm's kernels compute: per-token FP8
activations bounded by ``activation_scale_ub`` (``activations="fp8"``), or the dequantized weight times the
unquantized input (``activations="bf16"``, weight-only). Works for our exports and Meta's FP8 release layout alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint_io import CheckpointError, check_state_dict_shapes, read_config_dict, read_state_dict
from .fp8 import ACTIVATION_SCALE_UB, Fp8RowwiseLinear


def read_fp8_config(folder: str | os.PathLike):
    """Our ``Llama3Config`` for an ``fbgemm_fp8`` folder (its ``quantization_config`` removed) and that config."""
    from .configuration_llama3 import Llama3Config
    from .convert import ours_config_from_llama

    config_dict = read_config_dict(folder)
    quantization = config_dict.get("quantization_config") or {}
    if quantization.get("quant_method") != "fbgemm_fp8":
        raise CheckpointError(
            f"{folder}/config.json has no fbgemm_fp8 quantization_config (found {quantization.get('quant_method')!r}): "
            "it is not an FP8 export. Load it with from_pretrained, or make one with `hf-llama3 quantize --fp8`."
        )
    values = {k: v for k, v in config_dict.items() if k != "quantization_config"}
    if values.get("model_type") == "llama3":
        config = Llama3Config.from_dict(values)
    elif values.get("model_type") == "llama":
        config = ours_config_from_llama(values)
    else:
        raise CheckpointError(f"{folder}/config.json has model_type {values.get('model_type')!r}; expected a Llama.")
    return config, quantization


def load_fp8_model(
    folder: str | os.PathLike,
    *,
    activations: str = "fp8",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Our ``Llama3ForCausalLM`` with the folder's FP8 modules as :class:`Fp8RowwiseLinear` (no fbgemm needed).

    Args:
        folder: An ``fbgemm_fp8`` folder (``hf-llama3 quantize --fp8`` output, or Meta's FP8 release layout).
        activations: ``"fp8"`` emulates the GPU kernels (per-token FP8 activations, bounded row maximum);
            ``"bf16"`` keeps activations unquantized (weight-only).
        dtype: dtype of the unquantized parameters and of the activations between layers.
        device: Where to put the model.
    """
    from transformers.initialization import no_init_weights

    from .modeling_llama3 import Llama3ForCausalLM

    folder = Path(folder)
    config, quantization = read_fp8_config(folder)
    ub = float(quantization.get("activation_scale_ub") or ACTIVATION_SCALE_UB)
    state_dict = read_state_dict(folder)
    fp8_modules = sorted(name.removesuffix(".weight_scale") for name in state_dict if name.endswith(".weight_scale"))
    if not fp8_modules:
        raise CheckpointError(f"{folder} has an fbgemm_fp8 config but no `*.weight_scale` tensors: it is incomplete.")
    with no_init_weights():
        model = Llama3ForCausalLM(config)
    # Parameters to `dtype`; buffers (the RoPE inverse frequencies) stay fp32, as from_pretrained keeps them.
    buffers = dict(model.named_buffers())
    model.to(dtype)
    for name, buffer in buffers.items():
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner)._buffers[attr] = buffer
    for name in fp8_modules:
        try:
            old = model.get_submodule(name)
        except AttributeError as err:
            raise CheckpointError(f"{folder}: {name}.weight_scale names no module of a Llama model.") from err
        if not isinstance(old, nn.Linear) or old.bias is not None:
            raise CheckpointError(f"{folder}: {name} is not a bias-free linear layer; it cannot hold FP8 weights.")
        model.set_submodule(name, Fp8RowwiseLinear(old.in_features, old.out_features, ub, activations))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    check_state_dict_shapes(state_dict, expected, str(folder))
    for name in fp8_modules:
        if state_dict[f"{name}.weight"].dtype != torch.float8_e4m3fn:
            raise CheckpointError(
                f"{folder}: {name}.weight has a weight_scale but dtype {state_dict[name + '.weight'].dtype}."
            )
    model.load_state_dict(state_dict, strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(device).eval()


__all__ = ["load_fp8_model", "read_fp8_config"]
