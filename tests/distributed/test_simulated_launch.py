"""The simulated launch at the paper's scale (fake process group, meta tensors) and ``pretrain --dry-run``.

The activation formula is checked against the bytes autograd really keeps for backward in a small bf16 CPU run
of the engine's stage (``saved_tensors_hooks``, as ``benchmarks/parallel_memory.py`` measures), in a fake world of
``tp x cp`` ranks: the collectives' values are garbage there, their shapes (all that is counted) are right.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3 import cli as hf_cli
from hf_llama3.memory import parameter_counts
from hf_llama3.recipe_loader import load_recipe
from training.parallel.context_parallel import dense_attention_mask, load_balanced_indices, register_parallel_attention
from training.parallel.dims import ParallelDims, submesh
from training.parallel.fsdp import FSDPConfig
from training.parallel.simulated_launch import (
    H100_HBM_BYTES,
    StageShape,
    activation_bytes,
    fake_world,
    mask_bytes,
    shortfall,
    simulate_launch,
    simulate_ranks,
    table_row,
    worst,
)
from training.parallel.stage import Llama3Stage
from training.parallel.tensor_parallel import apply_tensor_parallel
from training.pretrain.config import PretrainRecipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _recipe(size: str) -> PretrainRecipe:
    return load_recipe(PretrainRecipe, RECIPES / f"llama3-{size}" / "pretrain.yaml", [])


def _launch(recipe: PretrainRecipe, stage: str, seq_len: int, batch_tokens: int):
    """(dims, rank states, reports) of ``stage`` of ``recipe`` at one sequence length."""
    dims, fsdp = ParallelDims(**recipe.layout(stage)), FSDPConfig(**recipe.fsdp)
    states = simulate_ranks(recipe.model_config(), dims, fsdp, recipe.activation_checkpointing)
    local_rows = batch_tokens // seq_len // dims.dp
    reports = simulate_launch(recipe.model_config(), dims, seq_len, local_rows, fsdp=fsdp, states=states)
    return dims, states, reports


# (recipe, stage, seq, batch tokens, Table 4 degrees the recipe must hold)
PAPER_LAYOUTS = [
    ("8b", "initial", 8192, 16777216, {"dp_shard": 512}),
    ("70b", "initial", 8192, 16777216, {"tp": 8, "pp": 4, "dp_shard": 32}),
    ("405b", "initial", 8192, 16777216, {"tp": 8, "cp": 1, "pp": 16, "dp_shard": 64}),  # 8,192 GPUs [Table 4]
    ("405b", "long_context", 131072, 16777216, {"tp": 8, "cp": 16, "pp": 16, "dp_shard": 4}),  # [Table 4]
]


@pytest.mark.parametrize("size,stage,seq_len,batch_tokens,degrees", PAPER_LAYOUTS)
def test_paper_layout_fits_an_h100(size, stage, seq_len, batch_tokens, degrees):
    recipe = _recipe(size)
    assert {k: recipe.layout(stage)[k] for k in degrees} == degrees
    dims, states, reports = _launch(recipe, stage, seq_len, batch_tokens)
    assert len(reports) == dims.pp
    report = worst(reports)
    print(table_row(f"llama3-{size} {stage}", seq_len, 1, report))
    assert report.total < H100_HBM_BYTES, shortfall(report, H100_HBM_BYTES, stage)
    # The shards of every pipeline rank, times the ranks holding different shards, are the whole fp32 model.
    model_params = parameter_counts(recipe.model_config()).total
    sharded = sum(r.params for r in reports) * dims.tp * dims.dp_shard * dims.cp
    assert sharded == pytest.approx(4 * model_params, rel=2e-3)
    assert all(r.optimizer == 2 * r.params and r.grads == r.params for r in reports)
    if seq_len == 131072:
        # The engine's old dense mask, [32 rows, 1, 8192, 131072] bf16 = 68.7 GB per GPU, cannot fit here.
        dense = simulate_launch(
            recipe.model_config(), dims, seq_len, 32, fsdp=FSDPConfig(**recipe.fsdp), mask="dense", states=states
        )
        assert worst(dense).mask == 2 * 32 * 8192 * 131072
        assert "largest part: attention mask" in shortfall(worst(dense), H100_HBM_BYTES, stage)


def test_405b_on_8_gpus_is_refused():
    model = Llama3Config.from_preset("llama3-405b")
    reports = simulate_launch(model, ParallelDims(dp_shard=8), 8192, 1, fsdp=FSDPConfig(param_dtype="bfloat16"))
    error = shortfall(worst(reports), H100_HBM_BYTES, "initial.ramp[2]")
    assert error is not None and "\n" not in error
    assert "TP1 CP1 PP1 DP8 (8 GPUs)" in error and "GB more than the 80 GB" in error
    # 405B bf16 weights gathered whole (reshard_after_forward: false) alone are ~811 GB.
    assert "gathered bf16 parameters, 81" in error


def test_dry_run_prints_the_table_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(RECIPES / "llama3-8b" / "pretrain.yaml")
    # Every stage is printed, then the first one over the HBM is refused in one line.
    assert hf_cli.main(["pretrain", "--config", config, "--dry-run", "--hbm-gb", "20"]) == 2
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    _, _, reports = _launch(_recipe("8b"), "initial", 8192, 16777216)
    assert table_row("initial.ramp[2]", 8192, 1, worst(reports)) in lines
    assert sum(line.startswith(("initial", "long_context", "anneal")) for line in lines) == 3 + 6 + 1
    error = captured.err.strip()
    assert error.startswith("hf-llama3 pretrain: error: initial.ramp[0]: TP1 CP1 PP1 DP512 (512 GPUs) needs")
    assert "\n" not in error and "more than the 20 GB of HBM" in error
    assert list(tmp_path.iterdir()) == []


def _measured_activation_bytes(
    tp: int, cp: int, checkpointing: bool, documents: bool
) -> tuple[int, int, Llama3Config]:
    """Bytes kept for backward by one forward + loss of a bf16 two-layer stage on this fake rank 0 of tp x cp."""
    config = Llama3Config.from_preset(
        "tiny",
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    rows, seq = 2, 256
    dims = ParallelDims(tp=tp, cp=cp)
    with fake_world(0, dims.world_size):
        mesh = dims.build_mesh()
        torch.manual_seed(0)
        model = Llama3ForCausalLM(config).to(torch.bfloat16)
        model.config._attn_implementation = register_parallel_attention()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        stage = Llama3Stage(model, list(range(config.num_hidden_layers)), is_first=True, is_last=True)
        if tp > 1:
            apply_tensor_parallel(stage, submesh(mesh, "tp"))
        if cp > 1:
            stage.cp_group = submesh(mesh, "cp").get_group()
        index = load_balanced_indices(seq, cp, 0)
        ids = torch.randint(3, 1024, (rows, seq), generator=torch.Generator().manual_seed(0))[:, index]
        docs = torch.arange(seq).div(100, rounding_mode="floor").expand(rows, -1) if documents else None
        mask = (
            dense_attention_mask(seq, cp, 0, docs, rows, dtype=torch.bfloat16)
            if (docs is not None or cp > 1)
            else None
        )
        parameters = {
            (p.to_local() if isinstance(p, DTensor) else p).untyped_storage().data_ptr() for p in stage.parameters()
        }
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            local = tensor
            while is_traceable_wrapper_subclass(local):  # DTensor, and the async-collective tensor it may wrap
                local = getattr(local, local.__tensor_flatten__()[0][0])
            storage = local.untyped_storage()
            if storage.data_ptr() not in parameters:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        vocab_parallel = loss_parallel() if tp > 1 else contextlib.nullcontext()
        with vocab_parallel, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits = stage(ids, position_ids=index.expand(rows, -1), attention_mask=mask)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="sum")
    return sum(saved.values()), 0 if mask is None else mask.numel() * mask.element_size(), config


@pytest.mark.parametrize(
    "tp,cp,checkpointing,documents",
    [(1, 1, False, False), (2, 1, False, True), (2, 2, False, True), (2, 2, True, True)],
)
def test_activation_formula_matches_measurement(tp, cp, checkpointing, documents):
    measured, mask, config = _measured_activation_bytes(tp, cp, checkpointing, documents)
    dims = ParallelDims(tp=tp, cp=cp)
    parts = activation_bytes(config, dims, StageShape(2, True, True), 256, 2, 2, checkpointing)
    assert mask == (mask_bytes(dims, 256, 2, 2, "dense") if mask else 0)
    # Under checkpointing the layers' inputs are kept by the checkpoint, RoPE tables and mask outside autograd.
    predicted = parts.kept + mask if not checkpointing else parts.layers + parts.embedding + parts.head
    assert measured == pytest.approx(predicted, rel=0.01), (measured, predicted)
