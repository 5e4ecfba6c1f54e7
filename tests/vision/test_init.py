"""`vision init`: a stock mllama folder from our text checkpoint [7]; text logits unchanged; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import MllamaTextConfig

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from hf_llama3.cli import main as cli_main
from training.vision.config import fusion_schedule, mllama_layer_indices
from training.vision.meta import meta_fusion_schedule

FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    sys.modules["hf_llama3"] = None  # the folder must load without this package
    sys.modules["training"] = None
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoProcessor, MllamaForConditionalGeneration
    folder, ids_file, out_file = sys.argv[1:]
    model = MllamaForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    ids = torch.load(ids_file)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (70, 40, 3), dtype=np.uint8))
    batch = processor(text=["<|image|>two red circles"], images=[[image]], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = {
            "text": model(input_ids=ids).logits,
            "with_image": model(**batch).logits,
            "same_ids_no_image": model(input_ids=batch["input_ids"]).logits,
            "image_token_id": processor.tokenizer.convert_tokens_to_ids("<|image|>"),
            "input_ids": batch["input_ids"],
            "processor": type(processor).__name__,
        }
    torch.save(out, out_file)
    """
)


def test_folder_loads_without_hf_llama3_and_keeps_text_logits(text_folder, mllama_folder, tmp_path):
    config = json.loads((mllama_folder / "config.json").read_text())
    assert config["model_type"] == "mllama" and config["architectures"] == ["MllamaForConditionalGeneration"]
    assert "auto_map" not in config
    assert config["text_config"]["cross_attention_layers"] == [1]  # before text layer 1 of 2
    torch.manual_seed(0)
    ids = torch.randint(0, 128000, (2, 12))
    torch.save(ids, tmp_path / "ids.pt")
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run(
        [sys.executable, str(script), str(mllama_folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    text_model = Llama3ForCausalLM.from_pretrained(text_folder).eval()
    with torch.no_grad():
        want = text_model(ids).logits
    torch.testing.assert_close(out["text"], want, rtol=0, atol=1e-5)
    # Gates at zero [7.2]: the image changes nothing until training opens them.
    torch.testing.assert_close(out["with_image"], out["same_ids_no_image"], rtol=0, atol=1e-5)
    assert out["image_token_id"] == 128256 and out["input_ids"][0, 0].item() == 128256
    assert out["processor"] == "MllamaProcessor"


def test_cross_attention_positions_match_meta_and_the_release():
    """[7.2] every fourth layer: 32 text layers -> mllama indices 3, 8, ..., 38 (the 11B release's config)."""
    fusion = fusion_schedule(32, 4)
    assert fusion == meta_fusion_schedule(32, 8)  # Meta's own rule (llama_models _init_fusion_schedule)
    cross, text_positions = mllama_layer_indices(32, fusion)
    assert cross == MllamaTextConfig().cross_attention_layers
    assert sorted(cross + text_positions) == list(range(40))


def test_tokenizer_and_chat_template(mllama_folder):
    from transformers import AutoProcessor

    from hf_llama3 import load_tokenizer

    processor = AutoProcessor.from_pretrained(mllama_folder)
    tokenizer, text_tokenizer = processor.tokenizer, load_tokenizer()
    text = "Describe the picture: 3 shapes, côté gauche <|eot_id|>"
    assert tokenizer(text).input_ids == text_tokenizer(text).input_ids
    assert tokenizer.convert_ids_to_tokens([128011, 128256]) == ["<|reserved_special_token_2|>", "<|image|>"]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>What is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_layer_count_the_spacing_cannot_use_is_refused(text_folder, tmp_path, capsys):
    """The tiny model has 2 layers: the paper's spacing (4) cannot place cross-attention evenly."""
    from training.vision.build import init_vision_folder

    with pytest.raises(ValueError, match=r"has 2 layers.*every 4 layers.*--cross-attention-every"):
        init_vision_folder(text_folder, tmp_path / "out")
    assert cli_main(["vision", "init", str(text_folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cross-attention-every" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_small_vocabulary_is_refused(tmp_path):
    from hf_llama3 import load_tokenizer
    from training.vision.build import init_vision_folder

    Llama3ForCausalLM(
        Llama3Config.from_preset("tiny", vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    ).save_pretrained(tmp_path / "small")
    load_tokenizer().save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match=r"vocab_size 512 .* 128256 tokens"):
        init_vision_folder(tmp_path / "small", tmp_path / "out", every=1)
    assert not (tmp_path / "out").exists()
