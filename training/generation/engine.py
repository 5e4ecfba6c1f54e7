"""The generation-engine interface of rejection sampling and the rounds' evaluation [paper 4.2.2].

An engine turns token-id prompts into K sampled continuations each (token ids, ending with the stop token when
one was emitted). Backends:

- ``prefix_sharing`` (:mod:`training.generation.prefix_sharing`): our sampler, one prefill per prompt, per-prompt
  seeded generators; the fastest on CPU (BENCHMARKS.md), so the CPU default.
- ``continuous_batching`` (:mod:`training.generation.continuous_batching`): transformers' ``generate_batch`` with
  its paged KV cache, the K samples of a prompt forked from its prefilled blocks; the CUDA default.
- ``vllm`` (:mod:`training.generation.vllm_engine`): vLLM colocated in the process or a ``trl vllm-serve`` server
  (TRL's ``use_vllm`` settings); only when vLLM is installed.

``auto`` picks by device: ``continuous_batching`` on CUDA, ``prefix_sharing`` on CPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Protocol

import torch

BACKENDS = ("auto", "prefix_sharing", "continuous_batching", "vllm")
DEVICES = ("auto", "cpu", "cuda")
VLLM_MODES = ("colocate", "server")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """What every backend is asked for: K samples of at most ``max_new_tokens``, stopping at ``stop_ids``.

    ``temperature == 0`` is greedy decoding. ``seed`` with a prompt's index in the whole prompt set gives that
    prompt's seed (:meth:`prompt_seed`), for the backends that seed per prompt.
    """

    num_samples: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop_ids: tuple[int, ...]
    pad_id: int

    def prompt_seed(self, prompt_index: int) -> int:
        """The seed of prompt ``prompt_index`` (its index in the whole prompt set, not in a shard)."""
        return self.seed * 1_000_003 + prompt_index

    def prompt_generator(self, prompt_index: int, device: torch.device | str) -> torch.Generator:
        """A generator seeded with :meth:`prompt_seed`."""
        return torch.Generator(device=device).manual_seed(self.prompt_seed(prompt_index))


class GenerationEngine(Protocol):
    """A generation backend (see the module docstring)."""

    name: str

    def generate(
        self, prompts: Sequence[Sequence[int]], prompt_indices: Sequence[int], settings: SamplingSettings
    ) -> list[list[list[int]]]:
        """``settings.num_samples`` continuations per prompt; ``prompt_indices`` are the prompts' global indices."""
        ...


def stop_reason(sample: Sequence[int], stop_ids: Sequence[int]) -> str:
    """``"stop"`` when the sample ends with a stop token, else ``"length"`` (it hit ``max_new_tokens``)."""
    return "stop" if sample and sample[-1] in stop_ids else "length"


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (this process's ``LOCAL_RANK`` GPU under a launcher) or ``auto`` (CUDA when available)."""
    if device not in DEVICES:
        raise ValueError(f"device: unknown {device!r}; use one of {', '.join(DEVICES)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for but torch sees no GPU; set device: cpu (or auto).")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def resolve_backend(backend: str, device: torch.device | None) -> str:
    """The backend ``auto`` stands for on ``device`` (see the module docstring); others are returned as given."""
    if backend not in BACKENDS:
        raise ValueError(f"generation_backend: unknown {backend!r}; use one of {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    # Measured on the 2-core CPU benchmark (BENCHMARKS.md): our prefix-sharing sampler draws the most samples/s
    # there (2.9x generate under load, 3.3x idle; continuous batching 2.15x); on CUDA continuous batching's paged
    # kernels are what it is made for.
    return "continuous_batching" if device.type == "cuda" else "prefix_sharing"


def make_engine(
    backend: str,
    model: Any = None,
    *,
    device: torch.device | None = None,
    max_batch_tokens: int = 65536,
    model_path: str | None = None,
    vllm: dict[str, Any] | None = None,
) -> GenerationEngine:
    """Build the ``backend`` engine around ``model`` (a loaded causal LM) or, for vLLM, ``model_path``.

    ``vllm`` holds :class:`~training.generation.vllm_engine.VLLMEngine`'s settings (mode, server URL, tensor
    parallel size, GPU memory share).
    """
    if backend == "auto" and device is None:
        device = next(model.parameters()).device
    backend = resolve_backend(backend, device)
    if backend == "vllm":
        from training.generation.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **(vllm or {}))
    if model is None:
        raise ValueError(f"generation_backend {backend} needs the loaded policy model.")
    if backend == "continuous_batching":
        from training.generation.continuous_batching import ContinuousBatchingEngine

        return ContinuousBatchingEngine(model)
    from training.generation.prefix_sharing import PrefixSharingEngine

    return PrefixSharingEngine(model, max_batch_tokens)
