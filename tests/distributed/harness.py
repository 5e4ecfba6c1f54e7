"""Shared pieces of the multi-process tests: the tiny model, deterministic batches and the single-process reference.

Worlds are real gloo process groups forked from the test process (``training.parallel.spawn.run_local``); one
fork per world size runs several layouts in sequence.
"""

from __future__ import annotations

import torch

from hf_llama3 import Llama3Config, Llama3ForCausalLM
from training.parallel.deferred_init import init_weights_by_name
from training.parallel.engine import OptimizerConfig

STEPS = 3
BATCH, SEQ = 8, 32
# eps 1e-5 (Llama 2's AdamW setting): with 1e-8, an element whose gradient is at float-noise level (~1e-9) gets an
# update of ~lr whose sign depends on summation order, so no two layouts could agree to 1e-5 on every weight.
# Clipping at 0.5 is active on these steps (the tiny model's gradient norms are above it).
OPTIMIZER = OptimizerConfig(
    lr=1e-3, eps=1e-5, weight_decay=0.1, warmup_steps=1, decay_steps=2, min_lr_ratio=0.1, max_grad_norm=0.5
)


# A CPU-sized model: 8 layers (enough for 4 pipeline stages), 8 query / 4 KV heads (TP4 with GQA), vocab 1024.
TINY_OVERRIDES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=1024,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def tiny_config(**overrides) -> Llama3Config:
    """The ``tiny`` preset with ``TINY_OVERRIDES`` (and ``overrides``)."""
    return Llama3Config.from_preset("tiny", **{**TINY_OVERRIDES, **overrides})


# Batch and sequence sizes per step: a batch ramp then a longer sequence, as in the paper's stages [3.4.1].
SHAPES = [(BATCH, SEQ), (2 * BATCH, SEQ), (BATCH, 2 * SEQ)]


def make_batch(step: int, vocab: int = 1024) -> dict[str, torch.Tensor]:
    """Deterministic batch ``step``: random tokens (never the pad id); even steps pack several documents per row."""
    batch, seq = SHAPES[step % len(SHAPES)]
    gen = torch.Generator().manual_seed(1000 + step)
    out = {"input_ids": torch.randint(3, vocab, (batch, seq), generator=gen)}
    out["labels"] = out["input_ids"].clone()
    if step % 2 == 0:
        boundaries = (torch.rand(batch, seq, generator=gen) < 0.15).long()
        boundaries[:, 0] = 0
        out["document_ids"] = boundaries.cumsum(dim=1)
        out["labels"][:, :3] = -100  # some ignored targets too
    return out


def reference_run(
    config: Llama3Config,
    steps: int = STEPS,
    seed: int = 0,
    grad_norms: list[float] | None = None,
    first_grads: dict[str, torch.Tensor] | None = None,
) -> tuple[list[float], dict]:
    """The single-process ground truth: the plain model's own forward and loss, AdamW, same LR schedule. Its
    weights are initialised by name, as the engine initialises its shards (``training.parallel.deferred_init``).
    ``grad_norms`` (if given) receives each step's gradient norm before clipping, ``first_grads`` the gradients of
    the first step by parameter name."""
    model = Llama3ForCausalLM(config)
    init_weights_by_name(model, model._init_weights, seed)
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=OPTIMIZER.lr,
        betas=OPTIMIZER.betas,
        eps=OPTIMIZER.eps,
        weight_decay=OPTIMIZER.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, OPTIMIZER.lr_factor)
    losses = []
    for step in range(steps):
        batch = make_batch(step, vocab=config.vocab_size)
        out = model(**batch)
        out.loss.backward()
        if first_grads is not None and step == 0:
            first_grads.update({name: p.grad.detach().clone() for name, p in model.named_parameters()})
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIMIZER.max_grad_norm)
        if grad_norms is not None:
            grad_norms.append(float(norm))
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(out.loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}
