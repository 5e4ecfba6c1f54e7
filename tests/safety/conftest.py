"""Shared fixtures for the safety tests: the real Llama 3 tokenizer and one tiny guard trained once per session."""

from __future__ import annotations

import pytest
import torch

# The synthetic set [5.4]: 6 categories (S14 through code-interpreter tool calls), train and held-out splits.
GUARD_CATEGORIES = ["S1", "S2", "S7", "S9", "S10", "S14"]
NUM_ROWS, NUM_TRAIN = 480, 384


@pytest.fixture(scope="session")
def tokenizer():
    """The real Llama 3 tokenizer (converted from llama-models' tokenizer.model, cached)."""
    from hf_llama3 import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def guard_rows_split():
    from training.safety.synthetic import guard_rows

    rows = guard_rows(NUM_ROWS, seed=0, categories=tuple(GUARD_CATEGORIES))
    return rows[:NUM_TRAIN], rows[NUM_TRAIN:]


@pytest.fixture(scope="session")
def trained_guard(tmp_path_factory, tokenizer, guard_rows_split):
    """A tiny Llama 3 (preset "tiny", real vocabulary) fine-tuned into a guard with TRL on CPU; its export folder."""
    import time

    from hf_llama3 import Llama3Config, Llama3ForCausalLM
    from training.safety.train import GuardTrainConfig, train_guard

    root = tmp_path_factory.mktemp("guard")
    torch.manual_seed(0)
    base = Llama3ForCausalLM(Llama3Config.from_preset("tiny"))
    base.save_pretrained(root / "base")  # one of our checkpoints
    config = GuardTrainConfig(
        output_dir=str(root / "run"),
        model_name_or_path=str(root / "base"),
        synthetic_rows=NUM_ROWS,
        categories=GUARD_CATEGORIES,
        max_steps=200,
        per_device_train_batch_size=32,  # the step cost is the 128K-row output layer and optimizer, not the batch
        learning_rate=1e-2,
        lr_scheduler_type="linear",
        logging_steps=50,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        activation_checkpointing=False,
        disable_tqdm=True,
    )
    start = time.perf_counter()
    folder = train_guard(config, tokenizer=tokenizer, rows=guard_rows_split[0])
    print(f"guard training: {time.perf_counter() - start:.1f} s")
    return folder
