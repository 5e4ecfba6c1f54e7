"""`hf-llama3 quantize --fp8`: the export layout transformers' fbgemm_fp8 quantizer expects, the CPU reference
path against bf16, and clear errors for bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.integrations.fbgemm_fp8 import FbgemmFp8Linear
from transformers.quantizers.quantizer_fbgemm_fp8 import FbgemmFp8HfQuantizer
from transformers.utils.quantization_config import FbgemmFp8Config

from hf_llama3 import Llama3ForSequenceClassification
from hf_llama3.checkpoint_io import CheckpointError, read_state_dict
from hf_llama3.cli import main as cli_main
from hf_llama3.convert import convert_checkpoint
from hf_llama3.fp8 import dequantize_rowwise, quantize_rowwise
from hf_llama3.fp8_loader import load_fp8_model
from hf_llama3.quantize import quantize_fp8_checkpoint
from tests.conftest import tiny_config
from tests.hf_llama3 import fbgemm_cpu_ops
from tests.hf_llama3.fp8_models import peaked_tiny_model, random_prompts, save_bf16

LAYERS = 5
FP8_MODULES = [f"model.layers.{i}.mlp.{p}" for i in (1, 2, 3) for p in ("gate_proj", "up_proj", "down_proj")]
# Logit tolerance of the CPU FP8 path vs bf16 weights (fp32 compute), relative to the largest logit. Measured
# on this model: 4.3% for FP8 activations + weights, 2.9% for FP8 weights only; top-1 agreement 0.90 / 0.92 on
# random prompts (the random model has many near-ties between its top two tokens).
LOGIT_TOLERANCE = 0.08


@pytest.fixture(scope="module")
def model():
    return peaked_tiny_model(num_layers=LAYERS)


@pytest.fixture(scope="module")
def folders(model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8")
    src = save_bf16(model, root / "bf16")
    quantize_fp8_checkpoint(src, root / "fp8")
    convert_checkpoint(src, root / "llama_bf16", "llama", max_shard_size="200KB")  # sharded, stock format
    quantize_fp8_checkpoint(root / "llama_bf16", root / "llama_fp8")
    return {"src": src, "fp8": root / "fp8", "llama_bf16": root / "llama_bf16", "llama_fp8": root / "llama_fp8"}


def test_layout_fp8_ffn_middle_layers_and_everything_else_untouched(folders):
    src, out = read_state_dict(folders["src"]), read_state_dict(folders["fp8"])
    scales = sorted(name.removesuffix(".weight_scale") for name in out if name.endswith(".weight_scale"))
    assert scales == sorted(FP8_MODULES)
    assert set(out) == set(src) | {f"{m}.weight_scale" for m in FP8_MODULES}
    for name in src:
        module = name.removesuffix(".weight")
        if module in FP8_MODULES:
            # transformers' FbgemmFp8Linear: weight float8_e4m3fn [out, in], weight_scale float32 [out, 1].
            assert out[name].dtype == torch.float8_e4m3fn and out[name].shape == src[name].shape
            assert out[f"{module}.weight_scale"].dtype == torch.float32
            assert out[f"{module}.weight_scale"].shape == (src[name].shape[0], 1)
            q, _ = quantize_rowwise(src[name])
            assert torch.equal(out[name].view(torch.uint8), q.view(torch.uint8))
            deq = dequantize_rowwise(out[name], out[f"{module}.weight_scale"])
            rel = (deq - src[name].float()).abs() / src[name].float().abs().clamp(min=1e-3)
            assert rel.max() < 0.07  # e4m3 resolution (2**-4), above the subnormal range
        else:  # attention, layers 0 and 4, embeddings, norms, lm_head: bit-identical bf16
            assert torch.equal(out[name], src[name]), name
    assert any(n.startswith("model.layers.0.mlp") for n in out) and "lm_head.weight" in out


def test_config_is_what_transformers_serialises_for_these_settings(folders):
    expected_keep = []
    for i in range(LAYERS):
        expected_keep += [f"model.layers.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if i in (0, LAYERS - 1):
            expected_keep += [f"model.layers.{i}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")]
    expected = FbgemmFp8Config(activation_scale_ub=1200.0, modules_to_not_convert=[*expected_keep, "lm_head"])
    for name in ("fp8", "llama_fp8"):
        config = json.loads((folders[name] / "config.json").read_text())
        assert config["quantization_config"] == json.loads(expected.to_json_string())
        assert config["quantization_config"]["quant_method"] == "fbgemm_fp8"
        assert FbgemmFp8Config.from_dict(config["quantization_config"]).to_dict() == expected.to_dict()
    ours = json.loads((folders["fp8"] / "config.json").read_text())
    assert ours["model_type"] == "llama3" and "AutoModelForCausalLM" in ours["auto_map"]
    assert (folders["fp8"] / "modeling_llama3.py").exists()
    assert json.loads((folders["llama_fp8"] / "config.json").read_text())["model_type"] == "llama"


def test_sharded_source_keeps_its_shards_and_index(folders):
    index = json.loads((folders["llama_fp8"] / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == sorted(p.name for p in folders["llama_fp8"].glob("*.safetensors"))
    for name, file in index["weight_map"].items():
        with safe_open(folders["llama_fp8"] / file, framework="pt") as f:
            assert name in f.keys()  # noqa: SIM118 (safe_open is not a container)
    assert index["metadata"]["total_size"] == sum((folders["llama_fp8"] / f).stat().st_size for f in files)


@pytest.fixture
def from_pretrained_on_cpu(monkeypatch):
    """transformers' own ``from_pretrained`` for fbgemm_fp8 folders on CPU: only the quantizer's GPU requirement
    check is bypassed; the two fbgemm operators its FbgemmFp8Linear calls run as their CPU versions."""
    fbgemm_cpu_ops.register()
    monkeypatch.setattr(FbgemmFp8HfQuantizer, "validate_environment", lambda self, *args, **kwargs: None)
    return AutoModelForCausalLM.from_pretrained


@pytest.mark.parametrize("name", ["llama_fp8", "fp8"])
def test_transformers_from_pretrained_loads_the_export_as_our_cpu_path_runs_it(folders, name, from_pretrained_on_cpu):
    """Stock `LlamaForCausalLM` (and our remote-code class) through transformers' fbgemm_fp8 quantizer: exactly the
    paper's modules become `FbgemmFp8Linear`, every tensor arrives as written, and the logits equal our path's."""
    fp8_model = from_pretrained_on_cpu(folders[name])
    assert type(fp8_model).__name__ == ("LlamaForCausalLM" if name == "llama_fp8" else "Llama3ForCausalLM")
    converted = [n for n, m in fp8_model.named_modules() if isinstance(m, FbgemmFp8Linear)]
    assert converted == FP8_MODULES
    assert all(float(m.input_scale_ub) == 1200.0 for m in fp8_model.modules() if isinstance(m, FbgemmFp8Linear))
    loaded, written = fp8_model.state_dict(), read_state_dict(folders[name])
    assert set(loaded) == set(written)
    for key, tensor in written.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(
            loaded[key].view(torch.uint8), tensor.view(torch.uint8)
        )
    ids = torch.tensor(random_prompts(2, 16, seed=3))
    with torch.no_grad():
        theirs = fp8_model(ids).logits
        ours = load_fp8_model(folders[name], activations="fp8", dtype=torch.bfloat16)(ids).logits
    # Same arithmetic (per-token e4m3 activations bounded at 1200, fp32 products, bf16 out), same fp32 RoPE.
    assert torch.equal(theirs, ours)


def test_from_pretrained_recognises_fbgemm_fp8_and_asks_for_a_gpu_on_cpu(folders):
    with pytest.raises(ImportError, match="fbgemm fp8 quantization requires a GPU"):
        AutoModelForCausalLM.from_pretrained(folders["llama_fp8"])


@pytest.mark.parametrize("activations", ["fp8", "bf16"])
def test_cpu_reference_path_logits_within_tolerance_of_bf16(folders, model, activations):
    ids = torch.tensor(random_prompts(3, 24, seed=4))
    reference = model.float()
    quantized = load_fp8_model(folders["fp8"], activations=activations, dtype=torch.float32)
    assert sum(type(m).__name__ == "Fp8RowwiseLinear" for m in quantized.modules()) == len(FP8_MODULES)
    with torch.no_grad():
        a, b = reference(ids).logits, quantized(ids).logits
    model.to(torch.bfloat16)
    diff = (a - b).abs()
    assert 0 < diff.max() <= LOGIT_TOLERANCE * a.abs().max(), (diff.max(), a.abs().max())
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.85


def test_bad_input_already_quantized_unsupported_architecture_too_few_layers(folders, tmp_path):
    with pytest.raises(CheckpointError, match="already has a quantization_config"):
        quantize_fp8_checkpoint(folders["fp8"], tmp_path / "again")
    stripped = tmp_path / "stripped"  # FP8 weights without the config entry
    shutil.copytree(folders["fp8"], stripped)
    config = json.loads((stripped / "config.json").read_text())
    del config["quantization_config"]
    (stripped / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="already FP8-quantized"):
        quantize_fp8_checkpoint(stripped, tmp_path / "again")
    mistral = tmp_path / "mistral"
    shutil.copytree(folders["llama_bf16"], mistral)
    config = json.loads((mistral / "config.json").read_text())
    (mistral / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(CheckpointError, match="model_type 'mistral'"):
        quantize_fp8_checkpoint(mistral, tmp_path / "out")
    classifier = tmp_path / "rm"
    Llama3ForSequenceClassification(tiny_config(num_hidden_layers=3, num_labels=1)).save_pretrained(classifier)
    with pytest.raises(CheckpointError, match="is not a causal LM"):
        quantize_fp8_checkpoint(classifier, tmp_path / "out")
    two_layers = save_bf16(peaked_tiny_model(num_layers=2), tmp_path / "two")
    with pytest.raises(CheckpointError, match="no layer to quantize"):
        quantize_fp8_checkpoint(two_layers, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        quantize_fp8_checkpoint(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(FileExistsError):
        quantize_fp8_checkpoint(folders["src"], folders["fp8"])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    with pytest.raises(CheckpointError, match="not an FP8 export"):
        load_fp8_model(folders["src"])


def test_cli_quantize_with_memory_report_and_one_line_errors(folders, tmp_path, capsys):
    assert (
        cli_main(["quantize", "--fp8", str(folders["src"]), str(tmp_path / "q"), "--memory", "--context", "4096"]) == 0
    )
    out = capsys.readouterr().out
    assert "9 FFN projections in layers 1-3" in out and "bf16: weights" in out and "fp8: weights" in out
    report = json.loads((tmp_path / "q" / "quantization_report.json").read_text())
    assert report["fp8_layers"] == [1, 2, 3] and report["bytes_after"] < report["bytes_before"]
    memory = report["memory"]  # 5 layers x 2 KV heads x head_dim 16 x 2 (K, V) x 2 bytes per token
    assert memory["kv_cache_bytes_per_token"] == 5 * 2 * 16 * 2 * 2 and memory["context"] == 131072
    assert memory["fp8"]["weight_bytes"] < memory["bf16"]["weight_bytes"]
    assert cli_main(["quantize", "--memory", "--preset", "llama3-405b"]) == 0
    out = capsys.readouterr().out
    assert "405.85B" in out and "bf16: weights 811.7 GB" in out and "fp8: weights 487.2 GB" in out
    assert "does NOT fit" in out and "-> fits" in out
    assert cli_main(["quantize", "--fp8", str(folders["fp8"]), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-llama3 quantize: error:") and "already has a quantization_config" in err
    assert len(err.splitlines()) == 1
