"""Evaluation on the sharded model [3.4.2]: on 4 ranks (TP2 x FSDP2, PP2 x FSDP2 and TP2 x PP2, one fork) the
held-out loss per category, the needle gate's generations and the Polyak average of the sharded states equal the
single-process results on the same weights, and no rank holds a full copy of the model while it evaluates (the
weights it holds, measured at every decoder layer's forward). The TP2 x PP2 run also exports its trained weights
as a Hugging Face folder written by every rank (tests/pretrain/test_polyak.py loads it)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from evaluation.needle import needle_gate
from hf_llama3 import Llama3ForCausalLM
from tests.distributed.harness import OPTIMIZER, make_batch, tiny_config
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.parallel.hf_export import export_sharded_hf
from training.parallel.polyak import ShardedPolyakAverage
from training.parallel.sharded_eval import ShardedCausalLM, held_out_loss
from training.parallel.spawn import run_local
from training.pretrain.evaluate import eval_loss

LAYOUTS = {
    "TP2xFSDP2": dict(tp=2, dp_shard=2),
    "PP2xFSDP2": dict(pp=2, dp_shard=2, pp_microbatches=2),
    "TP2xPP2": dict(tp=2, pp=2, pp_microbatches=2),
}
EXPORTED = "TP2xPP2"  # the layout whose trained weights are exported as they are (no averaging)
NEEDLE = dict(lengths=[256], depths=[0.0, 1.0], max_new_tokens=3, min_score=1.0)


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids (pad 0, bos 1, eos 2): ids fit the tiny model's vocabulary; the ids
    above the 256 bytes decode to ``<id>``, so a decoded generation names every token."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [byte + 3 for byte in text.encode("utf-8")]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i - 3) if 3 <= i < 259 else f"<{i}>" for i in ids if i >= 3 or not skip_special_tokens)


def eval_batches() -> dict[str, dict[str, torch.Tensor]]:
    """Two held-out categories of 4 rows x 32 tokens; the second packs several documents per row."""
    plain, packed = make_batch(1), make_batch(0)
    return {
        "web": {"input_ids": plain["input_ids"][:4], "document_ids": torch.zeros(4, 32, dtype=torch.long)},
        "code": {"input_ids": packed["input_ids"][:4], "document_ids": packed["document_ids"][:4]},
    }


def _corpus() -> list[str]:
    return [f"Paragraph {i} talks about rivers, hills and the weather of the valley." for i in range(40)]


def _evaluate(model) -> dict:
    gate = needle_gate(model, ByteTokenizer(), corpus=_corpus(), **NEEDLE)
    return {"generated": [r["generated"] for r in gate.scores.records], "scores": gate.scores.scores.tolist()}


def _record_weight_bytes(module, args, trainer: ParallelTrainer, peak: list[int]) -> None:
    """At each decoder layer's forward (its weights gathered by FSDP): the bytes of model weights this rank holds,
    sharded parameters counted by their local shard, gathered ones whole."""
    held = sum(
        (t.to_local() if isinstance(t, DTensor) else t).nbytes
        for _, stage in trainer.stages
        for t in stage.parameters()
    )
    peak[0] = max(peak[0], held)


def _run(rank: int, world_size: int, out_dir: str) -> None:
    results = {}
    for name, dims in LAYOUTS.items():
        trainer = ParallelTrainer(tiny_config(), EngineConfig(parallel=ParallelDims(**dims), optimizer=OPTIMIZER))
        trainer.step(make_batch(0))
        state = trainer.full_state_dict()  # the test's reference weights, gathered before the evaluation
        average = ShardedPolyakAverage()
        average.update(trainer)
        peak = [0]
        hooks = [
            layer.register_forward_pre_hook(functools.partial(_record_weight_bytes, trainer=trainer, peak=peak))
            for _, stage in trainer.stages
            for layer in stage.model.layers.values()
        ]
        losses = held_out_loss(trainer, eval_batches())
        needle = _evaluate(ShardedCausalLM(trainer))
        for hook in hooks:
            hook.remove()
        after = trainer.step(make_batch(1))  # training goes on from the shards after the evaluation
        # Polyak average of the two states, kept sharded; saved and reloaded as a resumed run would, then exported.
        average.update(trainer)
        assert not average.update(trainer)  # a step already averaged (replayed after a resume) is skipped
        average.save(trainer, Path(out_dir) / name / "average")
        resumed = ShardedPolyakAverage()
        resumed.load(trainer, Path(out_dir) / name / "average")
        export_sharded_hf(resumed.state_dict(trainer), tiny_config(), Path(out_dir) / name / "hf", trainer.dims.pp)
        second = trainer.full_state_dict()
        if name == EXPORTED:
            export_sharded_hf(trainer.model_state(), tiny_config(), Path(out_dir) / name / "trained", trainer.dims.pp)
        results[name] = {
            "losses": losses,
            "needle": needle,
            "peak": peak[0],
            "after": after,
            "state": state,
            "second": second,
            "polyak": str(Path(out_dir) / name / "hf"),
            "trained": str(Path(out_dir) / name / "trained"),
        }
        del trainer
    per_rank: list[dict | None] = [None] * world_size
    dist.all_gather_object(per_rank, results)
    if rank == 0:
        torch.save(per_rank, Path(out_dir) / "results.pt")


@functools.cache
def results() -> list[dict]:
    """What each rank of the 4-rank fork reported, per layout (one fork per test session)."""
    out_dir = tempfile.mkdtemp(prefix="sharded_eval_")
    run_local(4, _run, out_dir)
    return torch.load(Path(out_dir) / "results.pt")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_gate_on_the_sharded_model_equals_one_process(layout: str) -> None:
    per_rank = results()
    result = per_rank[0][layout]
    model = Llama3ForCausalLM(tiny_config())
    model.load_state_dict(result["state"])
    model.eval()
    expected = eval_loss(model, eval_batches())
    assert result["losses"] == pytest.approx(expected, rel=1e-5)
    assert result["needle"] == _evaluate(model)
    full_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    for rank in per_rank:
        assert rank[layout]["losses"] == result["losses"] and rank[layout]["needle"] == result["needle"]
        assert rank[layout]["peak"] < full_bytes / 2, (rank[layout]["peak"], full_bytes)
        assert torch.isfinite(torch.tensor(rank[layout]["after"]))
