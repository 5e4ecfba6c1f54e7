"""Selective (per-op) activation checkpointing keeps the matmul outputs that full checkpointing recomputes, and
trains to the same numbers (tests/distributed/test_layouts.py runs it under CP2)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.distributed.harness import make_batch, tiny_config
from training.parallel.parallelize import checkpoint_mode, selective_checkpoint_context


class _CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)
        return func(*args, **(kwargs or {}))


def _backward_matmuls(context_fn) -> tuple[int, torch.Tensor]:
    from hf_llama3 import Llama3ForCausalLM

    torch.manual_seed(0)
    model = Llama3ForCausalLM(tiny_config(num_hidden_layers=2)).train()
    kwargs = {"use_reentrant": False}
    if context_fn is not None:
        kwargs["context_fn"] = context_fn
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    batch = make_batch(1)
    loss = model(input_ids=batch["input_ids"][:2], labels=batch["labels"][:2]).loss
    with _CountMatmuls() as counter:
        loss.backward()
    return counter.count, model.model.layers[0].mlp.down_proj.weight.grad


def test_selective_recomputes_no_matmul_and_gives_the_same_gradients() -> None:
    full, full_grad = _backward_matmuls(None)
    selective, selective_grad = _backward_matmuls(selective_checkpoint_context)
    # Backward itself: 2 matmuls (input and weight gradients) for each of the 7 projections of each of 2 layers;
    # selective checkpointing recomputes none, full checkpointing the 6 whose outputs backward needs (not down_proj).
    assert selective == 2 * 7 * 2
    assert full == selective + 6 * 2
    torch.testing.assert_close(selective_grad, full_grad, rtol=0, atol=0)


def test_checkpoint_modes() -> None:
    assert [checkpoint_mode(v) for v in (False, True, "full", "selective")] == [None, "full", "full", "selective"]
    with pytest.raises(ValueError, match="one of \\('full', 'selective'\\)"):
        checkpoint_mode("some")
