"""Deferred (meta-device) initialisation and loading a Hugging Face folder straight into the sharded model.

One fork per layout: TP2 x FSDP2 on 4 ranks, PP2 on 2. Each rank builds the model on the meta device, materialises
only its shards, and either initialises them by name (same weights as the single-process reference, the same
distribution as transformers' eager init) or reads them from a stock ``LlamaForCausalLM`` folder saved in several
safetensors shards; the logits then equal the stock model's.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.tensor import DTensor
from transformers import LlamaConfig, LlamaForCausalLM

from hf_llama3 import Llama3ForCausalLM
from hf_llama3.recipe_loader import load_recipe
from tests.distributed.harness import OPTIMIZER, make_batch, reference_run, tiny_config
from training.parallel.dims import ParallelDims
from training.parallel.engine import EngineConfig, ParallelTrainer
from training.parallel.spawn import run_local
from training.pretrain.config import PretrainRecipe

REPO = Path(__file__).resolve().parents[2]
BATCH, SEQ = 2, 16
LAYOUTS = {4: ("TP2xFSDP2", dict(tp=2, dp_shard=2)), 2: ("PP2", dict(pp=2, pp_microbatches=2))}


def local_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers this rank holds for ``module`` (its shards; meta tensors count 0)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()] if not t.is_meta}.values()
    return sum(t.to_local().nbytes if isinstance(t, DTensor) else t.nbytes for t in tensors)


def _stock_folder(folder: Path, **overrides) -> Path:
    """A stock transformers ``LlamaForCausalLM`` of the tiny shape (a different seed from ours), saved in shards."""
    fields = {k: v for k, v in tiny_config(**overrides).to_dict().items() if k not in ("model_type", "auto_map")}
    torch.manual_seed(7)
    LlamaForCausalLM(LlamaConfig(**fields)).save_pretrained(folder, max_shard_size="300KB")
    return folder


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 1024, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return ids, torch.arange(SEQ).expand(BATCH, -1)


@torch.no_grad()
def _logits(trainer: ParallelTrainer) -> torch.Tensor | None:
    """The model's logits on ``_inputs()``: on the last pipeline rank (hidden states sent along), else ``None``."""
    ids, positions = _inputs()
    (_, stage) = trainer.stages[0]
    rank = dist.get_rank()
    hidden = ids
    if not stage.is_first:
        hidden = torch.empty(BATCH, SEQ, trainer.model_config.hidden_size)
        dist.recv(hidden, rank - 1)
    out = stage(hidden, position_ids=positions)
    if not stage.is_last:
        dist.send(out.contiguous(), rank + 1)
        return None
    if out.shape[-1] != trainer.model_config.vocab_size:
        out = stage.lm_head(out)  # the stage left the output projection to a fused loss: apply it here
    return out.full_tensor() if hasattr(out, "full_tensor") else out


def _peak_bytes(build):
    """``build()`` and the peak bytes of CPU tensors alive while it ran (torch's dispatch-level memory tracker)."""
    tracker = MemTracker()
    with tracker:
        built = build()
    return built, tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def _run(rank: int, world_size: int, stock: str, other: str, out_dir: str) -> None:
    name, dims = LAYOUTS[world_size]
    engine = EngineConfig(parallel=ParallelDims(**dims), optimizer=OPTIMIZER)
    loading = EngineConfig(parallel=ParallelDims(**dims), init_from=stock)
    result: dict = {}
    seeded, result["init_peak"] = _peak_bytes(lambda: ParallelTrainer(tiny_config(), engine))
    result["bytes"] = sum(local_bytes(stage) for _, stage in seeded.stages)
    result["layers"] = sorted(int(i) for _, stage in seeded.stages for i in stage.model.layers)
    result["inv_freq"] = seeded.stages[0][1].model.rotary_emb.inv_freq.clone()
    result["state"] = seeded.full_state_dict()
    result["loss"] = seeded.step(make_batch(0))
    del seeded
    loaded, result["load_peak"] = _peak_bytes(lambda: ParallelTrainer(tiny_config(), loading))
    result["logits"] = _logits(loaded)
    del loaded
    with pytest.raises(ValueError, match="does not fit the model"):
        ParallelTrainer(tiny_config(), EngineConfig(parallel=ParallelDims(**dims), init_from=other))
    per_rank: list[dict | None] = [None] * world_size
    dist.all_gather_object(per_rank, result)
    if rank == 0:
        torch.save(per_rank, Path(out_dir) / f"{name}.pt")


@functools.cache
def _folders() -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="stock_llama_"))
    return _stock_folder(root / "stock"), _stock_folder(root / "other", intermediate_size=96)


@functools.cache
def _results(world_size: int) -> list[dict]:
    out_dir = tempfile.mkdtemp(prefix=f"deferred{world_size}_")
    stock, other = _folders()
    run_local(world_size, _run, str(stock), str(other), out_dir)
    return torch.load(Path(out_dir) / f"{LAYOUTS[world_size][0]}.pt")


@functools.cache
def _reference() -> tuple[float, dict[str, torch.Tensor], torch.Tensor]:
    """The single-process run's first loss and initial weights (initialised by name), and the stock logits."""
    losses, _ = reference_run(tiny_config(), steps=1)
    _, initial = reference_run(tiny_config(), steps=0)
    stock = LlamaForCausalLM.from_pretrained(_folders()[0]).eval()
    with torch.no_grad():
        logits = stock(_inputs()[0]).logits
    return losses[0], initial, logits


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size", sorted(LAYOUTS), ids=[LAYOUTS[w][0] for w in sorted(LAYOUTS)])
def test_meta_built_sharded_model_initialises_and_loads_a_stock_folder(world_size: int) -> None:
    per_rank = _results(world_size)
    ref_loss, ref_state, stock_logits = _reference()
    assert len(list(_folders()[0].glob("model-*.safetensors"))) > 1  # the folder really is sharded

    # Initialisation: the same weights as the single-process reference, on every layout; the same first loss.
    state = per_rank[0]["state"]
    assert set(state) == set(ref_state)
    for key, ref in ref_state.items():
        torch.testing.assert_close(state[key], ref, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    assert abs(per_rank[0]["loss"] - ref_loss) < 1e-5
    eager = Llama3ForCausalLM(tiny_config())
    for rank_result in per_rank:  # RoPE tables (non-persistent buffers, lost on meta) recomputed on every rank
        torch.testing.assert_close(rank_result["inv_freq"], eager.model.rotary_emb.inv_freq, rtol=0, atol=0)

    # No rank holds the whole model: each holds its shards (TP2 x FSDP2: a quarter) or its stage's layers (PP2).
    full = sum(t.numel() * t.element_size() for t in ref_state.values())
    share = 0.25 if world_size == 4 else 0.5
    for rank_result in per_rank:
        assert rank_result["bytes"] <= share * full * 1.05, (rank_result["bytes"], full)
        # While building and loading: its shards plus one module's full tensors at a time, never the model.
        assert max(rank_result["init_peak"], rank_result["load_peak"]) < full, (rank_result, full)
    if world_size == 2:
        first, last = (r["layers"] for r in per_rank)
        assert first + last == list(range(8)) and first and last

    # The stock folder, read shard by shard into the sharded model, gives the stock model's logits.
    logits = per_rank[-1]["logits"]
    torch.testing.assert_close(logits, stock_logits, rtol=0, atol=1e-5)


def test_meta_init_has_the_eager_init_statistics() -> None:
    """Per parameter, the by-name initialisation draws from transformers' eager distribution: ``torch.manual_seed``
    plus ``Llama3ForCausalLM(config)`` and the engine's weights agree in mean and standard deviation."""
    config = tiny_config()
    torch.manual_seed(0)
    eager = Llama3ForCausalLM(config).state_dict()
    _, ours = reference_run(config, steps=0)
    for key, want in eager.items():
        got, n = ours[key], want.numel()
        assert not torch.equal(got, want) or want.std() == 0, key  # a different draw, except the constant norms
        # Sampling error of a mean and a standard deviation over n draws: 5 standard errors.
        assert abs(float(got.mean() - want.mean())) <= 5 * config.initializer_range * (2 / n) ** 0.5 + 1e-7, key
        assert abs(float(got.std() - want.std())) <= 5 * config.initializer_range / n**0.5 + 1e-7, key


def test_init_from_must_be_a_safetensors_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"init_from=.*not a Hugging Face folder with \*\.safetensors"):
        EngineConfig(init_from=str(tmp_path))


def test_init_from_is_a_recipe_setting() -> None:
    """Continued pre-training is one recipe key: ``--set init_from=<folder>`` reaches the engine."""
    folder = str(_folders()[0])
    recipe = load_recipe(PretrainRecipe, REPO / "recipes/tiny/pretrain.yaml", [f"init_from={folder}"])
    assert recipe.engine_config().init_from == folder
