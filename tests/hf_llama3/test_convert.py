"""Checkpoint interop: ours <-> stock transformers Llama <-> Meta's layout, and broken folders."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from hf_llama3 import Llama3ForCausalLM, Llama3ForSequenceClassification
from hf_llama3.checkpoint_io import CheckpointError, read_state_dict
from hf_llama3.cli import main as cli_main
from hf_llama3.convert import convert_checkpoint, load_checkpoint
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def ours_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "ours"
    model = Llama3ForCausalLM(tiny_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(folder)


def assert_identical(a: dict, b: dict):
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_ours_llama_ours_round_trip_is_exact(ours_folder, tmp_path):
    convert_checkpoint(ours_folder, tmp_path / "llama", "llama")
    convert_checkpoint(tmp_path / "llama", tmp_path / "back", "ours")
    config = json.loads((tmp_path / "llama" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config and "loss_chunk_size" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not list((tmp_path / "llama").glob("*.py"))
    assert_identical(tensors(ours_folder), tensors(tmp_path / "back"))
    card = (tmp_path / "llama" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "pipeline_tag: text-generation" in card


def test_ours_meta_ours_round_trip_with_two_tensor_parallel_shards(ours_folder, tmp_path):
    convert_checkpoint(ours_folder, tmp_path / "meta", "meta", num_shards=2)
    shards = sorted(p.name for p in (tmp_path / "meta").glob("*.pth"))
    assert shards == ["consolidated.00.pth", "consolidated.01.pth"]
    shard0 = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    # Column-parallel rows split, row-parallel columns split, norms replicated, vocab-parallel embedding.
    assert shard0["layers.0.attention.wq.weight"].shape == (32, 64)
    assert shard0["layers.0.attention.wo.weight"].shape == (64, 32)
    assert shard0["layers.0.feed_forward.w2.weight"].shape == (64, 112)
    assert shard0["tok_embeddings.weight"].shape == (256, 64)
    assert shard0["layers.0.attention_norm.weight"].shape == (64,)
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_theta"] == 500000.0
    convert_checkpoint(tmp_path / "meta", tmp_path / "back", "ours")
    assert_identical(tensors(ours_folder), tensors(tmp_path / "back"))


def test_meta_ffn_params_reproduce_the_released_sizes():
    from hf_llama3.convert import meta_ffn_dim, meta_ffn_params

    assert meta_ffn_params(4096, 14336) == (1024, 1.3)
    assert meta_ffn_params(8192, 28672) == (1024, 1.3)
    assert meta_ffn_dim(16384, *meta_ffn_params(16384, 53248)) == 53248


def test_stock_llama_export_loads_in_a_fresh_process_without_hf_llama3(ours_folder, tmp_path):
    convert_checkpoint(ours_folder, tmp_path / "llama", "llama")
    model = Llama3ForCausalLM.from_pretrained(ours_folder).eval()
    input_ids = torch.randint(3, 512, (2, 12))
    with torch.no_grad():
        torch.save({"ids": input_ids, "logits": model(input_ids).logits}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_llama3"] = None
        import torch
        from transformers import AutoModelForCausalLM
        ref = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "llama")!r}).eval()
        assert type(model).__name__ == "LlamaForCausalLM"
        with torch.no_grad():
            torch.testing.assert_close(model(ref["ids"]).logits, ref["logits"], rtol=0, atol=1e-5)
        print("STOCK-LLAMA-OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "STOCK-LLAMA-OK" in result.stdout, result.stderr[-3000:]


def test_stock_llama_folder_loads_into_ours(tmp_path):
    torch.manual_seed(0)
    from hf_llama3.convert import llama_config_from_ours

    stock = LlamaForCausalLM(llama_config_from_ours(tiny_config())).eval()
    stock.save_pretrained(tmp_path / "stock")
    ours = Llama3ForCausalLM.from_pretrained(tmp_path / "stock").eval()
    convert_checkpoint(tmp_path / "stock", tmp_path / "ours", "ours")
    converted = Llama3ForCausalLM.from_pretrained(tmp_path / "ours").eval()
    input_ids = torch.randint(3, 512, (1, 9))
    with torch.no_grad():
        want = stock(input_ids).logits
        torch.testing.assert_close(ours(input_ids).logits, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(converted(input_ids).logits, want, rtol=0, atol=1e-5)


def test_sharded_output_with_index_round_trips(ours_folder, tmp_path):
    convert_checkpoint(ours_folder, tmp_path / "sharded", "ours", max_shard_size="100KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert_identical(tensors(ours_folder), tensors(tmp_path / "sharded"))


def test_reward_model_converts_to_stock_llama_classifier(tmp_path):
    torch.manual_seed(0)
    Llama3ForSequenceClassification(tiny_config(num_labels=1)).save_pretrained(tmp_path / "rm")
    convert_checkpoint(tmp_path / "rm", tmp_path / "rm-llama", "llama")
    config = json.loads((tmp_path / "rm-llama" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    with pytest.raises(CheckpointError, match="no sequence-classification head"):
        convert_checkpoint(tmp_path / "rm", tmp_path / "rm-meta", "meta")
    assert not (tmp_path / "rm-meta").exists()


def test_meta_reference_transformer_gives_our_logits(ours_folder, tmp_path):
    """Meta's own llama_models Transformer (fairscale layers, one-process gloo group) runs our Meta export."""
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    convert_checkpoint(ours_folder, tmp_path / "meta", "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        fs_init.initialize_model_parallel(1)
        reference = Transformer(ModelArgs(max_batch_size=2, max_seq_len=64, **params))
        reference.load_state_dict(torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True))
        input_ids = torch.randint(3, 512, (2, 40))
        want = reference(input_ids, start_pos=0)
    finally:
        fs_init.destroy_model_parallel()
        dist.destroy_process_group()
    ours = Llama3ForCausalLM.from_pretrained(ours_folder).eval()
    with torch.no_grad():
        got = ours(input_ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


# --- broken inputs: a clear error, a non-zero CLI exit, no output folder ---


def run_cli(*args: str) -> int:
    return cli_main(["convert", *map(str, args)])


def test_missing_shard_is_named(ours_folder, tmp_path):
    convert_checkpoint(ours_folder, tmp_path / "sharded", "ours", max_shard_size="100KB")
    victim = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim.name}.*missing"):
        load_checkpoint(tmp_path / "sharded")
    assert run_cli(tmp_path / "sharded", tmp_path / "out", "--to", "llama") == 2
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_named(ours_folder, tmp_path, capsys):
    import shutil

    shutil.copytree(ours_folder, tmp_path / "cut")
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert run_cli(tmp_path / "cut", tmp_path / "out", "--to", "meta") == 2
    assert "truncated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_wrong_shapes_are_named(ours_folder, tmp_path):
    import shutil

    shutil.copytree(ours_folder, tmp_path / "bad")
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["intermediate_size"] = 256
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"wrong shapes: model\.layers\.0\.mlp\.\w+_proj\.weight"):
        load_checkpoint(tmp_path / "bad")


def test_missing_meta_shard_and_bad_shard_count(ours_folder, tmp_path):
    convert_checkpoint(ours_folder, tmp_path / "meta", "meta", num_shards=2)
    with pytest.raises(CheckpointError, match="not divisible by 3 shards"):
        convert_checkpoint(ours_folder, tmp_path / "meta3", "meta", num_shards=3)
    (tmp_path / "meta" / "consolidated.00.pth").unlink()
    with pytest.raises(CheckpointError, match=r"missing shard\(s\) consolidated\.00\.pth"):
        load_checkpoint(tmp_path / "meta")


def test_existing_output_is_not_overwritten_without_flag(ours_folder, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert run_cli(ours_folder, tmp_path / "taken", "--to", "llama") == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    # A folder hf-llama3 did not write is never deleted, even with --overwrite (issue 12, finding 1).
    assert run_cli(ours_folder, tmp_path / "taken", "--to", "llama", "--overwrite") == 2
    assert "not created by hf-llama3" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    # One it wrote is replaced.
    assert run_cli(ours_folder, tmp_path / "ours", "--to", "llama") == 0
    (tmp_path / "ours" / "stale.txt").write_text("old output")
    assert run_cli(ours_folder, tmp_path / "ours", "--to", "llama", "--overwrite") == 0
    assert not (tmp_path / "ours" / "stale.txt").exists()
    assert load_file(tmp_path / "ours" / "model.safetensors")


def test_not_a_checkpoint_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(tmp_path / "empty", tmp_path / "out", "--to", "llama") == 2
    assert "neither a Hugging Face folder" in capsys.readouterr().err


def test_nanotron_round_trip_through_the_convert_command(ours_folder, tmp_path):
    """`--to nanotron` and back (the source format is detected), via the lazily imported training.nanotron bridge."""
    assert run_cli(ours_folder, tmp_path / "nanotron", "--to", "nanotron") == 0
    assert (tmp_path / "nanotron" / "model_config.json").exists()
    assert run_cli(tmp_path / "nanotron", tmp_path / "back", "--to", "ours") == 0
    assert_identical(tensors(ours_folder), tensors(tmp_path / "back"))
