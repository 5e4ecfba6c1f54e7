"""SFT [4.1.3]: assistant-only labels equal chat_format's, packed rows keep documents apart, training runs."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from tests.post_training.conftest import tiny_causal_lm, trainer_args
from training.sft import Llama3SFTConfig, check_sft_rows, make_trainer

DIALOGS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Pear, or a plum if you prefer."},
    ],
    [{"role": "user", "content": "Say hello in French."}, {"role": "assistant", "content": "Bonjour !"}],
    [{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome is the capital."}],
]


def _trainer(tmp_path, tokenizer, **overrides):
    config = Llama3SFTConfig(**trainer_args(tmp_path, **{"max_length": 256, **overrides}))
    rows = Dataset.from_list([{"messages": d} for d in DIALOGS])
    return make_trainer(config, tiny_causal_lm(0), tokenizer, rows)


def test_paper_defaults():
    config = Llama3SFTConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True)
    assert config.learning_rate == 1e-5 and config.assistant_only_loss and config.packing


def test_assistant_only_labels_match_chat_format(tmp_path, tokenizer):
    from hf_llama3 import encode_dialog

    trainer = _trainer(tmp_path, tokenizer, packing=False)
    for index, dialog in enumerate(DIALOGS):
        encoded = encode_dialog(tokenizer, dialog)
        batch = trainer.data_collator([trainer.train_dataset[index]])
        assert batch["input_ids"][0].tolist() == encoded.input_ids
        assert batch["labels"][0].tolist() == encoded.labels  # assistant content + <|eot_id|> only


def test_packed_loss_equals_separate_dialog_losses(tmp_path, tokenizer):
    """Packing with position ids restarting per dialog: the loss is that of the dialogs run one by one."""
    from hf_llama3 import encode_dialog

    trainer = _trainer(tmp_path, tokenizer, packing=True)
    assert len(trainer.train_dataset) == 1  # all four dialogs fit one 256-token row
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert "attention_mask" not in batch or batch["attention_mask"] is None
    assert (batch["position_ids"][0] == 0).sum().item() == len(DIALOGS)
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
        total, count = 0.0, 0
        for dialog in DIALOGS:
            encoded = encode_dialog(tokenizer, dialog)
            labels = torch.tensor([encoded.labels])
            n = (labels[:, 1:] != -100).sum().item()
            total += model(input_ids=torch.tensor([encoded.input_ids]), labels=labels).loss.item() * n
            count += n
    assert packed.item() == pytest.approx(total / count, rel=1e-4)


def test_training_changes_parameters(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, packing=True, max_length=64, per_device_train_batch_size=1)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


def test_bad_rows_are_reported():
    rows = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "yo"}]},
        ]
    )
    with pytest.raises(ValueError, match=r"row 1: no assistant turn.*row 2: message 0 \(user\) is empty"):
        check_sft_rows(rows)
    with pytest.raises(ValueError, match="neither 'messages'"):
        check_sft_rows(Dataset.from_list([{"text": "x"}]))


def test_rows_longer_than_max_length_are_reported(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"row 1: \d+ tokens"):
        _trainer(tmp_path, tokenizer, max_length=40)
