"""Single-process checks of the parallel engine's pieces: layout validation, pipeline balancing, the CP split and
mask, FLOPs per token against the paper, and the pretrain recipe's validation."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import create_causal_mask

from hf_llama3 import Llama3Config
from hf_llama3.modeling_llama3 import document_mask_function
from training.parallel.context_parallel import dense_attention_mask, gathered_indices, load_balanced_indices
from training.parallel.dims import ParallelDims
from training.parallel.engine import OptimizerConfig
from training.parallel.metrics import ThroughputMeter, matmul_params, training_flops_per_token
from training.parallel.pipeline_parallel import stage_ids_for_rank, stage_layer_counts
from training.pretrain.batches import documents_from_eos
from training.pretrain.cli import check_sources
from training.pretrain.config import PretrainRecipe


def test_parallel_dims_validation_names_the_problem() -> None:
    dims = ParallelDims(dp_shard=2, cp=2, tp=2, pp=2, pp_microbatches=2)
    assert dims.world_size == 16 and dims.dp == 2 and dims.fsdp_enabled
    with pytest.raises(ValueError, match="world size is 8"):
        dims.validate_world(8)
    with pytest.raises(ValueError, match="tp=4 must divide"):
        ParallelDims(tp=4).validate_model(Llama3Config.from_preset("tiny"))  # 2 KV heads
    with pytest.raises(ValueError, match="Tied input/output embeddings"):
        ParallelDims(tp=2).validate_model(Llama3Config.from_preset("llama3.2-1b"))
    with pytest.raises(ValueError, match="need at least as many layers"):
        ParallelDims(pp=4).validate_model(Llama3Config.from_preset("tiny"))
    with pytest.raises(ValueError, match="2 \\* cp = 4"):
        ParallelDims(cp=2).validate_batch(4, 30)
    with pytest.raises(ValueError, match="divisible by the data-parallel degree"):
        ParallelDims(dp_shard=4).validate_batch(6, 32)
    with pytest.raises(ValueError, match="needs pp_schedule='interleaved_1f1b'"):
        ParallelDims(pp=2, pp_virtual_stages=2, pp_microbatches=2)
    with pytest.raises(ValueError, match="at least pp=4 microbatches"):
        ParallelDims(pp=4, pp_schedule="1f1b", pp_microbatches=2)
    with pytest.raises(ValueError, match="pp_schedule must be one of"):
        ParallelDims(pp_schedule="zero_bubble")
    with pytest.raises(ValueError, match="integer >= 1"):
        ParallelDims(tp=0)


def test_pipeline_balance_gives_first_and_last_stage_one_layer_fewer() -> None:
    # Llama 3 405B: 126 layers on 16 stages -> (126 + 2) / 16 = 8 slots per stage; ends hold 7 layers [3.3.2].
    counts = stage_layer_counts(126, 16)
    assert counts[0] == counts[-1] == 7 and set(counts[1:-1]) == {8} and sum(counts) == 126
    assert stage_layer_counts(8, 4) == [1, 3, 3, 1]
    assert stage_layer_counts(8, 4, balance=False) == [2, 2, 2, 2]
    assert stage_layer_counts(5, 1) == [5]
    with pytest.raises(ValueError, match="Cannot give each"):
        stage_layer_counts(4, 4)
    dims = ParallelDims(pp=4, pp_schedule="interleaved_1f1b", pp_virtual_stages=2, pp_microbatches=4)
    assert stage_ids_for_rank(1, dims) == [1, 5]


def test_context_parallel_split_is_load_balanced_and_covers_the_sequence() -> None:
    assert load_balanced_indices(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert load_balanced_indices(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert sorted(gathered_indices(48, 4).tolist()) == list(range(48))
    # Equal causal work: each rank's queries see the same number of keys in total.
    work = [int((load_balanced_indices(64, 4, r) + 1).sum()) for r in range(4)]
    assert len(set(work)) == 1


def test_cp_mask_equals_transformers_document_mask_on_each_rank() -> None:
    config = Llama3Config.from_preset("tiny", vocab_size=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "sdpa"
    seq, cp = 24, 3
    documents = torch.tensor([[0] * 5 + [1] * 9 + [2] * 10, [0] * 24])
    reference = create_causal_mask(
        config,
        torch.zeros(2, seq, 8),
        None,  # attention_mask
        None,  # the cache (`cache` from transformers 5.24, `past_key_values` before)
        position_ids=torch.arange(seq).expand(2, -1),
        and_mask_function=document_mask_function(documents),
    )
    if reference is None or reference.dtype != torch.bool:
        pytest.skip("transformers returned no boolean mask for sdpa here")
    for rank in range(cp):
        ours = dense_attention_mask(seq, cp, rank, documents, batch_size=2)
        q, kv = load_balanced_indices(seq, cp, rank), gathered_indices(seq, cp)
        torch.testing.assert_close(ours == 0, reference[:, :, q][:, :, :, kv])
        assert ours.dtype == torch.float32 and ours.min() == torch.finfo(torch.float32).min


def test_flops_per_token_matches_the_paper_budget() -> None:
    # 405B parameters x 15.6T tokens x 6 = 3.8e25 FLOPs [paper 3, Table 1 / 3.2.1].
    config = Llama3Config.from_preset("llama3-405b")
    total = training_flops_per_token(config, 8192) * 15.6e12
    assert 3.8e25 * 0.97 < total < 3.8e25 * 1.1
    assert training_flops_per_token(config, 8192, causal=False) > training_flops_per_token(config, 8192)
    assert 7.4e9 < matmul_params(Llama3Config.from_preset("llama3-8b")) < 7.6e9
    meter = ThroughputMeter(config, 8192, num_devices=16384, peak_flops=989e12)
    meter.start()
    metrics = meter.stop(step=1, loss=2.0, tokens=16 * 2**20)
    assert metrics.mfu == pytest.approx(metrics.tflops_per_device * 1e12 / 989e12)
    with pytest.raises(RuntimeError, match="before start"):
        meter.stop(1, 2.0, 1)


def test_lr_schedule_warmup_then_cosine_to_the_floor() -> None:
    # Paper 3.4.1: 8,000 warmup steps to 8e-5, cosine to 8e-7 over 1.2M steps.
    opt = OptimizerConfig(lr=8e-5, warmup_steps=8000, decay_steps=1_200_000, min_lr_ratio=0.01)
    assert opt.lr_factor(0) == pytest.approx(1 / 8000)
    assert opt.lr_factor(7999) == pytest.approx(1.0)
    assert opt.lr * opt.lr_factor(8000 + 1_200_000) == pytest.approx(8e-7)
    with pytest.raises(ValueError, match="lr > 0"):
        OptimizerConfig(lr=0)


def _stage_one_recipe(source: str, seq_len: int = 32, **fields) -> PretrainRecipe:
    """A recipe with only stage 1 (no long context, no annealing): one shape, one source."""
    initial = dict(
        tokens=4 * seq_len,
        ramp=[{"after_tokens": 0, "batch_tokens": 4 * seq_len, "seq_len": seq_len}],
        mix=[{"after_tokens": 0, "weights": {"general": 1.0}}],
    )
    return PretrainRecipe(sources={"general": source}, initial=initial, **fields)


def test_pretrain_recipe_validation_and_eos_documents(tmp_path) -> None:
    recipe = _stage_one_recipe(str(tmp_path))
    assert recipe.anneal is None and recipe.long_context is None and len(recipe.batch_shapes()) == 1
    with pytest.raises(ValueError, match="divisible by 2 \\* cp"):
        _stage_one_recipe(str(tmp_path), seq_len=30, parallel={"cp": 2})
    with pytest.raises(FileNotFoundError, match="holds no packed shards"):
        check_sources(_stage_one_recipe(str(tmp_path / "missing")))
    ids = torch.tensor([[5, 2, 7, 8, 2, 9]])
    assert documents_from_eos(ids, eos_token_id=2).tolist() == [[0, 0, 1, 1, 1, 2]]
