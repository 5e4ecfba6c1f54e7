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

import torch
import torch.distributed as dist
from torch import nn

from hf_llama3 import Llama3ForCausalLM


class Llama3Stage(nn.Module):
    """Layers ``layer_ids`` of ``causal_lm`` (plus the embedding if ``is_first``, the norm and head if ``is_last``).

    The sub-modules are taken from ``causal_lm`` (not copied): build one ``Llama3ForCausalLM`` per stage.
    """

    def __init__(self, causal_lm: Llama3ForCausalLM, layer_ids: list[int], is_first: bool, is_last: bool) -> None:
        super().__init__()
        self.config = causal_lm.config
        self.layer_ids = list(layer_ids)
        self.is_first, self.is_last = is_first, is_last
        base = causal_lm.model
        base.layers = nn.ModuleDict({str(i): base.layers[i] for i in layer_ids})
        if not is_first:
            base.embed_tokens = None
        if not is_last:
            base.norm = None
        self.model = base
        self.lm_head = causal_lm.lm_head if is_last else None
        self.cp_group: dist.ProcessGroup | None = None

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
            hidden = self.lm_head(self.model.norm(hidden))
        return hidden
