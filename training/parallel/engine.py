"""The 4D-parallel training engine: build the model on the mesh, ``step(batch) -> loss``, save and load.

``ParallelTrainer`` is the small API the pre-training recipe builds on. Every rank passes the *global* batch
(``input_ids``, optional ``labels`` and ``document_ids`` of shape ``[batch, seq]``), or with ``step(rows,
local=True)`` only its data-parallel rows (``local_rows`` says which), so no rank reads the data of another; the
engine takes the context-parallel chunks itself. The rows are trained as micro-batches of
``ParallelDims.micro_batch_size`` whose gradients accumulate without reduction until the last one. The loss is
the mean next-token cross-entropy over the whole global batch (normalised by its count of target tokens), exactly
as a single process computes it, so any layout and any number of micro-batches reproduce the single-process run
(tests/distributed check it to 1e-5). It never builds the ``[tokens, vocab]`` logits: without TP the model's own
chunked output projection + cross-entropy runs on the final hidden states; with TP the vocab-sharded logits go
through ``loss_parallel`` chunk by chunk, upcast to fp32 one chunk at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import operator
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.utils.checkpoint import checkpoint

from hf_llama3 import Llama3Config
from hf_llama3.modeling_llama3 import IGNORE_INDEX, chunked_causal_lm_loss, positions_from_document_ids

from .context_parallel import build_attention_mask, load_balanced_indices
from .deferred_init import build_meta_model, materialize
from .dims import ParallelDims, submesh
from .fsdp import FSDPConfig
from .hf_checkpoint_load import check_hf_folder, load_hf_folder
from .parallelize import checkpoint_mode, parallelize_llama
from .pipeline_parallel import build_schedule

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay [3.4.1: peak 8e-5, 8,000 warmup steps, cosine to 8e-7].

    Args:
        lr: Peak learning rate.
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: Decoupled weight decay.
        warmup_steps: Linear warmup from 0 to ``lr``.
        decay_steps: Steps of the cosine decay after warmup (0: constant after warmup).
        min_lr_ratio: Final LR as a fraction of the peak (8e-7 / 8e-5 = 0.01 in the paper).
        max_grad_norm: Clip the global gradient L2 norm to this (0: off); 1.0 as in Llama 2 (Touvron et al.
            2023, section 2.2), the paper does not restate it.
    """

    lr: float = 8e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 0
    decay_steps: int = 0
    min_lr_ratio: float = 0.01
    max_grad_norm: float = 1.0

    # Bounds the shared recipe loader (hf_llama3.recipe_loader) checks when a recipe's `optimizer:` is loaded.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "lr": {"gt": 0},
        "betas": {"min": 0, "lt": 1},
        "eps": {"gt": 0},
        "weight_decay": {"min": 0},
        "warmup_steps": {"min": 0},
        "decay_steps": {"min": 0},
        "min_lr_ratio": {"min": 0, "max": 1},
        "max_grad_norm": {"min": 0},
    }

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        bad_counts = self.warmup_steps < 0 or self.decay_steps < 0 or self.max_grad_norm < 0
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or bad_counts:
            raise ValueError(
                f"OptimizerConfig needs lr > 0, 0 <= min_lr_ratio <= 1, non-negative step counts and max_grad_norm, "
                f"got {self}."
            )

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak LR at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay_steps == 0:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / self.decay_steps)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclasses.dataclass
class EngineConfig:
    """Everything the engine needs besides the model config.

    Args:
        parallel: The layout (``ParallelDims`` or its fields as a dict).
        fsdp: FSDP2 options (``FSDPConfig`` or a dict).
        optimizer: ``OptimizerConfig`` or a dict.
        activation_checkpointing: ``True`` or ``"full"``: recompute each decoder layer in backward;
            ``"selective"``: per-op, keep the matmul and attention outputs and recompute the rest
            (``parallelize.SAVED_OPS``); ``False``: keep every activation.
        compile: ``torch.compile`` each decoder layer.
        loss_parallel: Vocab-parallel cross-entropy under TP (the full logits are never gathered), with or without PP.
        seed: Seed of the model initialisation: each module's weights are drawn from ``(seed, module name)``
            (``training.parallel.deferred_init``), so every layout starts from the same weights.
        init_from: A Hugging Face folder (ours or stock ``LlamaForCausalLM``; safetensors, sharded or not) whose
            weights replace the initialisation: continued pre-training of a released checkpoint. Each rank reads
            only its shards (``training.parallel.hf_checkpoint_load``).
        device: ``cpu`` or ``cuda``.
    """

    parallel: ParallelDims | dict = dataclasses.field(default_factory=ParallelDims)
    fsdp: FSDPConfig | dict = dataclasses.field(default_factory=FSDPConfig)
    optimizer: OptimizerConfig | dict = dataclasses.field(default_factory=OptimizerConfig)
    activation_checkpointing: bool | str = False
    compile: bool = False
    loss_parallel: bool = True
    seed: int = 0
    init_from: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name, cls in (("parallel", ParallelDims), ("fsdp", FSDPConfig), ("optimizer", OptimizerConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise ValueError(
                    f"EngineConfig.{name} must be a {cls.__name__} or a dict, got {type(value).__name__}."
                )
        checkpoint_mode(self.activation_checkpointing)  # validates the value
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"EngineConfig.device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.init_from is not None:
            check_hf_folder(self.init_from)


def local_rows(batch_size: int, dims: ParallelDims, mesh: DeviceMesh) -> slice:
    """The rows of a global batch of ``batch_size`` rows that this rank's data-parallel slice trains on."""
    if batch_size % dims.dp:
        raise ValueError(f"Global batch size {batch_size} must be divisible by the data-parallel degree {dims.dp}.")
    rows = batch_size // dims.dp
    dp_rank = submesh(mesh, "dp").get_local_rank()
    return slice(dp_rank * rows, (dp_rank + 1) * rows)


@dataclasses.dataclass
class LocalBatch:
    """This rank's share of a global batch.

    Attributes:
        input_ids, position_ids, labels: ``[rows, local_seq]``: the data-parallel rows, cut to this rank's
            context-parallel chunks; ``labels`` are already shifted (the next token of each position).
        document_ids: ``[rows, seq]`` of the whole rows (every key's document is needed by the mask), or ``None``.
        seq_len: Tokens per row before the context-parallel cut.
        batch_size: Rows of the global batch.
        num_targets: Target tokens (labels other than -100) of the global batch: the loss normaliser.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    document_ids: torch.Tensor | None
    seq_len: int
    batch_size: int
    num_targets: int


def split_batch(
    batch: dict[str, torch.Tensor], dims: ParallelDims, mesh: DeviceMesh, device: torch.device, local: bool = False
) -> LocalBatch:
    """This rank's :class:`LocalBatch` of ``batch``: the global batch, or (``local``) only this data-parallel
    rank's rows, whose target count is then summed over the data-parallel group (collective)."""
    input_ids = batch["input_ids"]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
    rows, seq_len = input_ids.shape
    batch_size = rows * dims.dp if local else rows
    dims.validate_batch(batch_size, seq_len)
    labels = batch.get("labels", input_ids)
    document_ids = batch.get("document_ids")
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = (
            positions_from_document_ids(document_ids)
            if document_ids is not None
            else torch.arange(seq_len).expand(rows, -1)
        )
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    mine = slice(None) if local else local_rows(batch_size, dims, mesh)
    if local and dims.dp > 1:
        count = (shift_labels != IGNORE_INDEX).sum().reshape(1).to(device)
        dist.all_reduce(count, group=submesh(mesh, "dp").get_group())
        num_targets = int(count)
    else:
        num_targets = int((shift_labels != IGNORE_INDEX).sum())
    if num_targets == 0:
        raise ValueError("The batch has no labels to predict (all are -100).")
    index = load_balanced_indices(seq_len, dims.cp, submesh(mesh, "cp").get_local_rank())
    return LocalBatch(
        input_ids=input_ids[mine][:, index].to(device),
        position_ids=position_ids[mine][:, index].to(device),
        labels=shift_labels[mine][:, index].to(device),
        document_ids=document_ids[mine].to(device) if document_ids is not None else None,
        seq_len=seq_len,
        batch_size=batch_size,
        num_targets=num_targets,
    )


def _sum_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Summed cross-entropy of ``[batch, seq, vocab]`` logits (vocab-sharded DTensors under ``loss_parallel``),
    ``chunk_size`` tokens at a time: each chunk is upcast to fp32 inside a checkpoint that is recomputed in
    backward, so neither an fp32 copy of the logits nor fp32 log-probabilities of all tokens are kept."""
    flat, targets = logits.flatten(0, 1), labels.flatten(0, 1)
    parts = [
        checkpoint(
            _sum_cross_entropy,
            flat[start : start + chunk_size],
            targets[start : start + chunk_size],
            use_reentrant=False,
        )
        for start in range(0, flat.shape[0], chunk_size)
    ]
    return functools.reduce(operator.add, parts)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class ParallelTrainer:
    """A ``Llama3ForCausalLM`` trained under a 4D-parallel layout.

    Needs an initialised default process group whose size matches ``config.parallel`` (one process with
    ``world_size=1`` works too). Attributes: ``mesh``, ``stages`` (this rank's ``(stage_index, Llama3Stage)``),
    ``optimizers`` and ``lr_schedulers`` (one per stage), ``step_count``.
    """

    def __init__(self, model_config: Llama3Config, config: EngineConfig):
        self.model_config = model_config
        self.config = config
        self.dims: ParallelDims = config.parallel
        self.device = torch.device(config.device, torch.cuda.current_device()) if config.device == "cuda" else None
        self.device = self.device or torch.device("cpu")
        self.mesh = self.dims.build_mesh(config.device)
        # Deferred init: the whole model exists only on the meta device; each rank allocates and fills its shards.
        model = build_meta_model(model_config)
        init_fn = model._init_weights
        self.stages = parallelize_llama(
            model,
            self.dims,
            self.mesh,
            fsdp=config.fsdp,
            activation_checkpointing=config.activation_checkpointing,
            compile_layers=config.compile,
            loss_parallel=config.loss_parallel,
        )
        del model
        modules = [stage for _, stage in self.stages]
        materialize(modules, init_fn, config.seed, self.device, parameters=config.init_from is None)
        if config.init_from is not None:
            load_hf_folder(self.stages, config.init_from)
        # Without TP the last stage returns its final hidden states and the loss applies lm_head chunk by chunk.
        self.chunked_head = self.dims.tp == 1
        for _, stage in self.stages:
            stage.train()
            stage.head_in_loss = self.chunked_head
        opt = config.optimizer
        self.optimizers = [
            torch.optim.AdamW(
                stage.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
            )
            for _, stage in self.stages
        ]
        self.lr_schedulers = [torch.optim.lr_scheduler.LambdaLR(o, opt.lr_factor) for o in self.optimizers]
        # The pipeline schedule is built at the first step and rebuilt when the microbatch shape or count changes
        # (batch or sequence-length ramps [3.4.1]): pipeline stages fix their activation shapes at their first step.
        self.schedule = None
        self._schedule_key: tuple[int, ...] | None = None
        self.last_grad_norm: float | None = None
        self._loss_scale = 1.0
        self.step_count = 0
        self._cp_rank = submesh(self.mesh, "cp").get_local_rank()

    @property
    def has_last_stage(self) -> bool:
        """Whether this rank computes the loss (holds the output layer)."""
        return any(stage.is_last for _, stage in self.stages)

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a global batch of ``batch_size`` rows this rank trains on (pass them to ``step(local=True)``)."""
        return local_rows(batch_size, self.dims, self.mesh)

    def _loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of a micro-batch, scaled so gradients summed over ranks give the global mean.

        ``output``: the final hidden states (no TP: the model's chunked output projection + cross-entropy, which
        accumulates in fp32) or the logits (TP: vocab-sharded under ``loss_parallel``)."""
        chunk = self.model_config.loss_chunk_size or labels.numel()
        if self.chunked_head:
            head = next(stage.lm_head for _, stage in self.stages if stage.is_last)
            # Under FSDP the head's weight is the gathered one here: the root keeps it after its forward.
            return chunked_causal_lm_loss(
                output, head.weight, None, chunk, num_items_in_batch=1 / self._loss_scale, shift_labels=labels
            )
        return chunked_cross_entropy(output, labels, chunk) * self._loss_scale

    def _attention_mask(self, data: LocalBatch, rows: slice) -> torch.Tensor | None:
        docs = data.document_ids[rows] if data.document_ids is not None else None
        count = data.input_ids[rows].shape[0]
        return build_attention_mask(data.seq_len, self.dims.cp, self._cp_rank, docs, count, device=self.device)

    def _accumulate(self, data: LocalBatch, count: int) -> torch.Tensor:
        """Forward and backward of ``count`` micro-batches on the single stage; gradients are reduced after the
        last one only (FSDP's gradient-sync switch). Returns the summed loss."""
        _, stage = self.stages[0]
        size = data.input_ids.shape[0] // count
        total = torch.zeros((), device=self.device)
        for index in range(count):
            rows = slice(index * size, (index + 1) * size)
            if isinstance(stage, FSDPModule):
                stage.set_requires_gradient_sync(index == count - 1)
            output = stage(
                data.input_ids[rows],
                position_ids=data.position_ids[rows],
                attention_mask=self._attention_mask(data, rows),
            )
            loss = self._loss(output, data.labels[rows])
            loss.backward()
            total += _full(loss.detach())
        return total

    def _pipeline(self, data: LocalBatch, count: int) -> torch.Tensor:
        """The local rows as ``count`` microbatches of the pipeline schedule; returns the summed loss (zero on
        ranks without the last stage)."""
        key = (*data.input_ids.shape, count)
        if self._schedule_key != key:
            dims = dataclasses.replace(self.dims, pp_microbatches=count, micro_batch_size=None)
            self.schedule = build_schedule(self.stages, dims, submesh(self.mesh, "pp"), self._loss, self.device)
            self._schedule_key = key
        losses: list[torch.Tensor] = []
        self.schedule.step(
            data.input_ids,
            target=data.labels,
            losses=losses,
            position_ids=data.position_ids,
            attention_mask=self._attention_mask(data, slice(None)),
        )
        return sum(_full(x.detach()) for x in losses) if self.has_last_stage else torch.zeros((), device=self.device)

    def step(self, batch: dict[str, torch.Tensor], local: bool = False) -> float:
        """One optimizer step on a global batch: ``batch`` is the whole of it, or with ``local`` only this rank's
        rows (``local_rows``). Returns its mean loss (the same value on every rank)."""
        data = split_batch(batch, self.dims, self.mesh, self.device, local=local)
        # FSDP averages gradients over its dp x cp ranks; each rank's summed loss is scaled to undo that.
        fsdp_ranks = self.dims.dp * self.dims.cp if self.dims.fsdp_enabled else 1
        self._loss_scale = fsdp_ranks / data.num_targets
        count = self.dims.num_microbatches(data.batch_size)
        vocab_parallel = self.dims.tp > 1 and self.config.loss_parallel
        with loss_parallel() if vocab_parallel else contextlib.nullcontext():
            local_loss = self._accumulate(data, count) if self.dims.pp == 1 else self._pipeline(data, count)
        if self.config.optimizer.max_grad_norm > 0:
            self.last_grad_norm = self.clip_grad_norm(self.config.optimizer.max_grad_norm)
        for optimizer, scheduler in zip(self.optimizers, self.lr_schedulers):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        self.step_count += 1
        # Sum the per-rank shares over the whole world; tensor-parallel ranks hold identical copies.
        total = (local_loss.float() / fsdp_ranks).reshape(1).to(self.device)
        dist.all_reduce(total)
        return float(total) / self.dims.tp

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so their global L2 norm (over every shard and pipeline stage) is at most
        ``max_norm``; returns the norm before clipping."""
        parameters = [p for _, stage in self.stages for p in stage.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters], foreach=True)
        norm = _full(norm)
        if self.dims.pp > 1:
            # Each pipeline rank holds different layers: add the squared norms.
            squared = norm.pow(2).reshape(1)
            dist.all_reduce(squared, group=submesh(self.mesh, "pp").get_group())
            norm = squared.sqrt()[0]
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm, foreach=True)
        return float(norm)

    def model_state(self) -> dict[str, torch.Tensor]:
        """This rank's part of the weights under Hugging Face names, without communication: DTensor shards under
        FSDP/TP, the tensors of its own stages under PP (what ``training.parallel.hf_export`` and the Polyak
        average take)."""
        return {name: tensor for _, stage in self.stages for name, tensor in stage.state_dict().items()}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded weights of the whole model with Hugging Face names, on every rank (collective). Every rank
        then holds a full fp32 copy: for tests and small models only; evaluation, Polyak averaging and the export
        work on the shards (``sharded_eval``, ``polyak``, ``hf_export``)."""
        local: dict[str, torch.Tensor] = {}
        for _, stage in self.stages:
            for name, tensor in stage.state_dict().items():
                local[name] = _full(tensor).detach().cpu()
        if self.dims.pp == 1:
            return local
        parts: list[dict[str, torch.Tensor] | None] = [None] * self.dims.pp
        dist.all_gather_object(parts, local, group=submesh(self.mesh, "pp").get_group())
        return {name: tensor for part in parts for name, tensor in part.items()}
