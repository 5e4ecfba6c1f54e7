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
        pp_microbatches: Microbatches per step (default: pp); the local batch must divide into them.
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

    # Bounds the shared recipe loader (hf_llama3.recipe_loader) checks when a recipe's `parallel:` is loaded.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        name: {"min": 1}
        for name in ("dp_replicate", "dp_shard", "cp", "tp", "pp", "pp_virtual_stages", "pp_microbatches")
    }

    def __post_init__(self) -> None:
        if self.pp_microbatches is None:
            self.pp_microbatches = self.pp
        for name in ("dp_replicate", "dp_shard", "cp", "tp", "pp", "pp_virtual_stages", "pp_microbatches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ParallelDims.{name} must be an integer >= 1, got {value!r}.")
        if self.pp_schedule not in PIPELINE_SCHEDULES:
            raise ValueError(f"pp_schedule must be one of {PIPELINE_SCHEDULES}, got {self.pp_schedule!r}.")
        if self.pp_virtual_stages > 1 and self.pp_schedule != "interleaved_1f1b":
            raise ValueError(
                f"pp_virtual_stages={self.pp_virtual_stages} needs pp_schedule='interleaved_1f1b' "
                f"(got {self.pp_schedule!r}); use pp_virtual_stages=1 for gpipe and 1f1b."
            )
        if self.pp > 1 and self.pp_schedule != "gpipe" and self.pp_microbatches < self.pp:
            raise ValueError(
                f"pp_schedule={self.pp_schedule!r} needs at least pp={self.pp} microbatches to fill the pipeline, "
                f"got pp_microbatches={self.pp_microbatches}."
            )

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
        """The global batch splits into dp slices, each into pp microbatches; sequences into 2 * cp chunks."""
        if batch_size % self.dp:
            raise ValueError(
                f"Global batch size {batch_size} must be divisible by the data-parallel degree {self.dp} "
                f"(dp_replicate x dp_shard)."
            )
        if (batch_size // self.dp) % self.pp_microbatches:
            raise ValueError(
                f"Per-replica batch {batch_size // self.dp} must be divisible by pp_microbatches={self.pp_microbatches}."
            )
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
