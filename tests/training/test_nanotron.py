"""The Nanotron bridge: checkpoint layout and exact round trips, and the YAML against Nanotron 0.4's own config
classes. Nanotron 0.4 cannot be imported as a package (``nanotron.config.config`` and ``nanotron.logging``
import each other at module level, so every entry point fails; its serializer imports ``nanotron.logging``
too). Its ``config/models_config.py`` imports nothing from nanotron, so it is loaded by file path and Nanotron's
``LlamaConfig`` validates the model section through dacite (strict, as Nanotron's loader does); the other
sections are checked key by key against the dataclass fields parsed from Nanotron's own source files."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.cli import main as cli_main
from tests.distributed.harness import TINY_OVERRIDES
from training.nanotron.config import NanotronRecipe, nanotron_config
from training.nanotron.convert import convert_from_nanotron, convert_to_nanotron, read_nanotron_checkpoint

NANOTRON_SPEC = importlib.util.find_spec("nanotron")
needs_nanotron = pytest.mark.skipif(NANOTRON_SPEC is None, reason="nanotron==0.4 not installed (pip install .[dev])")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("src") / "model"
    Llama3ForCausalLM(Llama3Config.from_preset("tiny", **TINY_OVERRIDES)).save_pretrained(folder)
    return folder


def _state(folder: Path) -> dict[str, torch.Tensor]:
    return Llama3ForCausalLM.from_pretrained(folder).state_dict()


def _load(path: Path) -> tuple[torch.Tensor, dict]:
    with safe_open(path, framework="pt") as f:
        return f.get_tensor("data"), f.metadata() or {}


@pytest.mark.parametrize(("schema", "tp"), [("main", 2), ("0.4", 4), ("main", 1)])
def test_round_trip_through_nanotron_layout_is_exact(hf_folder: Path, tmp_path: Path, schema: str, tp: int) -> None:
    nanotron = convert_to_nanotron(
        hf_folder, tmp_path / "nt", tp=tp, pp=2, rope_interleaved=schema == "0.4", schema=schema
    )
    back = convert_from_nanotron(nanotron, tmp_path / "back")
    source, restored = _state(hf_folder), _state(back)
    assert set(source) == set(restored)
    for key, tensor in source.items():
        torch.testing.assert_close(restored[key], tensor, rtol=0, atol=0, msg=lambda m, k=key: f"{k}: {m}")
    assert Llama3Config.from_pretrained(back).to_diff_dict() == Llama3Config.from_pretrained(hf_folder).to_diff_dict()


def test_files_follow_nanotron_sharding(hf_folder: Path, tmp_path: Path) -> None:
    nanotron = convert_to_nanotron(hf_folder, tmp_path / "nt", tp=2)
    source = _state(hf_folder)
    attn = nanotron / "model/model/decoder/3/pp_block/attn"
    shard, meta = _load(attn / "qkv_proj/model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors")
    q, k, v = (source[f"model.layers.3.self_attn.{n}_proj.weight"] for n in "qkv")
    # Rank 1 of 2 holds the second half of each of q, k, v, in that order.
    expected = torch.cat([q[q.shape[0] // 2 :], k[k.shape[0] // 2 :], v[v.shape[0] // 2 :]])
    torch.testing.assert_close(shard, expected, rtol=0, atol=0)
    rows = q.shape[0] + k.shape[0] + v.shape[0]
    assert meta["unsharded_shape"] == f"({rows}, {q.shape[1]})" and meta["version"] == "1.2"
    half_q, half_k = q.shape[0] // 2, k.shape[0] // 2
    assert meta["local_global_slices_pairs"].split(";")[1] == (
        f"{half_q},{half_q + half_k},None|None,None,None#{q.shape[0] + half_k},{q.shape[0] + k.shape[0]},None|None,None,None"
    )
    # Row-parallel o_proj splits the input dimension; norms are replicated (no rank suffix).
    o_shard, _ = _load(attn / "o_proj/model_weight_pp-rank-0-of-1_tp-rank-0-of-2.safetensors")
    o = source["model.layers.3.self_attn.o_proj.weight"]
    torch.testing.assert_close(o_shard, o[:, : o.shape[1] // 2], rtol=0, atol=0)
    norm, norm_meta = _load(nanotron / "model/model/decoder/3/pp_block/input_layernorm/model_weight.safetensors")
    torch.testing.assert_close(norm, source["model.layers.3.input_layernorm.weight"], rtol=0, atol=0)
    assert "unsharded_shape" not in norm_meta
    embed, _ = _load(
        nanotron
        / "model/model/token_position_embeddings/pp_block/token_embedding/model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors"
    )
    torch.testing.assert_close(embed, source["model.embed_tokens.weight"][512:], rtol=0, atol=0)
    metadata = json.loads((nanotron / "checkpoint_metadata.json").read_text())
    assert metadata == {
        "dp": 1,
        "metas": {"consumed_train_samples": 0, "last_train_step": 0},
        "tp": 2,
        "version": "1.2",
    }


def test_checkpoint_without_our_config_uses_nanotron_fields(hf_folder: Path, tmp_path: Path) -> None:
    nanotron = convert_to_nanotron(hf_folder, tmp_path / "nt", tp=2, rope_interleaved=True, schema="0.4")
    (nanotron / "hf_llama3_config.json").unlink()  # as written by Nanotron itself
    config, state = read_nanotron_checkpoint(nanotron)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}  # Nanotron 0.4's fixed base
    source = _state(hf_folder)
    for key, tensor in source.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)


def test_cli_convert_to_nanotron_and_bad_input(hf_folder: Path, tmp_path: Path) -> None:
    assert cli_main(["convert", "--to", "nanotron", str(hf_folder), str(tmp_path / "nt")]) == 0
    assert (tmp_path / "nt" / "model_config.json").is_file()
    assert cli_main(["convert", "--to", "nanotron", str(hf_folder), str(tmp_path / "nt")]) == 2  # exists
    with pytest.raises(ValueError, match="not a Nanotron checkpoint"):
        read_nanotron_checkpoint(hf_folder)


# --- YAML against Nanotron 0.4's own config classes -------------------------------------------------------------


def _nanotron_dataclass_fields() -> dict[str, dict[str, bool]]:
    """class name -> {field: has_default} for every dataclass in Nanotron's config package source."""
    folder = Path(NANOTRON_SPEC.submodule_search_locations[0]) / "config"
    classes: dict[str, dict[str, bool]] = {}
    for path in folder.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = {
                    item.target.id: item.value is not None
                    for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                }
    return classes


def _nanotron_llama_config_class():
    path = Path(NANOTRON_SPEC.submodule_search_locations[0]) / "config" / "models_config.py"
    spec = importlib.util.spec_from_file_location("_nanotron_models_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LlamaConfig


def _recipe(**parallel) -> NanotronRecipe:
    return NanotronRecipe(
        model="tiny",
        model_overrides=dict(TINY_OVERRIDES),
        parallel=parallel,
        optimizer=dict(lr=3e-4, warmup_steps=10),
        batch_size=16,
        seq_len=64,
        steps=100,
    )


@needs_nanotron
def test_yaml_matches_nanotron_0_4_schema() -> None:
    import dacite

    document, warnings = nanotron_config(_recipe(tp=2, pp=2, dp_shard=2, pp_microbatches=2), schema="0.4")
    document = yaml.safe_load(yaml.safe_dump(document))  # what Nanotron's loader reads
    classes = _nanotron_dataclass_fields()
    sections = {
        "": "Config",
        "general": "GeneralArgs",
        "parallelism": "ParallelismArgs",
        "model": "ModelArgs",
        "model.init_method": "RandomInit",
        "tokenizer": "TokenizerArgs",
        "checkpoints": "CheckpointsArgs",
        "logging": "LoggingArgs",
        "tokens": "TokensArgs",
        "optimizer": "OptimizerArgs",
        "optimizer.learning_rate_scheduler": "LRSchedulerArgs",
    }
    for section, class_name in sections.items():
        values = document
        for part in filter(None, section.split(".")):
            values = values[part]
        fields = classes[class_name]
        assert set(values) <= set(fields), f"{section}: keys {set(values) - set(fields)} unknown to {class_name}"
        assert {f for f, has_default in fields.items() if not has_default} <= set(values), section
    llama = dacite.from_dict(
        _nanotron_llama_config_class(), document["model"]["model_config"], dacite.Config(strict=True)
    )
    assert (llama.hidden_size, llama.num_key_value_heads, llama.vocab_size) == (64, 4, 1024)
    assert document["parallelism"] | {} == {
        "dp": 2,
        "pp": 2,
        "tp": 2,
        "pp_engine": "1f1b",
        "tp_mode": "REDUCE_SCATTER",
        "tp_linear_async_communication": True,
        "expert_parallel_size": 1,
    }
    assert document["tokens"]["micro_batch_size"] * document["tokens"]["batch_accumulation_per_replica"] * 2 == 16
    assert any("10000" in w for w in warnings) and any("rope scaling" in w for w in warnings)
    assert any("ZeRO-1" in w for w in warnings)


def test_yaml_main_schema_carries_rope_and_refuses_what_nanotron_lacks() -> None:
    document, _ = nanotron_config(_recipe(tp=2), schema="main")
    model_config = document["model"]["model_config"]
    assert model_config["rope_theta"] == 500000.0 and model_config["rope_interleaved"] is False
    assert model_config["rope_scaling"]["rope_type"] == "llama3"
    assert document["optimizer"]["optimizer_factory"]["name"] == "adamW"
    with pytest.raises(ValueError, match="no context parallelism"):
        nanotron_config(_recipe(cp=2))
    with pytest.raises(ValueError, match="no Nanotron engine"):
        nanotron_config(_recipe(pp=2, pp_schedule="interleaved_1f1b", pp_virtual_stages=2, pp_microbatches=2))


def test_cli_nanotron_config(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny", "model_overrides": dict(TINY_OVERRIDES), "batch_size": 4}))
    out = tmp_path / "nanotron.yaml"
    args = ["nanotron-config", "--config", str(recipe), "--output", str(out), "--set", "parallel.tp=2"]
    assert cli_main(args) == 0
    assert yaml.safe_load(out.read_text())["parallelism"]["tp"] == 2
    assert cli_main([*args[:-2], "--set", "parallel.cp=2"]) == 2
