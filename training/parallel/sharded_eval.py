"""Forward-only evaluation through the training layout: held-out loss and greedy generation on the sharded model.

The long-context gates [3.4.2] (short-context recovery, needle-in-a-haystack) and the held-out loss run on the
training devices, every rank taking part, without any rank holding the whole model: each rank runs its pipeline
stages on its shards (FSDP gathers one decoder layer at a time and frees it after its forward; TP keeps its
slices), so the weights a rank holds during evaluation are its training shards plus one gathered layer.

Why not the ``torch.distributed.pipelining`` schedules: they fix the activation shapes at their first step and run
a fixed number of micro-batches, while generation grows the sequence by one token per forward. The stages' forward
is run here in stage order instead, the activations sent point to point to the pipeline rank holding the next stage
(the same transfer the schedule makes in its forward pass), and the result broadcast so every rank gets it.

Sequences are right-padded to a multiple of ``2 x cp x tp`` (context parallelism cuts ``2 x cp`` chunks, sequence
parallelism ``tp`` more); under causal attention a right pad never changes the positions before it, so the loss
(pads carry no target) and the next token are those of the unpadded sequence. Generation recomputes the whole
prefix at every token (no KV cache: a sharded cache per layout is not worth it for the few answer tokens the needle
gate reads). :class:`ShardedCausalLM` gives the sharded model the ``generate`` interface ``evaluation.needle`` uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from hf_llama3.modeling_llama3 import IGNORE_INDEX, chunked_causal_lm_loss, positions_from_document_ids

from .context_parallel import build_attention_mask, load_balanced_indices
from .dims import submesh

if TYPE_CHECKING:
    from .engine import ParallelTrainer


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _pad_right(tensor: torch.Tensor, multiple: int, value: int) -> torch.Tensor:
    extra = -tensor.shape[-1] % multiple
    return F.pad(tensor, (0, extra), value=value) if extra else tensor


@contextlib.contextmanager
def layerwise_gathering(trainer: ParallelTrainer) -> Iterator[None]:
    """FSDP frees each decoder layer right after its forward (training keeps them gathered for the backward,
    ``reshard_after_forward: false`` [3.3.2]); on exit every stage is resharded, so training resumes from shards."""
    layers = [
        layer for _, stage in trainer.stages for layer in stage.model.layers.values() if isinstance(layer, FSDPModule)
    ]
    for layer in layers:
        layer.set_reshard_after_forward(True)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_reshard_after_forward(trainer.config.fsdp.reshard_after_forward)
        for _, stage in trainer.stages:
            for module in stage.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()


class ShardedForward:
    """The forward of ``trainer``'s model across its layout (collective: every rank calls each method together)."""

    def __init__(self, trainer: ParallelTrainer):
        self.trainer = trainer
        self.dims = trainer.dims
        self.device = trainer.device
        mesh = trainer.mesh
        self.cp_rank = submesh(mesh, "cp").get_local_rank()
        self.tp_rank = submesh(mesh, "tp").get_local_rank()
        self.dp_rank = submesh(mesh, "dp").get_local_rank()
        self.pp_group = submesh(mesh, "pp").get_group() if self.dims.pp > 1 else None
        # Which pipeline rank runs each stage (looped or V schedules place them differently).
        mine = [index for index, _ in trainer.stages]
        owners: list[list[int] | None] = [mine]
        if self.pp_group is not None:
            owners = [None] * self.dims.pp
            dist.all_gather_object(owners, mine, group=self.pp_group)
        self.owner = {index: rank for rank, indices in enumerate(owners) for index in indices}
        self.pp_rank = dist.get_group_rank(self.pp_group, dist.get_rank()) if self.pp_group is not None else 0
        self.multiple = 2 * self.dims.cp * self.dims.tp

    def _run_stages(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask) -> torch.Tensor | None:
        """The last stage's output on the ranks holding it (``None`` elsewhere); activations move point to point."""
        stages = dict(self.trainer.stages)
        rows, local_seq = input_ids.shape
        hidden_shape = (rows, local_seq // self.dims.tp, self.trainer.model_config.hidden_size)
        hidden: torch.Tensor | None = input_ids if self.owner[0] == self.pp_rank else None
        for index, owner in sorted(self.owner.items()):
            if owner != self.pp_rank:
                continue
            if hidden is None:
                hidden = torch.empty(hidden_shape, device=self.device)
                dist.recv(hidden, group=self.pp_group, group_src=self.owner[index - 1])
            output = stages[index](hidden, position_ids=position_ids, attention_mask=mask)
            following = self.owner.get(index + 1)
            if following is None:
                return output
            if following == self.pp_rank:
                hidden = output
            else:
                # Sent in fp32: the next stage's FSDP casts its inputs to the compute dtype.
                dist.send(_full(output).float().contiguous(), group=self.pp_group, group_dst=following)
                hidden = None
        return None

    def _local(self, tensor: torch.Tensor) -> torch.Tensor:
        index = load_balanced_indices(tensor.shape[-1], self.dims.cp, self.cp_rank)
        return tensor[:, index].to(self.device)

    def _world_sum(self, value: torch.Tensor, counts: bool) -> torch.Tensor:
        """Sum over the world of ``value`` where ``counts`` (one copy per replica), zero elsewhere."""
        total = (value if counts else torch.zeros_like(value)).reshape(-1).to(self.device)
        dist.all_reduce(total)
        return total

    @torch.no_grad()
    def loss_sum(self, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """Summed next-token cross-entropy of ``batch`` (``input_ids``, optional ``document_ids`` and ``labels``,
        ``[rows, seq]``, the same on every rank) and its count of targets; the same on every rank."""
        input_ids = batch["input_ids"]
        rows, seq_len = input_ids.shape
        documents = batch.get("document_ids")
        positions = (
            positions_from_document_ids(documents) if documents is not None else torch.arange(seq_len).expand(rows, -1)
        )
        labels = F.pad(batch.get("labels", input_ids), (0, 1), value=IGNORE_INDEX)[:, 1:]
        num_targets = int((labels != IGNORE_INDEX).sum())
        # Data-parallel ranks split the rows when they can; otherwise each evaluates all rows.
        split = rows % self.dims.dp == 0
        if split:
            size = rows // self.dims.dp
            mine = slice(self.dp_rank * size, (self.dp_rank + 1) * size)
            input_ids, positions, labels = input_ids[mine], positions[mine], labels[mine]
            documents = documents[mine] if documents is not None else None
        input_ids = _pad_right(input_ids, self.multiple, 0)
        padded = input_ids.shape[-1]
        positions = _pad_right(positions, self.multiple, 0)
        labels = _pad_right(labels, self.multiple, IGNORE_INDEX)
        if documents is not None:  # the pad is a document of its own
            documents = _pad_right(documents, self.multiple, int(documents.max()) + 1)
        mask = build_attention_mask(padded, self.dims.cp, self.cp_rank, documents, input_ids.shape[0], self.device)
        vocab_parallel = self.dims.tp > 1 and self.trainer.config.loss_parallel
        with layerwise_gathering(self.trainer), loss_parallel() if vocab_parallel else contextlib.nullcontext():
            output = self._run_stages(self._local(input_ids), self._local(positions), mask)
            local = torch.zeros(())
            if output is not None:
                targets = self._local(labels)
                chunk = self.trainer.model_config.loss_chunk_size or targets.numel()
                if self.trainer.chunked_head:
                    head = next(stage.lm_head for _, stage in self.trainer.stages if stage.is_last)
                    local = chunked_causal_lm_loss(output, _full(head.weight), None, chunk, 1, shift_labels=targets)
                else:
                    from .engine import chunked_cross_entropy

                    local = _full(chunked_cross_entropy(output, targets, chunk))
        counts = output is not None and self.tp_rank == 0 and (split or self.dp_rank == 0)
        return float(self._world_sum(local.float(), counts)), num_targets

    @torch.no_grad()
    def next_token(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Greedy next token of each row of ``input_ids`` (``[rows, seq]``, one contiguous document per row), the
        same on every rank."""
        rows, seq_len = input_ids.shape
        padded = _pad_right(input_ids, self.multiple, 0)
        positions = torch.arange(padded.shape[-1]).expand(rows, -1)
        mask = build_attention_mask(padded.shape[-1], self.dims.cp, self.cp_rank, None, rows, self.device)
        index = load_balanced_indices(padded.shape[-1], self.dims.cp, self.cp_rank)
        holds_last = bool((index == seq_len - 1).any())
        with layerwise_gathering(self.trainer):
            output = self._run_stages(self._local(padded), self._local(positions), mask)
            token = torch.zeros(rows, dtype=torch.long)
            if output is not None and holds_last:
                last = output[:, int((index == seq_len - 1).nonzero())]
                if self.trainer.chunked_head:
                    head = next(stage.lm_head for _, stage in self.trainer.stages if stage.is_last)
                    last = F.linear(_full(last), _full(head.weight))
                token = _full(last).argmax(-1).cpu()
        counts = holds_last and output is not None and self.tp_rank == 0 and self.dp_rank == 0
        return self._world_sum(token, counts).cpu()


class ShardedCausalLM:
    """``trainer``'s sharded model with the slice of the transformers interface that ``evaluation.needle`` uses:
    ``config``, ``device``, ``training``/``eval()``/``train()`` and greedy ``generate`` (collective: every rank
    generates the same prompts together)."""

    def __init__(self, trainer: ParallelTrainer):
        self.forward = ShardedForward(trainer)
        self.config = trainer.model_config
        self.device = torch.device("cpu")  # prompts are built on the CPU; each rank moves its chunk itself
        self.training = False

    def eval(self) -> ShardedCausalLM:
        return self

    def train(self, mode: bool = True) -> ShardedCausalLM:
        return self

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy continuation of ``input_ids`` (one unpadded row) by up to ``max_new_tokens`` tokens, stopping
        after the end-of-sequence token, as ``GenerationMixin.generate(do_sample=False)`` does for one row."""
        if do_sample or input_ids.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
            raise ValueError("ShardedCausalLM.generate decodes one unpadded row greedily (do_sample=False).")
        eos = self.config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos])
        sequence = input_ids.cpu()
        for _ in range(max_new_tokens):
            token = self.forward.next_token(sequence)
            sequence = torch.cat([sequence, token[:, None]], dim=1)
            if int(token[0]) in stop:
                break
        return sequence


def held_out_loss(trainer: ParallelTrainer, batches: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean next-token loss of each held-out batch on the sharded model, and their mean under ``"mean"``; the same
    on every rank (collective)."""
    forward = ShardedForward(trainer)
    losses = {}
    for name, batch in batches.items():
        total, count = forward.loss_sum(batch)
        losses[name] = total / count
    losses["mean"] = sum(losses.values()) / len(losses)
    return losses
