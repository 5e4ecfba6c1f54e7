"""The reward-model head [paper 4.1.2]: one scalar per sequence, pooled on the last attended token."""

from __future__ import annotations

import torch
from transformers import LlamaForSequenceClassification

from hf_llama3 import Llama3ForSequenceClassification
from hf_llama3.convert import llama_config_from_ours
from tests.conftest import tiny_config


def reward_model():
    torch.manual_seed(0)
    return Llama3ForSequenceClassification(tiny_config(num_labels=1)).eval()


def test_one_scalar_per_sequence_matches_stock_llama_on_right_padding():
    model = reward_model()
    reference = LlamaForSequenceClassification(llama_config_from_ours(model.config)).eval()
    reference.load_state_dict(model.state_dict())
    input_ids = torch.randint(3, 512, (3, 10))
    input_ids[0, 6:] = 0  # right padding with the pad id
    with torch.no_grad():
        got = model(input_ids).logits
        want = reference(input_ids).logits
    assert got.shape == (3, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_left_and_right_padding_pool_the_same_token():
    model = reward_model()
    tokens = torch.randint(3, 512, (6,))
    right = torch.cat([tokens, torch.zeros(3, dtype=torch.long)])[None]
    left = torch.cat([torch.zeros(3, dtype=torch.long), tokens])[None]
    right_mask = (torch.arange(9) < 6).long()[None]
    left_mask = (torch.arange(9) >= 3).long()[None]
    with torch.no_grad():
        alone = model(tokens[None]).logits
        from_right = model(right, attention_mask=right_mask).logits
        from_left = model(left, attention_mask=left_mask).logits
    torch.testing.assert_close(from_right, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(from_left, alone, rtol=0, atol=1e-5)


def test_attention_mask_wins_over_pad_token_detection():
    """A pad id inside the attended text (e.g. a literal <|finetune_right_pad_id|>) does not move the pooling."""
    model = reward_model()
    input_ids = torch.randint(3, 512, (1, 8))
    input_ids[0, 7] = 0
    with torch.no_grad():
        masked = model(input_ids, attention_mask=torch.ones_like(input_ids)).logits
        hidden = model.model(input_ids).last_hidden_state
    torch.testing.assert_close(masked, model.score(hidden[:, -1]), rtol=0, atol=1e-6)


def test_regression_loss_for_scalar_head():
    model = reward_model()
    out = model(torch.randint(3, 512, (2, 5)), labels=torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(
        out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0]))
    )
