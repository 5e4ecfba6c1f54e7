"""Llama 3 model configuration.

The defaults are the Llama 3.1 8B shape from "The Llama 3 Herd of Models" (arXiv 2407.21783, Table 3)
with the Llama 3.1 long-context RoPE (rope_type "llama3"). Named presets give the other published sizes
and a few tiny CPU sizes that keep the real 128256-token vocabulary, so every preset works with the real
Llama 3 tokenizer.
"""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# The 256 special tokens sit at the end of the vocabulary: ids 128000..128255 (paper 3.2; Meta's tokenizer).
NUM_BASE_TOKENS = 128000
NUM_SPECIAL_TOKENS = 256
LLAMA3_VOCAB_SIZE = NUM_BASE_TOKENS + NUM_SPECIAL_TOKENS
BEGIN_OF_TEXT_ID = 128000
END_OF_TEXT_ID = 128001
FINETUNE_RIGHT_PAD_ID = 128004
EOM_ID = 128008
EOT_ID = 128009

# Llama 3.1 RoPE scaling [paper 3.2, Llama 3.1 release]: theta 500000, factor 8, low/high frequency factors
# 1 and 4, original context 8192, extended to 131072 positions.
LLAMA3_ROPE_PARAMETERS: dict[str, Any] = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# Table 3 of the paper, plus the Llama 3.2 1B/3B text models (which tie input and output embeddings).
# Tiny presets keep the real vocabulary and RoPE so they run the real tokenizer and the long-RoPE path on CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
    "llama3-70b": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8
    ),
    "llama3-405b": dict(
        hidden_size=16384,
        intermediate_size=53248,
        num_hidden_layers=126,
        num_attention_heads=128,
        num_key_value_heads=8,
    ),
    "llama3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        tie_word_embeddings=True,
        rope_parameters={**LLAMA3_ROPE_PARAMETERS, "factor": 32.0},
    ),
    "llama3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        rope_parameters={**LLAMA3_ROPE_PARAMETERS, "factor": 32.0},
    ),
    # CPU sizes: GQA 4:1 / 2:1 like the real models, head_dim 16-32.
    "tiny": dict(
        hidden_size=64, intermediate_size=224, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "tiny-deep": dict(
        hidden_size=64, intermediate_size=224, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2
    ),
    "small": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2
    ),
}


@strict
class Llama3Config(PreTrainedConfig):
    r"""Configuration of a Llama 3 decoder (``model_type="llama3"``).

    Field names follow transformers' ``LlamaConfig`` so that a config converts to and from the stock
    ``llama`` format key for key. Defaults are the Llama 3.1 8B shape.

    Args:
        vocab_size: Vocabulary size; 128256 for the Llama 3 tokenizer (128000 BPE + 256 special tokens).
        hidden_size: Model dimension.
        intermediate_size: SwiGLU inner dimension.
        num_hidden_layers: Number of decoder layers.
        num_attention_heads: Query heads.
        num_key_value_heads: Key/value heads (grouped-query attention, 8 in every Llama 3 size).
        head_dim: Per-head dimension, ``hidden_size // num_attention_heads`` when omitted.
        max_position_embeddings: Longest supported context (131072 for Llama 3.1).
        rms_norm_eps: RMSNorm epsilon (1e-5 in Llama 3).
        rope_parameters: ``{"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}``, or ``rope_type="default"`` with
            only ``rope_theta`` for unscaled RoPE.
        tie_word_embeddings: Share input and output embeddings (the Llama 3.2 1B/3B sizes do).
        loss_chunk_size: Tokens per chunk of the memory-lean output-projection + cross-entropy used when ``labels``
            are given; the full ``[tokens, vocab]`` logits are never built. ``0`` computes the full logits and
            transformers' standard loss instead.

    Example:

    ```python
    >>> from hf_llama3 import Llama3Config, Llama3ForCausalLM
    >>> config = Llama3Config.from_preset("tiny")
    >>> model = Llama3ForCausalLM(config)
    ```
    """

    model_type = "llama3"
    # Output keys Trainer's evaluation drops: the KV cache, named `cache` from transformers 5.24, `past_key_values` before.
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    # Tensor-parallel plan (Megatron-style column/row split), read by transformers' `tp_plan="auto"` and by
    # training/parallel, which applies it with DTensor from outside the model.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    # Pipeline-parallel plan: the inputs and outputs of each top-level piece of the base model.
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = LLAMA3_VOCAB_SIZE
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = FINETUNE_RIGHT_PAD_ID
    bos_token_id: int | None = BEGIN_OF_TEXT_ID
    eos_token_id: int | list[int] | None = END_OF_TEXT_ID
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    loss_chunk_size: int = 1024

    def __post_init__(self, **kwargs):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None and "rope_scaling" not in kwargs and "rope_theta" not in kwargs:
            self.rope_parameters = copy.deepcopy(LLAMA3_ROPE_PARAMETERS)
        # TRL reads `config.auto_map`; an instance attribute keeps it from resolving to a shared class default.
        if getattr(self, "auto_map", None) is None:
            self.auto_map = {}
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Llama3Config:
        """Build the config of a named size (``llama3-8b``, ``llama3-70b``, ``llama3-405b``, ``llama3.2-1b``,
        ``llama3.2-3b``, ``tiny``, ``tiny-deep``, ``small``); keyword arguments override preset values."""
        if name not in PRESETS:
            raise ValueError(f"Unknown Llama 3 preset {name!r}. Choose one of: {', '.join(sorted(PRESETS))}.")
        return cls(**{**copy.deepcopy(PRESETS[name]), **overrides})

    # Validators run on construction and on `from_pretrained` (huggingface_hub's @strict calls every
    # `validate_*` method).
    def validate_architecture(self):
        """Shapes that cannot make a working grouped-query attention decoder."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.hidden_size % self.num_attention_heads != 0 and self.head_dim * self.num_attention_heads != (
            self.hidden_size
        ):
            # A head_dim set explicitly may decouple the two (as in Llama 3.2 3B: 24 x 128 = 3072).
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) does not divide hidden_size ({self.hidden_size}): "
                "choose a head count that divides the model dimension, or set head_dim explicitly."
            )
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads}) for grouped-query attention: each key/value head serves "
                "num_attention_heads // num_key_value_heads query heads."
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")
        if self.loss_chunk_size < 0:
            raise ValueError(f"loss_chunk_size must be >= 0 (0 disables chunking), got {self.loss_chunk_size}.")

    def validate_rope(self):
        """Llama 3 uses plain RoPE (theta only) and the Llama 3.1 scaling; every other type transformers' rope
        functions implement (linear, dynamic, yarn, ...) is accepted too and checked by transformers."""
        params = self.rope_parameters
        if not isinstance(params, dict):
            raise ValueError(f"rope_parameters must be a dict, got {type(params).__name__}.")
        rope_type = params.get("rope_type", params.get("type", "default"))
        supported = ("default", *ROPE_INIT_FUNCTIONS)
        if rope_type not in supported:
            raise ValueError(f"rope_type must be one of {supported}, got {rope_type!r}.")
        theta = params.get("rope_theta")
        if not isinstance(theta, (int, float)) or theta <= 0:
            raise ValueError(f"rope_parameters['rope_theta'] must be a positive number, got {theta!r}.")
        if rope_type == "llama3":
            missing = [
                k
                for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                if k not in params
            ]
            if missing:
                raise ValueError(
                    f"rope_type 'llama3' needs rope_parameters {missing}; the paper uses {LLAMA3_ROPE_PARAMETERS}."
                )
            if params["factor"] < 1:
                raise ValueError(f"rope_parameters['factor'] must be >= 1, got {params['factor']}.")
            if not 0 < params["low_freq_factor"] < params["high_freq_factor"]:
                raise ValueError(
                    "rope_parameters need 0 < low_freq_factor < high_freq_factor, got "
                    f"low={params['low_freq_factor']}, high={params['high_freq_factor']}."
                )
            if params["original_max_position_embeddings"] <= 0:
                raise ValueError("rope_parameters['original_max_position_embeddings'] must be positive.")
        super().validate_rope()

    def validate_token_ids(self):
        """Special tokens must lie inside the vocabulary (the Llama 3 ones are ids 128000..128255)."""
        for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            for token_id in ids:
                if token_id is not None and not 0 <= token_id < self.vocab_size:
                    raise ValueError(
                        f"{name}={token_id} does not fit in vocab_size={self.vocab_size}. The Llama 3 tokenizer's "
                        f"special tokens take ids {NUM_BASE_TOKENS}..{LLAMA3_VOCAB_SIZE - 1}: use "
                        f"vocab_size >= {LLAMA3_VOCAB_SIZE}, or set the special token ids of your own tokenizer."
                    )


__all__ = ["PRESETS", "Llama3Config"]
