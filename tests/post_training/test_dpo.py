"""DPO [4.1.4]: formatting tokens masked (checked by token id), loss = hand-computed DPO + 0.2 NLL, in-memory reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from tests.post_training.conftest import tiny_causal_lm, trainer_args
from training.dpo import Llama3DPOConfig, Llama3DPOTrainer

ROWS = [
    {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": [{"role": "assistant", "content": "It is London, I believe."}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]
FORMATTING_IDS = {128006, 128007, 128008, 128009}  # header start/end, eom, eot


def _trainer(tmp_path, tokenizer, rows=ROWS, **overrides):
    config = Llama3DPOConfig(**trainer_args(tmp_path, **overrides))
    return Llama3DPOTrainer(
        model=tiny_causal_lm(0), args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def test_paper_defaults():
    config = Llama3DPOConfig(output_dir="unused", report_to="none", bf16=False, use_cpu=True)
    assert (config.beta, config.learning_rate) == (0.1, 1e-5)
    assert config.loss_type == ["sigmoid", "sft"] and config.loss_weights == [1.0, 0.2]


def test_formatting_tokens_are_masked_by_token_id(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    for row in range(4):  # chosen 0, 1 then rejected 0, 1
        ids = batch["input_ids"][row]
        kept = ids[batch["completion_mask"][row].bool()].tolist()
        prompt_len = len(trainer.train_dataset[row % 2]["prompt_ids"])
        key = "chosen_ids" if row < 2 else "rejected_ids"
        completion = trainer.train_dataset[row % 2][key]
        # The completion is content + <|eot_id|>: exactly the eot is dropped, every content token kept.
        assert completion[-1] == 128009
        assert kept == completion[:-1]
        assert not FORMATTING_IDS & set(kept)
        assert ids[prompt_len + len(completion) - 1].item() == 128009


def _completion_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].bool()
    return logps, mask


def test_loss_equals_hand_computed_dpo_plus_nll(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():  # move the policy away from the (frozen, in-memory) reference
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    policy, reference = trainer.model.eval(), trainer.ref_model
    with torch.no_grad():
        loss = trainer.compute_loss(policy, dict(batch)).item()
        pol, mask = _completion_logps(policy, batch)
        ref, _ = _completion_logps(reference, batch)
    seq_pol, seq_ref = (pol * mask).sum(-1), (ref * mask).sum(-1)
    delta = (seq_pol[:2] - seq_ref[:2]) - (seq_pol[2:] - seq_ref[2:])
    dpo = -F.logsigmoid(0.1 * delta).mean()
    nll = -pol[:2][mask[:2]].mean()
    assert loss == pytest.approx((dpo + 0.2 * nll).item(), rel=1e-4)
    assert not math.isclose(delta.abs().sum().item(), 0.0)


def test_reference_is_an_in_memory_frozen_copy(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    assert trainer.ref_model is not trainer.model
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    reference = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(p, reference[n]) for n, p in trainer.ref_model.named_parameters())


def test_bad_rows_are_reported(tmp_path, tokenizer):
    bad = [dict(ROWS[0]), {**ROWS[1], "rejected": [{"role": "assistant", "content": "  "}]}]
    with pytest.raises(ValueError, match="row 1: empty rejected"):
        _trainer(tmp_path, tokenizer, rows=bad)
    with pytest.raises(ValueError, match="are not preference rows"):
        _trainer(tmp_path, tokenizer, rows=[{"prompt": ROWS[0]["prompt"], "chosen": ROWS[0]["chosen"]}])
    with pytest.raises(ValueError, match=r"row 0: \d+ tokens"):
        _trainer(tmp_path, tokenizer, max_length=16)
