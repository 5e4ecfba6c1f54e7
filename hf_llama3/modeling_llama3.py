"""Llama 3 (Llama 3.1 architecture) for transformers: the stock Llama blocks plus what the paper adds.

The model is the decoder described in "The Llama 3 Herd of Models" (arXiv 2407.21783, section 3.2):
pre-norm RMSNorm blocks, grouped-query attention (8 key/value heads in every released size), SwiGLU
feed-forward, no biases, rotary position embeddings with base 500000 and the Llama 3.1 frequency scaling
that extends the context from 8K to 128K tokens. All of that is exactly transformers' Llama, so the classes
here inherit ``LlamaModel`` / ``LlamaForCausalLM`` and their blocks (attention, decoder layer, RoPE through
transformers' rope functions, the cache API, masks, generation, continuous batching) and parameter names
are ``LlamaForCausalLM``'s key for key. Whatever the installed transformers does for Llama, this model does:
an upstream API change (such as the ``past_key_values`` -> ``cache`` rename of 5.24) reaches it for free.

Only three things are overridden, each because the paper or this project needs it:
- Document masking [3.2]: rows that pack several documents (``document_ids``, or ``position_ids`` restarting at
  0) attend only within each document, so each document gets exactly its stand-alone logits.
- A memory-lean loss: with ``labels``, the output projection and cross-entropy run chunk by chunk and never
  build the ``[tokens, 128256]`` fp32 logits (``config.loss_chunk_size``).
- The reward head [4.1.2] pools the last *attended* token (by ``attention_mask``), so left padding works too.

This file and ``configuration_llama3.py`` are what ``save_pretrained`` copies next to a checkpoint for
``trust_remote_code=True`` loading, so they import only transformers and torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    ModelOutput,
    SequenceClassifierOutputWithPast,
)
from transformers.models.llama.modeling_llama import (
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, logging

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
# The cache argument's names across transformers 5.x: `cache` since 5.24, `past_key_values` before (and accepted,
# deprecated, until 5.40). Forward methods here pass it through untouched in **kwargs; they only look at it.
_CACHE_KWARGS = ("cache", "past_key_values")


def _cache_in(kwargs: dict[str, Any]) -> Any:
    return next((kwargs[name] for name in _CACHE_KWARGS if kwargs.get(name) is not None), None)


def _output_fields(outputs: ModelOutput) -> dict[str, Any]:
    """The base model's outputs other than the last hidden state, under the installed version's field names."""
    return {key: value for key, value in outputs.items() if key != "last_hidden_state"}


class Llama3PreTrainedModel(LlamaPreTrainedModel):
    """transformers' Llama pre-trained model (init, attention backends, plans) with our config and save rules."""

    config_class = Llama3Config
    config: Llama3Config
    # The RoPE tables are recomputed, never loaded (Meta's checkpoints carry a stale `rope.freqs`).
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq", r"rope\.freqs"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with every Llama 3 class in ``auto_map`` so that any head of the
        saved folder loads with ``trust_remote_code=True`` (transformers alone records only the saved class)."""
        self.config.auto_map = {**REMOTE_CODE_AUTO_MAP, **(self.config.auto_map or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)


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


class Llama3Model(Llama3PreTrainedModel, LlamaModel):
    """transformers' ``LlamaModel`` (embeddings, decoder layers, final norm) with document masking for packed rows."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        document_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        r"""``LlamaModel.forward``; every other argument (the cache, ``use_cache``, output flags) passes through.

        document_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            For rows that pack several documents: the document each token belongs to. Attention is restricted to
            the token's own document and, unless ``position_ids`` are given, positions restart at each document.
            Rows packed with ``position_ids`` restarting at 0 (and no ``attention_mask``) get the same document
            masking without ``document_ids`` (transformers' packed-sequence detection).
        """
        cache_given = _cache_in(kwargs) is not None
        if document_ids is not None:
            if (input_ids is None) ^ (inputs_embeds is not None):
                raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
            if cache_given:
                raise ValueError("document_ids mask packed training rows; they cannot be combined with a KV cache.")
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.embed_tokens(input_ids), None
            if position_ids is None:
                position_ids = positions_from_document_ids(document_ids)
            attention_mask = create_causal_mask(
                self.config,
                inputs_embeds,
                attention_mask if attention_mask is not None else torch.ones_like(document_ids),
                None,  # no cache (the 4th argument is named `cache` from 5.24, `past_key_values` before)
                position_ids=position_ids,
                and_mask_function=document_mask_function(document_ids),
            )
        packed = document_ids is not None or (
            position_ids is not None
            and attention_mask is None
            and find_packed_sequence_indices(position_ids) is not None
        )
        # A cache turns off transformers' packed-sequence masking, and training never reads one: neither gets a
        # cache made for it.
        if (packed or self.training) and not cache_given:
            kwargs["use_cache"] = False
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
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


class Llama3ForCausalLM(Llama3PreTrainedModel, LlamaForCausalLM, GenerationMixin):
    """transformers' ``LlamaForCausalLM`` on `Llama3Model`, with the chunked loss when ``labels`` are given.

    Generation (every cache kind, beam search, assisted and compiled decoding, ``generate_batch``) is
    transformers' own: without ``labels`` the forward is ``LlamaForCausalLM.forward`` unchanged. (``GenerationMixin``
    is listed explicitly, as transformers requires of generative classes, though ``LlamaForCausalLM`` brings it.)
    """

    def __init__(self, config: Llama3Config) -> None:
        # LlamaForCausalLM's constructor with our base model (its own would build a stock LlamaModel first).
        super(LlamaForCausalLM, self).__init__(config)
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
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
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
        if document_ids is not None:
            kwargs["document_ids"] = document_ids
        has_targets = labels is not None or kwargs.get("shift_labels") is not None
        chunked = self.config.loss_chunk_size > 0 and isinstance(logits_to_keep, int) and logits_to_keep == 0
        if not (has_targets and chunked):
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        loss = chunked_causal_lm_loss(
            outputs.last_hidden_state,
            self.lm_head.weight,
            labels,
            self.config.loss_chunk_size,
            num_items_in_batch=num_items_in_batch,
            shift_labels=shift_labels,
        )
        return CausalLMOutputWithPast(loss=loss, logits=None, **_output_fields(outputs))


class Llama3ForSequenceClassification(Llama3PreTrainedModel):
    """Llama 3 with a linear head on the last attended token: the reward model of paper 4.1.2 (``num_labels=1``).

    The pooled position is the last token whose ``attention_mask`` is 1, so left and right padding both work;
    without a mask it is the last token that is not ``pad_token_id`` (``<|finetune_right_pad_id|>``). (transformers'
    generic head pools the last non-pad token of ``input_ids`` only, which a left-padded batch gets wrong.)
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
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size, seq_len = logits.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 2:
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
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled_logits, **_output_fields(outputs))


__all__ = [
    "Llama3ForCausalLM",
    "Llama3ForSequenceClassification",
    "Llama3Model",
    "Llama3PreTrainedModel",
]
