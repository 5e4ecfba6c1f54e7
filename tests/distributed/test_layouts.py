"""Named parallel layouts against a single-process run: same data and seed, 3 AdamW steps, loss and final weights
equal to 1e-5. Each world size is forked once and runs its layouts in sequence on fresh meshes."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

from tests.distributed.harness import OPTIMIZER, STEPS, make_batch, reference_run, tiny_config
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.parallel.parallelize import checkpoint_mode, uses_fsdp
from training.parallel.spawn import run_local

# world size -> [(name, ParallelDims kwargs)]. Microbatches = pp so every schedule fills its pipeline.
LAYOUTS: dict[int, list[tuple[str, dict]]] = {
    1: [("single", {}), ("single-bf16", {})],
    2: [
        ("FSDP2-tied", dict(dp_shard=2)),
        ("CP2", dict(cp=2)),
        ("CP2-selective-AC", dict(cp=2)),
        ("PP2-gpipe", dict(pp=2, pp_schedule="gpipe", pp_microbatches=2)),
        ("PP2-1f1b", dict(pp=2, pp_schedule="1f1b", pp_microbatches=2)),
        ("PP2-interleaved", dict(pp=2, pp_schedule="interleaved_1f1b", pp_virtual_stages=2, pp_microbatches=2)),
    ],
    4: [
        ("FSDP4", dict(dp_shard=4)),
        ("HSDP2x2", dict(dp_replicate=2, dp_shard=2)),
        ("TP4", dict(tp=4)),
        ("CP4", dict(cp=4)),
        ("PP4-gpipe", dict(pp=4, pp_schedule="gpipe", pp_microbatches=4)),
        ("PP4-1f1b", dict(pp=4, pp_schedule="1f1b", pp_microbatches=4)),
        (
            "PP4-interleaved",
            dict(pp=4, pp_schedule="interleaved_1f1b", pp_virtual_stages=2, pp_microbatches=4, pp_balance=False),
        ),
        ("TP2xFSDP2", dict(tp=2, dp_shard=2)),
        ("PP2xFSDP2", dict(pp=2, dp_shard=2, pp_microbatches=2)),
        ("CP2xTP2", dict(cp=2, tp=2)),
        ("PP2xCP2", dict(pp=2, cp=2, pp_microbatches=2)),
        # Activation checkpointing and FSDP resharding after forward change memory, never the numbers.
        ("TP2xFSDP2-AC-reshard", dict(tp=2, dp_shard=2)),
    ],
    8: [
        ("PP2xFSDP2xTP2", dict(pp=2, dp_shard=2, tp=2, pp_microbatches=2)),
        ("PP2xCP2xTP2", dict(pp=2, cp=2, tp=2, pp_microbatches=2)),
        ("FSDP2xCP2xTP2", dict(dp_shard=2, cp=2, tp=2)),
    ],
    16: [
        ("PP2xFSDP2xCP2xTP2-1f1b", dict(pp=2, dp_shard=2, cp=2, tp=2, pp_microbatches=2)),
        (
            "PP2xFSDP2xCP2xTP2-interleaved",
            dict(pp=2, dp_shard=2, cp=2, tp=2, pp_schedule="interleaved_1f1b", pp_virtual_stages=2, pp_microbatches=2),
        ),
    ],
}
# Engine options and model-config overrides per layout (default: none).
ENGINE_OPTIONS = {
    "TP2xFSDP2-AC-reshard": dict(activation_checkpointing=True, fsdp=dict(reshard_after_forward=True)),
    "CP2-selective-AC": dict(activation_checkpointing="selective"),  # per-op: matmul and attention outputs kept
    # bf16 compute on one rank (FSDP's mixed precision; fp32 master weights and gradient reduction).
    "single-bf16": dict(fsdp=dict(param_dtype="bfloat16")),
}
CONFIG_OVERRIDES = {"FSDP2-tied": dict(tie_word_embeddings=True)}  # the Llama 3.2 1B/3B embedding tying
# bf16 matmuls: about 3 significant digits in the loss and the Adam updates.
TOLERANCE = {"single-bf16": (2e-2, 5e-3)}
SLOW_WORLDS = {8, 16}
CASES = [
    pytest.param(world, name, marks=[pytest.mark.slow] if world in SLOW_WORLDS else [], id=name)
    for world, layouts in LAYOUTS.items()
    for name, _ in layouts
]


def _check_layout(trainer: ParallelTrainer, dims: ParallelDims, engine: EngineConfig) -> None:
    """The layout really is applied: weights are sharded over the right mesh dims, stages hold a slice of layers."""
    layers = {int(i) for _, stage in trainer.stages for i in stage.model.layers}
    q_proj = next(iter(trainer.stages[0][1].model.layers.values())).self_attn.q_proj.weight
    mesh_dims = set(q_proj.device_mesh.mesh_dim_names) if isinstance(q_proj, DTensor) else set()
    assert ("tp" in mesh_dims) == (dims.tp > 1)
    assert bool(mesh_dims & {"dp_shard_cp", "dp_replicate"}) == uses_fsdp(dims, engine.fsdp)
    assert (len(layers) < 8) == (dims.pp > 1)
    checkpointed = {layer.gradient_checkpointing for _, st in trainer.stages for layer in st.model.layers.values()}
    assert checkpointed == {checkpoint_mode(engine.activation_checkpointing) is not None}


def _train_layouts(rank: int, world_size: int, layouts: list[tuple[str, dict]], out_dir: str) -> None:
    for name, dims in layouts:
        engine = EngineConfig(parallel=ParallelDims(**dims), optimizer=OPTIMIZER, **ENGINE_OPTIONS.get(name, {}))
        trainer = ParallelTrainer(tiny_config(**CONFIG_OVERRIDES.get(name, {})), engine)
        _check_layout(trainer, engine.parallel, engine)
        # Under TP the loss reads vocab-sharded logits: never the gathered [tokens, vocab] tensor. Without TP the
        # loss applies lm_head itself, chunk by chunk, to the final hidden states: the module never runs.
        logits_placements = set()
        for _, stage in trainer.stages:
            if stage.is_last:
                stage.lm_head.register_forward_hook(
                    lambda _m, _i, out, seen=logits_placements: seen.add(getattr(out, "placements", ("local",))[-1])
                )
        losses = [trainer.step(make_batch(step)) for step in range(STEPS)]
        if trainer.has_last_stage:
            assert logits_placements == ({Shard(2)} if engine.parallel.tp > 1 else set()), logits_placements
        state = trainer.full_state_dict()
        if rank == 0:
            torch.save({"losses": losses, "state": state}, Path(out_dir) / f"{name}.pt")
        del trainer
        dist.barrier()


@functools.cache
def _results(world_size: int) -> dict[str, dict]:
    out_dir = tempfile.mkdtemp(prefix=f"layouts{world_size}_")
    run_local(world_size, _train_layouts, LAYOUTS[world_size], out_dir)
    return {name: torch.load(Path(out_dir) / f"{name}.pt") for name, _ in LAYOUTS[world_size]}


@functools.cache
def _reference(tied: bool = False) -> tuple[list[float], dict]:
    return reference_run(tiny_config(tie_word_embeddings=tied))


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("world_size", "name"), CASES)
def test_layout_matches_single_process(world_size: int, name: str) -> None:
    ref_losses, ref_state = _reference("tie_word_embeddings" in CONFIG_OVERRIDES.get(name, {}))
    result = _results(world_size)[name]
    loss_tol, weight_tol = TOLERANCE.get(name, (1e-5, 1e-5))
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(ref_losses), rtol=0, atol=loss_tol)
    assert set(result["state"]) == set(ref_state), "parameter names differ from Llama3ForCausalLM's"
    for key, ref in ref_state.items():
        torch.testing.assert_close(
            result["state"][key], ref, rtol=0, atol=weight_tol, msg=lambda m, k=key: f"{k}: {m}"
        )
    # The run learned something: weights moved by far more than the tolerance.
    assert ref_losses[-1] != ref_losses[0]


def _train_compiled(rank: int, world_size: int, out_dir: str) -> None:
    trainer = ParallelTrainer(tiny_config(), EngineConfig(compile=True, optimizer=OPTIMIZER))
    assert all(layer._compiled_call_impl is not None for layer in trainer.stages[0][1].model.layers.values())
    loss = trainer.step(make_batch(0))
    torch.save({"loss": loss, "state": trainer.full_state_dict()}, Path(out_dir) / "compiled.pt")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_layers_match_eager_single_process(tmp_path: Path) -> None:
    """torch.compile of each decoder layer (inductor's CPU backend), one step against the eager reference."""
    run_local(1, _train_compiled, str(tmp_path))
    result = torch.load(tmp_path / "compiled.pt")
    ref_losses, ref_state = reference_run(tiny_config(), steps=1)
    assert abs(result["loss"] - ref_losses[0]) < 1e-5
    for key, ref in ref_state.items():
        torch.testing.assert_close(result["state"][key], ref, rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
