"""Auto-class registration, and remote-code loading in a fresh process that cannot import hf_llama3."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_llama3 import Llama3Config, Llama3ForCausalLM, Llama3ForSequenceClassification, Llama3Model
from tests.conftest import tiny_config


def test_auto_classes_resolve_our_model_type(tmp_path):
    values = {k: v for k, v in Llama3Config.from_preset("tiny").to_dict().items() if k != "model_type"}
    config = AutoConfig.for_model("llama3", **values)
    assert isinstance(config, Llama3Config)
    assert isinstance(AutoModel.from_config(config), Llama3Model)
    assert isinstance(AutoModelForCausalLM.from_config(config), Llama3ForCausalLM)
    assert isinstance(AutoModelForSequenceClassification.from_config(config), Llama3ForSequenceClassification)


def test_saved_folder_lists_every_auto_class_and_ships_the_modeling_files(tmp_path):
    Llama3ForCausalLM(tiny_config()).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_llama3.Llama3Config",
        "AutoModel": "modeling_llama3.Llama3Model",
        "AutoModelForCausalLM": "modeling_llama3.Llama3ForCausalLM",
        "AutoModelForSequenceClassification": "modeling_llama3.Llama3ForSequenceClassification",
    }
    assert (tmp_path / "modeling_llama3.py").exists() and (tmp_path / "configuration_llama3.py").exists()


def test_fresh_process_loads_with_remote_code_and_without_hf_llama3(tmp_path):
    torch.manual_seed(0)
    model = Llama3ForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    input_ids = torch.randint(3, 512, (1, 10))
    with torch.no_grad():
        expected = model(input_ids).logits
    torch.save({"input_ids": input_ids, "logits": expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_llama3"] = None  # any import of our package now fails
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        ref = torch.load({str(tmp_path / "expected.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "Llama3ForCausalLM", type(model)
        assert not any(name.startswith("hf_llama3") for name in sys.modules if sys.modules[name] is not None)
        with torch.no_grad():
            torch.testing.assert_close(model(ref["input_ids"]).logits, ref["logits"], rtol=0, atol=1e-6)
        out = model.generate(ref["input_ids"], max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 13)
        head = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True,
                                                                   num_labels=1)
        assert type(head).__name__ == "Llama3ForSequenceClassification"
        print("REMOTE-CODE-OK")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "REMOTE-CODE-OK" in result.stdout, result.stderr[-3000:]


def test_from_pretrained_in_process_restores_inv_freq_after_meta_loading(tmp_path):
    torch.manual_seed(0)
    model = Llama3ForCausalLM(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, Llama3ForCausalLM)
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq, rtol=0, atol=0)
    input_ids = torch.randint(3, 512, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)
