"""Precision of the post-training stages: fp32 trainable weights under bf16 autocast, and the export's dtype.

TRL applies ``model_init_kwargs`` (``dtype``) only to a model it loads from a name; our stages hand it a built model,
so the weights would train in whatever dtype the checkpoint was saved in. A bf16 checkpoint trained in pure bf16
loses most updates at the paper's learning rate of 1e-5 [4.1.3, 4.1.4]: bf16 keeps 8 significant bits, so an Adam
step of about ``lr`` on a weight of magnitude ``w`` rounds away whenever ``lr / w < 2**-9`` (with 1e-5 that is every
weight above 0.005). The stages therefore load the trainable weights in fp32 (the master copy the optimizer updates)
and compute under bf16 autocast (TRL's ``bf16`` flag, on by default), unless ``weights_dtype: bfloat16`` asks for
pure bf16, which warns. The export is cast to ``export_dtype``, by default the dtype of the checkpoint trained from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The largest learning rate pure bf16 weights of magnitude ~0.02 still lose updates at: 0.02 * 2**-9 ~ 4e-5,
# rounded up to warn for every post-training rate the paper uses [4.1.3, 4.1.4: 1e-5].
PURE_BF16_SAFE_LR = 1e-4


def checkpoint_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's weights were saved in (``config.json``'s ``dtype``), float32 when it names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype.removeprefix("torch."), torch.float32)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def training_dtype(weights_dtype: str, learning_rate: float) -> torch.dtype:
    """The dtype trainable weights load in; pure bf16 warns when the learning rate is small enough to be lost."""
    dtype = DTYPES[weights_dtype]
    if dtype != torch.float32 and learning_rate < PURE_BF16_SAFE_LR:
        logger.warning(
            "weights_dtype=%s with learning_rate=%g: %s keeps 8 significant bits, so most updates smaller than "
            "1/512 of a weight round away and those weights never change; keep weights_dtype=float32 (fp32 master "
            "weights with bf16 autocast) unless memory forbids it.",
            weights_dtype,
            learning_rate,
            weights_dtype,
        )
    return dtype


def load_trainable(model_class: Any, path: str | Path, config: Any, **kwargs: Any):
    """``model_class.from_pretrained(path)`` with the weights in ``config.weights_dtype`` (fp32 by default)."""
    return model_class.from_pretrained(
        path, dtype=training_dtype(config.weights_dtype, config.learning_rate), **kwargs
    )


def export_dtype(config: Any) -> torch.dtype:
    """The dtype exports are written in: ``config.export_dtype``, else the checkpoint's (``model_name_or_path``)."""
    if config.export_dtype:
        return DTYPES[config.export_dtype]
    return checkpoint_dtype(config.model_name_or_path)
