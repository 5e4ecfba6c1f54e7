"""`vision train` [7.4]: the adapter learns to read the image while the language model stays bit-identical.

The frozen text model is a tiny Llama 3 trained on the synthetic captions alone (caption_lm.py): its held-out
caption loss is the text-only baseline. After adapter training the held-out loss must be clearly below it, and
clearly below the same model's loss when every caption is paired with another row's image (so the gain comes
from the image, not from a better caption prior learned by the new layers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import MllamaForConditionalGeneration

from hf_llama3 import Llama3ForCausalLM, load_tokenizer
from training.vision.build import init_vision_folder, text_to_mllama_state_dict
from training.vision.caption_lm import text_caption_loss, train_caption_language_model
from training.vision.config import fusion_schedule
from training.vision.data import synthetic_rows
from training.vision.train import VisionTrainConfig, train_vision_adapter

REPO = Path(__file__).resolve().parents[2]
EVAL_SEED = 10_000  # train_vision_adapter's held-out synthetic rows: seed 10_000 + config.seed


@pytest.fixture(scope="module")
def caption_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_train")
    text = train_caption_language_model(root / "text", preset="tiny", steps=80, seed=0)
    vision = init_vision_folder(text, root / "mllama", every=1, seed=0)
    return text, vision


def _assert_text_weights_equal(text_folder: Path, trained_folder: Path) -> None:
    text_model = Llama3ForCausalLM.from_pretrained(text_folder)
    layers = text_model.config.num_hidden_layers
    want = text_to_mllama_state_dict(text_model.state_dict(), layers, fusion_schedule(layers, 1))
    got = MllamaForConditionalGeneration.from_pretrained(trained_folder).state_dict()
    for name, tensor in want.items():  # includes the 8 new embedding rows (frozen with the vocabulary)
        assert torch.equal(got[name], tensor), name


@pytest.mark.slow
def test_adapter_reads_the_image_and_text_weights_stay_bit_identical(caption_models, tmp_path):
    text, vision = caption_models
    held_out = synthetic_rows(48, EVAL_SEED)
    baseline = text_caption_loss(Llama3ForCausalLM.from_pretrained(text), load_tokenizer(text), held_out)
    # The tiny encoder here is random, not pre-trained as the paper's [7.2]: training it from scratch together with
    # the adapter makes the outcome depend on the seed and the thread count (held-out 0.54 / 0.84 / 1.07 over three
    # seeds, the last never opening the image path). Frozen, it is a fixed random-feature extractor and the adapter
    # reads it on every seed tried: 0.76 / 0.89 / 0.76 against text-only 1.09 / 1.14 / 1.12 (seeds 0 / 1 / 2).
    config = VisionTrainConfig(
        model=str(vision),
        output=str(tmp_path / "trained"),
        steps=400,
        batch_size=16,
        learning_rate=3e-3,
        eval_rows=48,
        freeze_encoder=True,
    )
    metrics = train_vision_adapter(config)
    print(f"text-only baseline {baseline:.3f} | {json.dumps(metrics)}")
    assert metrics["text_weights_bit_identical"]
    assert metrics["eval_loss_text_only"] == pytest.approx(metrics["eval_loss_text_only_at_start"], abs=0)
    # Measured with this setup (seed 0): 0.76 with the images vs 1.09 text-only and 1.23 with mismatched images.
    assert metrics["eval_loss_with_images"] < baseline - 0.2
    assert metrics["eval_loss_with_images"] < metrics["eval_loss_mismatched_images"] - 0.2
    _assert_text_weights_equal(text, tmp_path / "trained")
    saved = json.loads((tmp_path / "trained" / "vision_train_metrics.json").read_text())
    assert saved["eval_loss_with_images"] == metrics["eval_loss_with_images"]


@pytest.mark.slow
def test_torchrun_two_processes(caption_models, tmp_path):
    text, vision = caption_models
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "training.vision.cli", "train", str(vision), "--steps", "3", "--batch-size", "4",
        "--synthetic-train-rows", "16", "--eval-rows", "8", "--output", str(tmp_path / "ddp"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "vision_train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["text_weights_bit_identical"]
    _assert_text_weights_equal(text, tmp_path / "ddp")
