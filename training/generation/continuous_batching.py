"""The ``continuous_batching`` backend: transformers' ``generate_batch`` with its paged KV cache [paper 4.2.2].

The engine the paper's PagedAttention point asks for: requests are admitted while their pages fit, a prompt is
prefilled once and its K samples are forked children sharing the prompt's cache blocks
(``num_return_sequences``), finished samples free their pages at once. It is the default on CUDA.

Seeding: transformers seeds one generator per call (``ContinuousBatchingConfig.seed``), drawn in scheduling
order, so a seeded call is reproducible for the same prompt set, but a prompt's samples depend on which prompts
share the call (another data-parallel sharding gives other samples; greedy decoding does not depend on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from training.generation.engine import SamplingSettings

# On CPU the paged attention runs through SDPA with a dense mask over the cache pages; smaller pages cut that mask
# (the CPU benchmark's settings, one run: 2.9 samples/s with 64-token pages vs 1.3 with the default 256; BENCHMARKS.md).
CPU_PAGE_SIZE = 64


def cpu_cache_config(prompts: Sequence[Sequence[int]], per_prompt: int, max_new_tokens: int) -> dict[str, int]:
    """Paged-cache size for a CPU run: enough blocks for every sample unshared, and no more.

    Left to itself transformers sizes the cache from free memory, which on CPU means allocating (and zeroing)
    gigabytes of host memory per call: tens of seconds for the tiny test model.
    """
    blocks = sum(per_prompt * -(-(len(p) + max_new_tokens) // CPU_PAGE_SIZE) for p in prompts)
    return {"page_size": CPU_PAGE_SIZE, "num_blocks": blocks + 1, "max_batch_tokens": 2048}


class ContinuousBatchingEngine:
    """K samples per prompt through ``model.generate_batch``; greedy decoding draws one and repeats it K times."""

    name = "continuous_batching"

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], prompt_indices: Sequence[int], settings: SamplingSettings
    ) -> list[list[list[int]]]:
        """K continuations per prompt, each ending with its stop token when one was emitted."""
        if not prompts:
            return []
        greedy = settings.temperature == 0
        # transformers refuses num_return_sequences > 1 without sampling; greedy samples are all the same anyway.
        per_prompt = 1 if greedy else settings.num_samples
        sampling = {} if greedy else {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": None}
        generation_config = GenerationConfig(
            do_sample=not greedy,
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=per_prompt,
            eos_token_id=list(settings.stop_ids),
            pad_token_id=settings.pad_id,
            **sampling,
        )
        on_cuda = self.model.device.type == "cuda"
        sizing = {} if on_cuda else cpu_cache_config(prompts, per_prompt, settings.max_new_tokens)
        cb_config = ContinuousBatchingConfig(seed=settings.seed, **sizing)
        self.model.eval()
        outputs = self.model.generate_batch(
            [list(p) for p in prompts],
            generation_config=generation_config,
            continuous_batching_config=cb_config,
            warmup=on_cuda,  # the warm-up captures CUDA graphs; nothing to capture on CPU
        )
        # One entry per request, in input order, each request's forked children before it (generate_batch's order).
        results = list(outputs.values())
        failed = [r.request_id for r in results if r.error is not None]
        if len(results) != len(prompts) * per_prompt or failed:
            raise RuntimeError(
                f"continuous batching returned {len(results)} of {len(prompts) * per_prompt} samples "
                f"(failed: {failed[:3]}); see the transformers log above, or set generation_backend: prefix_sharing."
            )
        samples = [list(r.generated_tokens) for r in results]
        grouped = [samples[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
        return [group * settings.num_samples if greedy else group for group in grouped]
