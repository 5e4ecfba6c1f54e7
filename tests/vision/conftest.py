"""Shared folders for the vision-adapter tests: a tiny Llama 3 text checkpoint (real vocabulary) and its mllama."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def text_folder(tmp_path_factory):
    """A random `tiny` Llama 3 (2 layers, real 128256 vocabulary) in our format, with the real tokenizer."""
    from hf_llama3 import Llama3Config, Llama3ForCausalLM, load_tokenizer

    folder = tmp_path_factory.mktemp("vision") / "text"
    torch.manual_seed(0)
    Llama3ForCausalLM(Llama3Config.from_preset("tiny")).save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def mllama_folder(text_folder):
    """``vision init`` of the tiny text model: a cross-attention layer every 2 text layers (it has only 2)."""
    from training.vision.build import init_vision_folder

    return init_vision_folder(text_folder, text_folder.parent / "mllama", every=2, seed=0)
