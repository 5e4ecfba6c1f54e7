"""Our Llama3ForCausalLM against transformers' LlamaForCausalLM with the same weights (the reference we did not write)."""

from __future__ import annotations

import pytest
import torch

from hf_llama3 import Llama3ForCausalLM
from tests.conftest import stock_llama_like, tiny_config

ROPE_OFF = {"rope_type": "default", "rope_theta": 500000.0}


def long_range_positions(batch: int, half: int) -> torch.Tensor:
    """Positions with relative distances far beyond the original 8192 context inside each row."""
    row = torch.cat([torch.arange(half), torch.arange(half) + 20000])
    return row.expand(batch, -1) + torch.arange(batch)[:, None] * 7


def build_pair(attn_implementation: str, **overrides):
    torch.manual_seed(0)
    config = tiny_config(num_attention_heads=8, num_key_value_heads=2, **overrides)  # GQA 8 query / 2 KV heads
    config._attn_implementation = attn_implementation
    ours = Llama3ForCausalLM(config).eval()
    # Non-trivial norms so a swapped norm would show.
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return ours, stock_llama_like(ours)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("rope_parameters", [None, ROPE_OFF], ids=["llama3-rope", "plain-rope"])
def test_logits_match_stock_llama_beyond_8k_positions(attn_implementation, rope_parameters):
    overrides = {} if rope_parameters is None else {"rope_parameters": dict(rope_parameters)}
    ours, reference = build_pair(attn_implementation, **overrides)
    input_ids = torch.randint(3, 512, (2, 48))
    # Distances past the original 8192 context exercise the scaled low-frequency band of the Llama 3.1 RoPE; the
    # explicit mask keeps the position jump from being read as a document boundary.
    position_ids = long_range_positions(2, 24)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        got = ours(input_ids, attention_mask=mask, position_ids=position_ids).logits
        want = reference(input_ids, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_rope_scaling_changes_logits_at_long_positions():
    """Guard against a test that cannot fail: with and without scaling the long-position logits differ."""
    # A larger init makes attention sharp enough for the rotation of far-apart keys to matter.
    scaled, _ = build_pair("sdpa", initializer_range=0.5)
    plain, _ = build_pair("sdpa", initializer_range=0.5, rope_parameters=dict(ROPE_OFF))
    input_ids = torch.randint(3, 512, (1, 32))
    position_ids = long_range_positions(1, 16)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        difference = (
            scaled(input_ids, attention_mask=mask, position_ids=position_ids).logits
            - plain(input_ids, attention_mask=mask, position_ids=position_ids).logits
        )
    assert difference[:, 16:].abs().max() > 1e-2


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_left_padded_batch_matches_stock_llama(attn_implementation):
    ours, reference = build_pair(attn_implementation)
    input_ids = torch.randint(3, 512, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :7] = 0
    attention_mask[1, :2] = 0
    input_ids[attention_mask == 0] = 0
    with torch.no_grad():
        got = ours(input_ids, attention_mask=attention_mask).logits
        want = reference(input_ids, attention_mask=attention_mask).logits
    attended = attention_mask.bool()
    torch.testing.assert_close(got[attended], want[attended], rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generate_is_token_identical_batched_left_padded(use_cache):
    ours, reference = build_pair("sdpa")
    input_ids = torch.randint(3, 512, (2, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0
    input_ids[1, :4] = 0
    kwargs = dict(
        attention_mask=attention_mask, max_new_tokens=12, do_sample=False, use_cache=use_cache, pad_token_id=0
    )
    got = ours.generate(input_ids, **kwargs)
    want = reference.generate(input_ids, **kwargs)
    assert got.shape == (2, 22)
    assert torch.equal(got, want)


def test_generate_with_and_without_cache_agree():
    ours, _ = build_pair("eager")
    input_ids = torch.randint(3, 512, (1, 8))
    with_cache = ours.generate(input_ids, max_new_tokens=10, do_sample=False, use_cache=True)
    without_cache = ours.generate(input_ids, max_new_tokens=10, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


def test_sampling_is_seeded_and_matches_stock_llama():
    ours, reference = build_pair("sdpa")
    input_ids = torch.randint(3, 512, (2, 6))
    torch.manual_seed(123)
    got = ours.generate(input_ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9)
    torch.manual_seed(123)
    want = reference.generate(input_ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9)
    assert torch.equal(got, want)


def test_training_loss_and_gradients_match_stock_llama_with_gradient_checkpointing():
    ours, reference = build_pair("sdpa", loss_chunk_size=16)
    ours.train()
    reference.train()
    ours.activation_checkpointing_enable()
    input_ids = torch.randint(3, 512, (2, 24))
    labels = input_ids.clone()
    labels[:, :5] = -100
    loss = ours(input_ids, labels=labels).loss
    loss.backward()
    reference_loss = reference(input_ids, labels=labels).loss
    reference_loss.backward()
    torch.testing.assert_close(loss, reference_loss, rtol=0, atol=1e-5)
    reference_grads = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, reference_grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_hidden_states_and_attentions_are_returned():
    ours, reference = build_pair("eager")
    input_ids = torch.randint(3, 512, (1, 9))
    with torch.no_grad():
        got = ours(input_ids, output_hidden_states=True, output_attentions=True)
        want = reference(input_ids, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(want.hidden_states) == ours.config.num_hidden_layers + 1
    for a, b in zip(got.hidden_states, want.hidden_states):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert got.attentions[0].shape == (1, 8, 9, 9)
