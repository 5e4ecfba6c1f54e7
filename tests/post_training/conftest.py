"""Shared fixtures for the post-training tests: tiny Llama 3 models with the real 128256-token vocabulary."""

from __future__ import annotations

import pytest
import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM, Llama3ForSequenceClassification


def tiny_causal_lm(seed: int = 0) -> Llama3ForCausalLM:
    """A freshly initialised tiny causal LM (preset "tiny"), deterministic in ``seed``."""
    torch.manual_seed(seed)
    return Llama3ForCausalLM(Llama3Config.from_preset("tiny")).eval()


def tiny_reward_model(seed: int = 0) -> Llama3ForSequenceClassification:
    """A freshly initialised tiny reward model (one score per sequence)."""
    torch.manual_seed(seed)
    return Llama3ForSequenceClassification(Llama3Config.from_preset("tiny", num_labels=1)).eval()


@pytest.fixture
def causal_lm() -> Llama3ForCausalLM:
    return tiny_causal_lm()


@pytest.fixture(scope="session")
def tokenizer():
    """The real Llama 3 tokenizer (converted from llama-models' tokenizer.model, cached)."""
    from hf_llama3 import load_tokenizer

    return load_tokenizer()


def trainer_args(tmp_path, **overrides) -> dict:
    """TRL training arguments for a few quick CPU steps."""
    return {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "activation_checkpointing": False,
        "use_cpu": True,
        "seed": 0,
        **overrides,
    }


PREFERENCE_ROWS = [
    {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "edited": "The capital of France is Paris.",
        "chosen": "Paris.",
        "rejected": "London, I think.",
        "strength": "significantly better",
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "edited": None,
        "chosen": "Hi!",
        "rejected": "I will not.",
        "strength": "better",
    },
    {
        "prompt": [{"role": "user", "content": "Add 2 and 3."}],
        "edited": None,
        "chosen": "2 + 3 = 5.",
        "rejected": "23",
        "strength": "slightly better",
    },
    {
        "prompt": [{"role": "user", "content": "Name a colour."}],
        "edited": "Blue.",
        "chosen": "blue",
        "rejected": "Seven.",
        "strength": "Better",
    },
]
