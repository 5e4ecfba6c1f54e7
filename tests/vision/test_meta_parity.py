"""Parity with Meta's `llama_models.llama3.multimodal` reference on a tiny configuration, same weights converted.

The mllama folder from `vision init` gets random non-zero gates (so every gated path matters), is converted to
Meta's layout by `vision convert --to meta`, loaded strictly into Meta's own CrossAttentionTransformer (tiny
encoder sizes, see meta_reference.py) and both models see the same tokens and image tiles.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, MllamaForConditionalGeneration

from hf_llama3.cli import main as cli_main
from tests.vision.meta_reference import HAVE_TORCHVISION, meta_logits, model_parallel_group, tiny_meta_model
from training.vision.meta import convert_vision_checkpoint


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def gated_folder(mllama_folder, tmp_path_factory):
    """The tiny mllama with every gate set to a random non-zero value."""
    model = MllamaForConditionalGeneration.from_pretrained(mllama_folder).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("gate", "gate_attn", "gate_ffn")):
                parameter.uniform_(-1.5, 1.5)
    folder = tmp_path_factory.mktemp("gated") / "mllama"
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(mllama_folder).save_pretrained(folder)
    return folder


def test_image_conditioned_logits_match_meta_reference(gated_folder, tmp_path):
    assert cli_main(["vision", "convert", str(gated_folder), str(tmp_path / "meta"), "--to", "meta"]) == 0
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    model = MllamaForConditionalGeneration.from_pretrained(gated_folder).eval()
    processor = AutoProcessor.from_pretrained(gated_folder)
    # Several aspect ratios: 2x2 tiles (tall), 1x1, 1x2 (wide) [7.4].
    images = [_random_image(40, 70, 0), _random_image(30, 20, 1), _random_image(64, 30, 2)]
    texts = ["<|image|>two red circles", "<|image|>one blue square", "<|image|>three green dots"]
    batch = processor(
        text=texts, images=[[im] for im in images], add_special_tokens=False, padding=True, return_tensors="pt"
    )
    assert batch["attention_mask"].all()  # equal lengths: Meta's forward has no padding mask
    with torch.no_grad():
        got = model(**batch).logits
    ratios = model.config.vision_config.supported_aspect_ratios
    aspect = [tuple(ratios[int(i) - 1]) for i in batch["aspect_ratio_ids"][:, 0]]
    assert aspect == [(2, 2), (1, 1), (1, 2)]
    tiles = [batch["pixel_values"][b, 0, : h * w].clone() for b, (h, w) in enumerate(aspect)]
    with model_parallel_group(tmp_path / "store"):
        reference = tiny_meta_model(params, max_seq_len=batch["input_ids"].shape[1])
        reference.load_state_dict(
            torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True), strict=True
        )
        want = meta_logits(reference, batch["input_ids"].tolist(), tiles, aspect)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # The image matters: with the gates open, text-only logits differ.
    with torch.no_grad():
        text_only = model(input_ids=batch["input_ids"]).logits
    assert (text_only - got).abs().max() > 1e-2


def test_meta_round_trip_is_exact(gated_folder, tmp_path):
    convert_vision_checkpoint(gated_folder, tmp_path / "meta", "meta")
    convert_vision_checkpoint(tmp_path / "meta", tmp_path / "back", "mllama")
    a = MllamaForConditionalGeneration.from_pretrained(gated_folder).state_dict()
    b = MllamaForConditionalGeneration.from_pretrained(tmp_path / "back").state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert AutoProcessor.from_pretrained(tmp_path / "back").tokenizer.convert_tokens_to_ids("<|image|>") == 128256


def test_untied_tile_embeddings_have_no_meta_form(gated_folder, tmp_path, capsys):
    model = MllamaForConditionalGeneration.from_pretrained(gated_folder)
    with torch.no_grad():
        model.model.vision_model.pre_tile_positional_embedding.embedding.weight[6] += 1.0  # ratio 2x2 only
    model.save_pretrained(tmp_path / "untied")
    with pytest.raises(ValueError, match=r"pre_tile_positional_embedding.*aspect ratio 2x2.*no exact Meta form"):
        convert_vision_checkpoint(tmp_path / "untied", tmp_path / "meta", "meta")
    assert not (tmp_path / "meta").exists()


@pytest.mark.skipif(not HAVE_TORCHVISION, reason="Meta's VariableSizeImageTransform needs torchvision")
def test_preprocessing_matches_meta_image_transform(mllama_folder):
    """Tiles, aspect ratios and masks of MllamaImageProcessor vs Meta's transform on a few image sizes."""
    from llama_models.llama3.multimodal.image_transform import VariableSizeImageTransform

    processor = AutoProcessor.from_pretrained(mllama_folder)
    size = processor.image_processor.size["height"]
    transform = VariableSizeImageTransform(size)
    ratios = MllamaForConditionalGeneration.config_class.from_pretrained(mllama_folder).vision_config
    for seed, (w, h) in enumerate([(32, 32), (40, 70), (30, 20), (64, 30), (100, 33), (17, 90)]):
        image = _random_image(w, h, seed)
        out = processor.image_processor(images=[[image]], return_tensors="pt")
        tiles, (rows, cols) = transform(image, max_num_chunks=4)
        ratio_id = ratios.supported_aspect_ratios.index([rows, cols]) + 1
        assert out["aspect_ratio_ids"][0, 0].item() == ratio_id, (w, h)
        assert out["aspect_ratio_mask"][0, 0].tolist() == [1] * (rows * cols) + [0] * (4 - rows * cols)
        torch.testing.assert_close(out["pixel_values"][0, 0, : rows * cols], tiles, rtol=0, atol=1e-4)
