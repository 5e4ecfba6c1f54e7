"""A slice of ``Llama3ForCausalLM`` that the parallelisms wrap: the whole model, or one pipeline stage.

A ``Llama3Stage`` adopts the model's own sub-modules and keeps their parameter names exactly
(``model.embed_tokens``, ``model.layers.<i>...``, ``model.norm``, ``lm_head``): the decoder layers move into an
``nn.ModuleDict`` keyed by their original index, so a stage holding layers 4..7 still names them
``model.layers.4`` .. ``model.layers.7``. That is what lets a distributed checkpoint saved under one pipeline
layout load under another, and export to a stock Hugging Face folder. The forward is the model's own
computation (embedding, RoPE tables, decoder layers, final norm, output projection) with the attention mask
and context-parallel group supplied from outside.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from hf_llama3 import Llama3ForCausalLM


class StageBody(nn.Module):
    """The decoder part of a stage under ``Llama3Model``'s attribute names (absent parts are ``None``)."""

    def __init__(
        self,
        embed_tokens: nn.Module | None,
        layers: dict[int, nn.Module],
        norm: nn.Module | None,
        rotary_emb: nn.Module,
    ) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleDict({str(i): layer for i, layer in layers.items()})
        self.norm = norm
        self.rotary_emb = rotary_emb


class Llama3Stage(nn.Module):
    """Layers ``layer_ids`` of ``causal_lm`` (plus the embedding if ``is_first``, the norm and head if ``is_last``).

    The sub-modules are taken from ``causal_lm``, not copied, and ``causal_lm`` is left unchanged: the stages of
    one pipeline rank are all cut from one (meta) model, and each holds only its own layers. Only the RoPE module
    (buffers of ``head_dim / 2`` floats) is copied, so that no module belongs to two stages.
    """

    def __init__(self, causal_lm: Llama3ForCausalLM, layer_ids: list[int], is_first: bool, is_last: bool) -> None:
        super().__init__()
        self.config = causal_lm.config
        self.layer_ids = list(layer_ids)
        self.is_first, self.is_last = is_first, is_last
        base = causal_lm.model
        self.model = StageBody(
            embed_tokens=base.embed_tokens if is_first else None,
            layers={i: base.layers[i] for i in layer_ids},
            norm=base.norm if is_last else None,
            rotary_emb=copy.deepcopy(base.rotary_emb),
        )
        self.lm_head = causal_lm.lm_head if is_last else None
        self.cp_group: dist.ProcessGroup | None = None
        # The engine's chunked loss applies lm_head itself, chunk by chunk: the last stage then returns the final
        # hidden states and the [tokens, vocab] logits are never built.
        self.head_in_loss = False

    def forward(
        self,
        inputs: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``inputs``: token ids on the first stage, hidden states elsewhere. Returns logits on the last stage,
        hidden states elsewhere. ``position_ids`` ``[batch, local_seq]``; ``attention_mask`` a boolean
        ``[batch, 1, local_seq, seq]`` mask or ``None`` for causal attention on a contiguous sequence."""
        hidden = self.model.embed_tokens(inputs) if self.is_first else inputs
        if position_ids is None:
            raise ValueError("Llama3Stage needs position_ids (the positions of the local tokens).")
        position_embeddings = self.model.rotary_emb(hidden, position_ids=position_ids)
        for layer in self.model.layers.values():
            hidden = layer(
                hidden,
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                cp_group=self.cp_group,
            )
        if self.is_last:
            hidden = self.model.norm(hidden)
            return hidden if self.head_in_loss else self.lm_head(hidden)
        return hidden
