"""The 4D-parallel training engine: build the model on the mesh, ``step(batch) -> loss``, save and load.

``ParallelTrainer`` is the small API the pre-training recipe builds on. Every rank passes the same *global*
batch (``input_ids``, optional ``labels`` and ``document_ids`` of shape ``[batch, seq]``); the engine takes the
rank's data-parallel rows and context-parallel chunks itself. The loss is the mean next-token cross-entropy
over the whole global batch, exactly as a single process computes it, so any layout reproduces the
single-process run (tests/distributed check it to 1e-5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from hf_llama3 import Llama3Config
from hf_llama3.modeling_llama3 import IGNORE_INDEX, positions_from_document_ids

from .context_parallel import build_attention_mask, load_balanced_indices
from .deferred_init import build_meta_model, materialize
from .dims import ParallelDims, submesh
from .fsdp import DTYPES, FSDPConfig
from .hf_checkpoint_load import check_hf_folder, load_hf_folder
from .parallelize import parallelize_llama, uses_fsdp
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
        activation_checkpointing: Recompute each decoder layer in backward.
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
    activation_checkpointing: bool = False
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
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"EngineConfig.device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.init_from is not None:
            check_hf_folder(self.init_from)


def split_batch(
    batch: dict[str, torch.Tensor],
    dims: ParallelDims,
    mesh: DeviceMesh,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, Any], torch.Tensor, int]:
    """This rank's share of a global batch: its data-parallel rows and context-parallel chunks of ``input_ids``
    and ``position_ids``, its attention mask, its shifted labels, and the global count of predicted tokens."""
    input_ids = batch["input_ids"]
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}.")
    batch_size, seq_len = input_ids.shape
    dims.validate_batch(batch_size, seq_len)
    labels = batch.get("labels", input_ids)
    document_ids = batch.get("document_ids")
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = (
            positions_from_document_ids(document_ids)
            if document_ids is not None
            else torch.arange(seq_len).expand(batch_size, -1)
        )
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    num_targets = int((shift_labels != IGNORE_INDEX).sum())
    if num_targets == 0:
        raise ValueError("The batch has no labels to predict (all are -100).")

    rows = batch_size // dims.dp
    dp_rank = submesh(mesh, "dp").get_local_rank()
    row_slice = slice(dp_rank * rows, (dp_rank + 1) * rows)
    cp_rank = submesh(mesh, "cp").get_local_rank()
    index = load_balanced_indices(seq_len, dims.cp, cp_rank)
    docs = document_ids[row_slice] if document_ids is not None else None
    local = {
        "input_ids": input_ids[row_slice][:, index],
        "position_ids": position_ids[row_slice][:, index],
        "attention_mask": build_attention_mask(seq_len, dims.cp, cp_rank, docs, rows, dtype=dtype),
    }
    local = {k: v.to(device) if v is not None else None for k, v in local.items()}
    return local, shift_labels[row_slice][:, index].to(device), num_targets


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
        for _, stage in self.stages:
            stage.train()
        opt = config.optimizer
        self.optimizers = [
            torch.optim.AdamW(
                stage.parameters(), lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay
            )
            for _, stage in self.stages
        ]
        self.lr_schedulers = [torch.optim.lr_scheduler.LambdaLR(o, opt.lr_factor) for o in self.optimizers]
        # The pipeline schedule is built at the first step and rebuilt when the microbatch shape changes (batch
        # or sequence-length ramps [3.4.1]): pipeline stages fix their activation shapes at their first step.
        self.schedule = None
        self._schedule_shape: tuple[int, ...] | None = None
        self.last_grad_norm: float | None = None
        self._loss_scale = 1.0
        self.step_count = 0
        # Attention masks are built in the dtype the layers compute in (FSDP's param dtype when sharded).
        self.compute_dtype = DTYPES[config.fsdp.param_dtype] if uses_fsdp(self.dims, config.fsdp) else torch.float32

    @property
    def has_last_stage(self) -> bool:
        """Whether this rank computes the loss (holds the output layer)."""
        return any(stage.is_last for _, stage in self.stages)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of a (micro)batch, scaled so gradients summed over ranks give the global mean."""
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(0, 1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return loss * self._loss_scale

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimizer step on the global ``batch``; returns its mean loss (the same value on every rank)."""
        local, labels, num_targets = split_batch(batch, self.dims, self.mesh, self.device, self.compute_dtype)
        # FSDP averages gradients over its dp x cp ranks; each rank's summed loss is scaled to undo that.
        fsdp_ranks = self.dims.dp * self.dims.cp if self.dims.fsdp_enabled else 1
        self._loss_scale = fsdp_ranks / num_targets
        vocab_parallel = self.dims.tp > 1 and self.config.loss_parallel
        with loss_parallel() if vocab_parallel else contextlib.nullcontext():
            if self.dims.pp == 1:
                _, stage = self.stages[0]
                logits = stage(
                    local["input_ids"], position_ids=local["position_ids"], attention_mask=local["attention_mask"]
                )
                loss = self._loss(logits, labels)
                loss.backward()
                local_loss = _full(loss.detach())
            else:
                if self._schedule_shape != tuple(local["input_ids"].shape):
                    pp_mesh = submesh(self.mesh, "pp")
                    self.schedule = build_schedule(self.stages, self.dims, pp_mesh, self._loss, self.device)
                    self._schedule_shape = tuple(local["input_ids"].shape)
                losses: list[torch.Tensor] = []
                self.schedule.step(
                    local["input_ids"],
                    target=labels,
                    losses=losses,
                    position_ids=local["position_ids"],
                    attention_mask=local["attention_mask"],
                )
                local_loss = sum(_full(x.detach()) for x in losses) if self.has_last_stage else torch.zeros(())
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

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The unsharded weights of the whole model with Hugging Face names, on every rank (collective)."""
        local: dict[str, torch.Tensor] = {}
        for _, stage in self.stages:
            for name, tensor in stage.state_dict().items():
                local[name] = _full(tensor).detach().cpu()
        if self.dims.pp == 1:
            return local
        parts: list[dict[str, torch.Tensor] | None] = [None] * self.dims.pp
        dist.all_gather_object(parts, local, group=submesh(self.mesh, "pp").get_group())
        return {name: tensor for part in parts for name, tensor in part.items()}
