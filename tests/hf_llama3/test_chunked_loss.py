"""The chunked output-projection + cross-entropy equals transformers' plain loss, values and gradients."""

from __future__ import annotations

import pytest
import torch

from hf_llama3 import Llama3ForCausalLM
from hf_llama3.modeling_llama3 import chunked_causal_lm_loss
from tests.conftest import tiny_config


def plain_loss(hidden, weight, labels, num_items_in_batch=None):
    logits = (hidden @ weight.T).float()
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), shift.flatten(), ignore_index=-100, reduction=reduction
    )
    return loss if num_items_in_batch is None else loss / num_items_in_batch


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("num_items_in_batch", [None, 50])
def test_loss_and_gradients_equal_plain_cross_entropy(chunk_size, num_items_in_batch):
    torch.manual_seed(0)
    hidden = torch.randn(3, 21, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    labels = torch.randint(0, 300, (3, 21))
    labels[0, :4] = -100
    labels[2, 10:] = -100
    got = chunked_causal_lm_loss(hidden, weight, labels, chunk_size, num_items_in_batch=num_items_in_batch)
    got_grads = torch.autograd.grad(got * 3.0, (hidden, weight))  # a non-unit upstream gradient
    want = plain_loss(hidden, weight, labels, num_items_in_batch)
    want_grads = torch.autograd.grad(want * 3.0, (hidden, weight))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_model_chunked_loss_matches_full_logits_loss_for_every_parameter():
    torch.manual_seed(0)
    chunked = Llama3ForCausalLM(tiny_config(loss_chunk_size=8, tie_word_embeddings=True))
    full = Llama3ForCausalLM(tiny_config(loss_chunk_size=0, tie_word_embeddings=True))
    full.load_state_dict(chunked.state_dict())
    input_ids = torch.randint(3, 512, (2, 30))
    out = chunked(input_ids, labels=input_ids)
    reference = full(input_ids, labels=input_ids)
    assert out.logits is None and reference.logits.shape == (2, 30, 512)
    out.loss.backward()
    reference.loss.backward()
    torch.testing.assert_close(out.loss, reference.loss, rtol=0, atol=1e-5)
    full_params = dict(full.named_parameters())
    for name, param in chunked.named_parameters():
        torch.testing.assert_close(param.grad, full_params[name].grad, rtol=0, atol=1e-5, msg=name)


def test_no_gradient_work_under_no_grad():
    torch.manual_seed(0)
    model = Llama3ForCausalLM(tiny_config()).eval()
    input_ids = torch.randint(3, 512, (1, 12))
    with torch.no_grad():
        loss = model(input_ids, labels=input_ids).loss
    assert loss.grad_fn is None and torch.isfinite(loss)
