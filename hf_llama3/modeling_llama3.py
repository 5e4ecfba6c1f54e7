"""Llama 3 (Llama 3.1 architecture) for transformers, in one readable file.

The model is the decoder described in "The Llama 3 Herd of Models" (arXiv 2407.21783, section 3.2):
pre-norm RMSNorm blocks, grouped-query attention (8 key/value heads in every released size), SwiGLU
feed-forward, no biases, rotary position embeddings with base 500000 and the Llama 3.1 frequency scaling
that extends the context from 8K to 128K tokens. Parameter names mirror transformers' `LlamaForCausalLM`,
so stock Llama checkpoints load directly and our checkpoints export to `model_type="llama"` key for key.

Two things differ from the stock Llama code, both for pre-training at scale:
- Document masking [3.2]: rows that pack several documents (``position_ids`` restarting at 0, or explicit
  ``document_ids``) attend only within each document, so each document gets exactly its stand-alone logits.
- A memory-lean loss: with ``labels``, the output projection and cross-entropy run chunk by chunk and never
  build the ``[tokens, 128256]`` fp32 logits (``config.loss_chunk_size``).

This file and ``configuration_llama3.py`` are what ``save_pretrained`` copies next to a checkpoint for
``trust_remote_code=True`` loading, so they import nothing from the rest of the project.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_llama3 import Llama3Config

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
# Written into every saved config: the Auto class -> "module.Class" map that remote-code loading follows.
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_llama3.Llama3Config",
    "AutoModel": "modeling_llama3.Llama3Model",
    "AutoModelForCausalLM": "modeling_llama3.Llama3ForCausalLM",
    "AutoModelForSequenceClassification": "modeling_llama3.Llama3ForSequenceClassification",
}


class Llama3RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in fp32 and cast back (as Meta's reference does)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def llama3_inv_freq(config: Llama3Config, device: torch.device | None = None) -> torch.Tensor:
    """RoPE inverse frequencies, with the Llama 3.1 long-context scaling when ``rope_type == "llama3"``.

    Base frequencies are ``theta ** (-2i / head_dim)``. The Llama 3.1 rule works on each frequency's wavelength
    ``w = 2 pi / f`` against the original context ``L`` (8192): high frequencies (``w < L / high_freq_factor``)
    are kept, low frequencies (``w > L / low_freq_factor``) are divided by ``factor``, and the band between
    is interpolated linearly in ``L / w``. Computed in fp32.
    """
    params = config.rope_parameters
    dim = config.head_dim
    inv_freq = 1.0 / (
        params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)
    )
    if params.get("rope_type", "default") == "default":
        return inv_freq

    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    original_context = params["original_max_position_embeddings"]
    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor

    wavelen = 2 * math.pi / inv_freq
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    interpolated = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, interpolated, scaled)


class Llama3RotaryEmbedding(nn.Module):
    """Produces the RoPE ``cos``/``sin`` tables for given positions; angles are computed in fp32."""

    inv_freq: torch.Tensor

    def __init__(self, config: Llama3Config, device: torch.device | None = None) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", llama3_inv_freq(config, device), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        positions = position_ids[:, None, :].float()
        # Angles reach 131072 * f: keep them in fp32 even under autocast.
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            freqs = (inv_freq @ positions).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos(), emb.sin()
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotates half the hidden dims (the HF layout of the rotary pairs: first half with second half)."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates queries and keys ``[batch, heads, seq, head_dim]`` by their positions' angles."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


class Llama3MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: Llama3Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Expands ``[batch, kv_heads, seq, dim]`` to ``[batch, kv_heads * n_rep, seq, dim]`` (eager attention only)."""
    batch, num_key_value_heads, seq_len, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, seq_len, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; the reference every other backend is tested against."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class Llama3Attention(nn.Module):
    """Grouped-query self-attention through transformers' attention interface (eager, sdpa, flash, flex).

    With sdpa and no explicit mask, key/value heads are not repeated: sdpa's ``enable_gqa`` broadcasts them.
    """

    def __init__(self, config: Llama3Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class Llama3DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; checkpointable as a unit."""

    def __init__(self, config: Llama3Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Llama3Attention(config=config, layer_idx=layer_idx)
        self.mlp = Llama3MLP(config)
        self.input_layernorm = Llama3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Llama3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = residual + hidden_states
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Llama3PreTrainedModel(PreTrainedModel):
    """Weight init, attention-backend flags and checkpoint conventions shared by the Llama 3 heads."""

    config_class = Llama3Config
    config: Llama3Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Llama3DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": Llama3DecoderLayer, "attentions": Llama3Attention}
    # The RoPE tables are recomputed, never loaded (Meta's checkpoints carry a stale `rope.freqs`).
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq", r"rope\.freqs"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with every Llama 3 class in ``auto_map`` so that any head of the
        saved folder loads with ``trust_remote_code=True`` (transformers alone records only the saved class)."""
        self.config.auto_map = {**REMOTE_CODE_AUTO_MAP, **(self.config.auto_map or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Llama3RotaryEmbedding):
            # Buffers are not in the checkpoint: after meta-device loading they must be computed again.
            init.copy_(module.inv_freq, llama3_inv_freq(module.config, module.inv_freq.device))
        else:
            super()._init_weights(module)


def positions_from_document_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """Position ids that restart at 0 at every document boundary of a packed ``[batch, seq]`` row."""
    seq_len = document_ids.shape[-1]
    index = torch.arange(seq_len, device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - start_index


def document_mask_function(document_ids: torch.Tensor) -> Callable:
    """A `masking_utils` mask function: a query sees a key only within the same document."""

    def same_document(batch_idx, head_idx, q_idx, kv_idx):
        return document_ids[batch_idx, q_idx] == document_ids[batch_idx, kv_idx]

    return same_document


class Llama3Model(Llama3PreTrainedModel):
    """The Llama 3 decoder stack without a head: embeddings, decoder layers, final norm."""

    def __init__(self, config: Llama3Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [Llama3DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = Llama3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Llama3RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""
        document_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            For rows that pack several documents: the document each token belongs to. Attention is restricted to
            the token's own document and, unless ``position_ids`` are given, positions restart at each document.
            Rows packed with ``position_ids`` restarting at 0 (and no ``attention_mask``) get the same document
            masking without ``document_ids``.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        if document_ids is not None:
            if position_ids is None:
                position_ids = positions_from_document_ids(document_ids)
            if attention_mask is None:
                # An explicit mask turns off transformers' position-based packing detection, which would remap
                # the indices our document mask function receives.
                attention_mask = torch.ones_like(document_ids)
        packed = document_ids is not None or (
            position_ids is not None
            and attention_mask is None
            and find_packed_sequence_indices(position_ids) is not None
        )
        # A cache turns off transformers' packed-sequence masking, so it is only made for inference on unpacked rows.
        if use_cache and past_key_values is None and not self.training and not packed:
            past_key_values = DynamicCache(config=self.config)

        if position_ids is None:
            past_seen_tokens = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=position_ids,
            and_mask_function=document_mask_function(document_ids) if document_ids is not None else None,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                past_key_values=past_key_values,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
        )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """``sum(CE(hidden @ weight.T, labels)) / normalizer`` computed over chunks of tokens.

    The logits of one chunk exist at a time, and are turned into their own gradient in place (softmax minus
    one-hot), so nothing of size ``[tokens, vocab]`` is stored or recomputed: the same three matmuls as the
    unchunked loss, a fraction of the memory. Gradients are computed in the forward pass and scaled by the upstream
    gradient in ``backward`` (so the graph through this node can be backpropagated once). The weight gradient is
    accumulated in fp32 across chunks.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, normalizer):
        needs_hidden_grad, needs_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if needs_hidden_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_weight_grad else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            y = labels[start : start + chunk_size]
            valid = y != IGNORE_INDEX
            y_safe = torch.where(valid, y, 0)
            logits = (h @ weight.T).float()
            target = logits.gather(1, y_safe[:, None]).squeeze(1)
            row_max = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(row_max).exp_()  # in place: exp(logit - max), no second [chunk, vocab] buffer
            sum_exp = probs.sum(dim=-1, keepdim=True)
            lse = (sum_exp.log() + row_max).squeeze(1)
            loss_sum += ((lse - target) * valid).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d(sum CE)/d(logits) = softmax - onehot on counted rows, divided by the normalizer.
            probs.div_(sum_exp)
            probs[torch.arange(len(y), device=y.device), y_safe] -= 1
            probs.mul_((valid / normalizer)[:, None])
            grad_logits = probs.to(weight.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start : start + chunk_size])
            if grad_weight is not None:
                if weight.dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.T, h)
                else:
                    grad_weight += (grad_logits.T @ h).float()
        ctx.grads = (grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return loss_sum / normalizer

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight.mul_(grad_loss.to(grad_weight.dtype))
        return grad_hidden, grad_weight, None, None, None


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor | None,
    chunk_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy of ``hidden_states @ lm_head_weight.T`` without the full logits.

    Same semantics as transformers' ``ForCausalLMLoss``: labels are shifted left by one (unless ``shift_labels``
    are given), -100 is ignored, the result is the mean over counted tokens or the sum divided by
    ``num_items_in_batch`` (gradient accumulation).
    """
    if shift_labels is None:
        shift_labels = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    targets = shift_labels.reshape(-1).to(hidden.device)
    if num_items_in_batch is None:
        normalizer = (targets != IGNORE_INDEX).sum().float()
    else:
        normalizer = torch.as_tensor(num_items_in_batch, device=hidden.device).float()
    return _ChunkedLinearCrossEntropy.apply(hidden, lm_head_weight, targets, chunk_size, normalizer)


class Llama3ForCausalLM(Llama3PreTrainedModel, GenerationMixin):
    """Llama 3 with a language-modelling head; generation through transformers' `GenerationMixin`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: Llama3Config) -> None:
        super().__init__(config)
        self.model = Llama3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (shifted inside, -100 ignored). With ``config.loss_chunk_size > 0`` the loss is
            computed chunk by chunk and ``logits`` is returned as ``None``: the full logits are never built.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits only for the last ``logits_to_keep`` positions (0 keeps all), or for the given indices.
        document_ids (`torch.LongTensor`, *optional*):
            Document of each token in packed rows; see `Llama3Model.forward`.

        Example:

        ```python
        >>> import torch
        >>> from hf_llama3 import Llama3Config, Llama3ForCausalLM
        >>> model = Llama3ForCausalLM(Llama3Config.from_preset("tiny")).eval()
        >>> out = model.generate(torch.tensor([[128000, 9906]]), max_new_tokens=4, do_sample=False)
        ```"""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            document_ids=document_ids,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        has_targets = labels is not None or shift_labels is not None
        if has_targets and self.config.loss_chunk_size > 0 and isinstance(logits_to_keep, int) and logits_to_keep == 0:
            loss = chunked_causal_lm_loss(
                hidden_states,
                self.lm_head.weight,
                labels,
                self.config.loss_chunk_size,
                num_items_in_batch=num_items_in_batch,
                shift_labels=shift_labels,
            )
            logits = None
        else:
            slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, slice_indices, :])
            loss = None
            if has_targets:
                loss = self.loss_function(
                    logits=logits,
                    labels=labels,
                    vocab_size=self.config.vocab_size,
                    num_items_in_batch=num_items_in_batch,
                    shift_labels=shift_labels,
                )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class Llama3ForSequenceClassification(Llama3PreTrainedModel):
    """Llama 3 with a linear head on the last attended token: the reward model of paper 4.1.2 (``num_labels=1``).

    The pooled position is the last token whose ``attention_mask`` is 1, so left and right padding both work;
    without a mask it is the last token that is not ``pad_token_id`` (``<|finetune_right_pad_id|>``).
    """

    def __init__(self, config: Llama3Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Llama3Model(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size, seq_len = logits.shape[:2]
        if attention_mask is not None:
            attended = attention_mask.to(logits.device).bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            attended = (input_ids != self.config.pad_token_id).to(logits.device)
        else:
            attended = torch.ones(batch_size, seq_len, dtype=torch.bool, device=logits.device)
        positions = torch.arange(seq_len, device=logits.device)
        last_attended = torch.where(attended, positions, -1).amax(dim=-1).clamp(min=0)
        pooled_logits = logits[torch.arange(batch_size, device=logits.device), last_attended]

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "Llama3ForCausalLM",
    "Llama3ForSequenceClassification",
    "Llama3Model",
    "Llama3PreTrainedModel",
]
