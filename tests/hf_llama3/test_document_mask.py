"""Document masking [paper 3.2]: a packed row gives each document exactly the logits it gets alone."""

from __future__ import annotations

import pytest
import torch

from hf_llama3 import Llama3ForCausalLM
from hf_llama3.modeling_llama3 import positions_from_document_ids
from tests.conftest import tiny_config

LENGTHS = (7, 12, 5)


def packed_batch():
    torch.manual_seed(1)
    documents = [torch.randint(3, 512, (n,)) for n in LENGTHS]
    input_ids = torch.cat(documents)[None]
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    document_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])[None]
    return documents, input_ids, position_ids, document_ids


def model(attn_implementation):
    torch.manual_seed(0)
    config = tiny_config(initializer_range=0.2)  # sharp attention: leaking across documents would show
    config._attn_implementation = attn_implementation
    return Llama3ForCausalLM(config).eval()


def split(logits):
    return torch.split(logits[0], list(LENGTHS))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("marker", ["position_ids", "document_ids"])
def test_packed_documents_get_their_standalone_logits(attn_implementation, marker):
    m = model(attn_implementation)
    documents, input_ids, position_ids, document_ids = packed_batch()
    kwargs = {"position_ids": position_ids} if marker == "position_ids" else {"document_ids": document_ids}
    with torch.no_grad():
        packed = m(input_ids, **kwargs).logits
        for document, got in zip(documents, split(packed)):
            alone = m(document[None]).logits[0]
            torch.testing.assert_close(got, alone, rtol=0, atol=1e-5)


def test_without_document_markers_documents_do_see_each_other():
    """The masked comparison above can fail: plain causal attention over the packed row changes later documents."""
    m = model("sdpa")
    documents, input_ids, _, _ = packed_batch()
    with torch.no_grad():
        unmasked = split(m(input_ids).logits)
        alone = m(documents[1][None]).logits[0]
    assert (unmasked[1] - alone).abs().max() > 1e-3


def test_packed_training_loss_equals_per_document_losses():
    m = model("sdpa")
    m.train()
    documents, input_ids, _, document_ids = packed_batch()
    labels = input_ids.clone()
    starts = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0)[:-1].tolist()])
    labels[0, starts] = -100  # never predict a document's first token from the previous document
    # Mean over all predicted tokens of the packed row == token-weighted mean of the per-document losses.
    packed_loss = m(input_ids, labels=labels, document_ids=document_ids).loss
    total, count = 0.0, 0
    for document in documents:
        total += m(document[None], labels=document[None]).loss * (len(document) - 1)
        count += len(document) - 1
    torch.testing.assert_close(packed_loss, total / count, rtol=0, atol=1e-5)


def test_positions_restart_at_each_document():
    document_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]])
    assert torch.equal(positions_from_document_ids(document_ids), expected)
