"""The 4D-parallel layout: degrees, validation against world size and model shape, and the named DeviceMesh.

The paper orders the dimensions [TP, CP, PP, DP] from innermost to outermost [3.3.2]: tensor parallelism
needs the fastest links, data parallelism tolerates the slowest. The mesh is laid out the same way, outermost
first: ``("dp_replicate", "dp_shard", "pp", "cp", "tp")``. FSDP shards over ``dp_shard x cp`` (context-parallel
ranks hold the same weights, so they can share their shards), optionally replicated over ``dp_replicate`` (HSDP).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import ClassVar

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

logger = logging.getLogger(__name__)

MESH_DIM_NAMES = ("dp_replicate", "dp_shard", "pp", "cp", "tp")
PIPELINE_SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
# Fields that are counts (integers >= 1); the last two may be None (one follows from the other and the batch).
COUNT_FIELDS = (
    "dp_replicate",
    "dp_shard",
    "cp",
    "tp",
    "pp",
    "pp_virtual_stages",
    "pp_microbatches",
    "micro_batch_size",
)


@dataclasses.dataclass
class ParallelDims:
    """Degrees of each parallel dimension; their product must equal the world size.

    Args:
        dp_replicate: Data-parallel replicas (HSDP's outer dimension; gradients all-reduced between them).
        dp_shard: Fully-sharded data-parallel degree (FSDP2 shards parameters, gradients and optimizer state).
        cp: Context-parallel degree: the sequence is cut into ``2 * cp`` chunks, rank i holds i and 2cp-1-i [3.3.2].
        tp: Tensor-parallel degree (Megatron column/row split with sequence parallelism).
        pp: Pipeline-parallel degree.
        pp_schedule: ``gpipe``, ``1f1b`` or ``interleaved_1f1b`` (the paper's schedule, [3.3.2]).
        pp_virtual_stages: Model chunks per pipeline rank (> 1 only with ``interleaved_1f1b``).
        pp_microbatches: Micro-batches per step (default: pp) when ``micro_batch_size`` is not set; the local batch
            must divide into them.
        micro_batch_size: Rows per forward on each data-parallel rank. The global batch is reached by accumulating
            ``batch / dp / micro_batch_size`` micro-batches (with PP they are the schedule's microbatches, the
            paper's tunable N [3.3.2]), so the batch ramp [3.4.1] changes their number, never the per-GPU memory.
            Excludes ``pp_microbatches``.
        pp_balance: Put one transformer layer fewer on the first and on the last stage, which also hold the
            embedding and the output layer + loss [3.3.2, "Memory and computation imbalance"].
    """

    dp_replicate: int = 1
    dp_shard: int = 1
    cp: int = 1
    tp: int = 1
    pp: int = 1
    pp_schedule: str = "1f1b"
    pp_virtual_stages: int = 1
    pp_microbatches: int | None = None
    pp_balance: bool = True
    micro_batch_size: int | None = None

    # Bounds the shared recipe loader (hf_llama3.recipe_loader) checks when a recipe's `parallel:` is loaded.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {name: {"min": 1} for name in COUNT_FIELDS}

    def __post_init__(self) -> None:
        if self.micro_batch_size is not None and self.pp_microbatches is not None:
            raise ValueError(
                f"Set one of micro_batch_size ({self.micro_batch_size} rows per forward) and pp_microbatches "
                f"({self.pp_microbatches} per step): the other follows from the batch size."
            )
        if self.micro_batch_size is None:
            self.pp_microbatches = self.pp if self.pp_microbatches is None else self.pp_microbatches
        for name in COUNT_FIELDS:
            value = getattr(self, name)
            optional = name in ("pp_microbatches", "micro_batch_size") and value is None
            if not optional and (not isinstance(value, int) or value < 1):
                raise ValueError(f"ParallelDims.{name} must be an integer >= 1, got {value!r}.")
        if self.pp_schedule not in PIPELINE_SCHEDULES:
            raise ValueError(f"pp_schedule must be one of {PIPELINE_SCHEDULES}, got {self.pp_schedule!r}.")
        if self.pp_virtual_stages > 1 and self.pp_schedule != "interleaved_1f1b":
            raise ValueError(
                f"pp_virtual_stages={self.pp_virtual_stages} needs pp_schedule='interleaved_1f1b' "
                f"(got {self.pp_schedule!r}); use pp_virtual_stages=1 for gpipe and 1f1b."
            )
        if self.pp_microbatches is not None:
            self.validate_microbatches(self.pp_microbatches)

    def validate_microbatches(self, count: int) -> None:
        """``count`` micro-batches per step must fill the pipeline schedule: 1F1B needs at least pp of them;
        interleaved 1F1B takes any number that splits into whole rounds of up to pp (torch's flexible schedule)."""
        if self.pp == 1 or self.pp_schedule == "gpipe":
            return
        if self.pp_schedule == "1f1b" and count < self.pp:
            raise ValueError(
                f"pp_schedule='1f1b' needs at least pp={self.pp} microbatches per step to fill the pipeline, got "
                f"{count}: use interleaved_1f1b (any number), a smaller micro_batch_size or a larger batch."
            )
        rounds = max(1, count // self.pp)
        if count % rounds:
            raise ValueError(
                f"interleaved_1f1b runs {count} micro-batches in {rounds} rounds of up to pp={self.pp}: the count must "
                f"be a multiple of {rounds}; change micro_batch_size or the batch size."
            )

    def num_microbatches(self, batch_size: int) -> int:
        """Micro-batches per step for a global batch of ``batch_size`` rows (accumulated, or the pipeline's)."""
        if self.micro_batch_size is None:
            return self.pp_microbatches
        return batch_size // self.dp // self.micro_batch_size

    @property
    def world_size(self) -> int:
        """Processes the layout needs."""
        return self.dp_replicate * self.dp_shard * self.pp * self.cp * self.tp

    @property
    def dp(self) -> int:
        """Data-parallel degree (replicas x shards): the number of distinct batch slices."""
        return self.dp_replicate * self.dp_shard

    @property
    def num_stages(self) -> int:
        """Pipeline stages in total (pp ranks x virtual stages per rank)."""
        return self.pp * self.pp_virtual_stages

    @property
    def fsdp_enabled(self) -> bool:
        """Parameters are sharded when any of dp_shard or cp is > 1 (cp ranks share the FSDP group)."""
        return self.dp_shard * self.cp > 1 or self.dp_replicate > 1

    def validate_world(self, world_size: int) -> None:
        """The layout must use every process exactly once."""
        if self.world_size != world_size:
            raise ValueError(
                f"Parallel layout dp_replicate={self.dp_replicate} x dp_shard={self.dp_shard} x pp={self.pp} x "
                f"cp={self.cp} x tp={self.tp} = {self.world_size} processes, but the world size is {world_size}: "
                "change the degrees or launch with that many processes (torchrun --nproc-per-node)."
            )

    def validate_model(self, config) -> None:
        """Shapes the layout cannot split: heads and KV heads by tp, layers by pipeline stages."""
        if config.num_attention_heads % self.tp or config.num_key_value_heads % self.tp:
            raise ValueError(
                f"tp={self.tp} must divide num_attention_heads ({config.num_attention_heads}) and "
                f"num_key_value_heads ({config.num_key_value_heads}); with 8 KV heads tp is at most 8 [3.3.2]."
            )
        if config.intermediate_size % self.tp:
            raise ValueError(f"tp={self.tp} must divide intermediate_size ({config.intermediate_size}).")
        if self.tp > 1 and config.vocab_size % self.tp:
            raise ValueError(
                f"tp={self.tp} must divide vocab_size ({config.vocab_size}) for the vocab-parallel layers."
            )
        if config.tie_word_embeddings and (self.tp > 1 or self.num_stages > 1):
            raise ValueError(
                "Tied input/output embeddings (tie_word_embeddings=True, the Llama 3.2 1B/3B sizes) cannot be split "
                f"across tp={self.tp} or {self.num_stages} pipeline stages here: train with FSDP/CP only, or untie "
                "them (tie_word_embeddings=False) for TP/PP."
            )
        if self.num_stages > config.num_hidden_layers:
            raise ValueError(
                f"{self.num_stages} pipeline stages (pp={self.pp} x pp_virtual_stages={self.pp_virtual_stages}) "
                f"need at least as many layers, the model has {config.num_hidden_layers}."
            )

    def validate_batch(self, batch_size: int, seq_len: int) -> None:
        """The global batch splits into dp slices, each into micro-batches; sequences into 2 * cp chunks."""
        if batch_size % self.dp:
            raise ValueError(
                f"Global batch size {batch_size} must be divisible by the data-parallel degree {self.dp} "
                f"(dp_replicate x dp_shard)."
            )
        per_replica = batch_size // self.dp
        if self.micro_batch_size is not None and per_replica % self.micro_batch_size:
            raise ValueError(
                f"Per-replica batch {per_replica} (global {batch_size} / dp {self.dp}) must be a whole number of "
                f"micro-batches of micro_batch_size={self.micro_batch_size} rows."
            )
        if self.micro_batch_size is None and per_replica % self.pp_microbatches:
            raise ValueError(
                f"Per-replica batch {per_replica} must be divisible by pp_microbatches={self.pp_microbatches} "
                "(or set micro_batch_size, the rows per forward, and let the count follow the batch)."
            )
        self.validate_microbatches(self.num_microbatches(batch_size))
        if seq_len % (2 * self.cp):
            raise ValueError(
                f"Sequence length {seq_len} must be divisible by 2 * cp = {2 * self.cp}: context parallelism cuts it "
                "into 2 * cp equal chunks [3.3.2]."
            )
        if self.tp > 1 and (seq_len // self.cp) % self.tp:
            raise ValueError(
                f"Each context-parallel rank's {seq_len // self.cp} tokens must be divisible by tp={self.tp} "
                "(sequence parallelism shards them across tensor-parallel ranks)."
            )

    def build_mesh(self, device_type: str = "cpu") -> DeviceMesh:
        """A DeviceMesh with dims ``MESH_DIM_NAMES`` plus the flattened ``dp`` (batch), ``dp_shard_cp`` (FSDP) and
        ``dp_cp`` (loss reduction) dims. Needs an initialised default process group of the right size."""
        if not dist.is_initialized():
            raise RuntimeError("Initialise torch.distributed (parallel.distributed.init_distributed) before the mesh.")
        self.validate_world(dist.get_world_size())
        shape = (self.dp_replicate, self.dp_shard, self.pp, self.cp, self.tp)
        mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIM_NAMES)
        mesh["dp_replicate", "dp_shard"]._flatten("dp")
        mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        mesh["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp")
        logger.info("Device mesh %s", mesh)
        return mesh


def submesh(mesh: DeviceMesh, *names: str) -> DeviceMesh:
    """``mesh[names]``, also for the flattened dims (whose root-mesh slicing torch warns about)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return mesh[names if len(names) > 1 else names[0]]
