"""Our rejection sampler: one prefill per prompt, its KV cache repeated to the K samples [paper 4.2.2].

Why our own and not transformers' continuous batching (``training.generation.continuous_batching``): on CPU,
transformers 5.24's paged cache runs through SDPA with a dense mask over the page table and samples with
``torch.multinomial`` over the 128K vocabulary. On the 2-core CPU benchmark (``benchmarks/rejection_sampling.py``,
BENCHMARKS.md, 2026-12-01, loaded machine) it drew 0.58 samples/s, this sampler 0.79 and
``generate(num_return_sequences=K)`` 0.27. So this is the CPU default; on CUDA the default is continuous batching
(flash/paged kernels, KV blocks shared by a prompt's K samples).

- prompts are sorted by length and grouped into batches whose worst-case size ``K * (prompt + max_new_tokens)``
  fits ``max_batch_tokens`` (admission control, the PagedAttention rule of [4.2.2]);
- each prompt is encoded once and its cache is repeated to the K samples (``DynamicCache.batch_repeat_interleave``:
  copied, not shared by block tables as PagedAttention does, so the memory gain is not reproduced);
- a sample leaves the batch as soon as it emits a stop token, so finished samples cost nothing more;
- prompt ``i`` draws from its own generator seeded from ``seed`` and ``i`` (its index in the whole prompt set),
  so reruns, other batchings and other data-parallel shardings give the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from training.generation.engine import SamplingSettings

# Candidates examined before falling back to a full sort for top-p: a trained model's nucleus is almost always
# inside its top 1024 tokens, and the shortcut is exact (it is taken only when their mass reaches top_p).
NUCLEUS_CANDIDATES = 1024


def _inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row drawn with probability proportional to ``probs`` (unnormalised allowed).

    Inverse-CDF sampling: a cumulative sum (float64) and a binary search, several times faster than
    ``torch.multinomial`` over a 128K vocabulary on CPU, same distribution.
    """
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def sample_next_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row of ``logits [rows, vocab]`` with temperature and nucleus (top-p) sampling.

    ``temperature == 0`` is greedy decoding. The nucleus is the smallest set of most likely tokens whose mass
    reaches ``top_p`` (transformers' ``TopPLogitsWarper`` rule).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return _inverse_cdf_sample(probs, generator)
    candidates, index = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)
    if candidates.shape[-1] < probs.shape[-1] and bool((candidates.sum(dim=-1) < top_p).any()):
        candidates, index = probs.sort(dim=-1, descending=True)
    # Drop a token once the mass of the more likely tokens already reaches top_p (the first is always kept).
    candidates = candidates.masked_fill(candidates.cumsum(dim=-1) - candidates >= top_p, 0.0)
    return index.gather(-1, _inverse_cdf_sample(candidates, generator)[:, None]).squeeze(-1)


def length_batches(
    prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int, max_batch_tokens: int
) -> list[list[int]]:
    """Group prompt indices, shortest first, so each batch's worst case ``B * K * (L + new)`` fits the budget.

    A prompt whose own worst case exceeds the budget still runs, alone.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda i: (prompt_lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        worst = (len(current) + 1) * num_samples * (prompt_lengths[index] + max_new_tokens)
        if current and worst > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def _sample_batch(
    model,
    prompts: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator],
    settings: SamplingSettings,
    stop_ids: torch.Tensor,
) -> list[list[list[int]]]:
    device = next(model.parameters()).device
    num_samples, max_new_tokens = settings.num_samples, settings.max_new_tokens
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), settings.pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, device=device)
        attention_mask[row, width - len(prompt) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)

    # One prefill per prompt; only the last position's logits are needed.
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    # Share the prompt's cache with its K samples: rows [i*K, (i+1)*K) belong to prompt i.
    cache = out.cache
    cache.batch_repeat_interleave(num_samples)
    logits = out.logits[:, -1].repeat_interleave(num_samples, dim=0)
    attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
    next_position = position_ids[:, -1].repeat_interleave(num_samples) + 1
    owner = torch.arange(len(prompts), device=device).repeat_interleave(num_samples)  # prompt of each active row
    slot = torch.arange(len(prompts) * num_samples, device=device)  # (prompt, sample) of each active row

    outputs: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
    for step in range(max_new_tokens):
        tokens = torch.empty(len(owner), dtype=torch.long, device=device)
        for prompt_index in owner.unique().tolist():
            rows = (owner == prompt_index).nonzero().squeeze(-1)
            tokens[rows] = sample_next_token(
                logits[rows], settings.temperature, settings.top_p, generators[prompt_index]
            )
        for row, token in zip(slot.tolist(), tokens.tolist()):
            outputs[row].append(token)
        keep = ~torch.isin(tokens, stop_ids)
        if step == max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():  # finished samples leave the batch and free their cache rows
            index = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(index)
            tokens, owner, slot = tokens[index], owner[index], slot[index]
            attention_mask, next_position = attention_mask[index], next_position[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(owner), 1)], dim=-1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_position[:, None],
            cache=cache,
            use_cache=True,
        )
        cache, logits, next_position = out.cache, out.logits[:, -1], next_position + 1
    return [outputs[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


class PrefixSharingEngine:
    """The ``prefix_sharing`` backend: :func:`_sample_batch` over length-sorted, budgeted batches."""

    name = "prefix_sharing"

    def __init__(self, model, max_batch_tokens: int = 65536) -> None:
        self.model = model
        self.max_batch_tokens = max_batch_tokens

    def generate(
        self, prompts: Sequence[Sequence[int]], prompt_indices: Sequence[int], settings: SamplingSettings
    ) -> list[list[list[int]]]:
        """K samples per prompt; prompt ``prompts[j]`` is seeded by its global index ``prompt_indices[j]``."""
        self.model.eval()
        device = next(self.model.parameters()).device
        stop = torch.tensor(list(settings.stop_ids), device=device)
        results: list[list[list[int]]] = [[] for _ in prompts]
        batches = length_batches(
            [len(p) for p in prompts], settings.num_samples, settings.max_new_tokens, self.max_batch_tokens
        )
        for batch in tqdm(batches, desc="rejection sampling", disable=len(batches) < 2):
            generators = [settings.prompt_generator(prompt_indices[i], device) for i in batch]
            samples = _sample_batch(self.model, [prompts[i] for i in batch], generators, settings, stop)
            for index, prompt_samples in zip(batch, samples):
                results[index] = prompt_samples
        return results
