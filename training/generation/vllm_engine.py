"""The ``vllm`` backend: vLLM colocated in this process or a ``trl vllm-serve`` server [paper 4.2.2].

TRL's convention for generation (``use_vllm``, ``vllm_mode`` = ``colocate`` | ``server``,
``vllm_server_base_url``, ``vllm_tensor_parallel_size``, ``vllm_gpu_memory_utilization``). vLLM is imported only
when this backend is chosen; it is not in the lock (CUDA only), so without it the choice fails in one line.
Colocated, a policy folder in our format (``model_type="llama3"``, unknown to vLLM) is first converted to
transformers' stock Llama format (``hf_llama3.convert``, same weights) in a temporary folder; each prompt's request carries its own seed (:meth:`SamplingSettings.prompt_seed`), so samples do not
depend on the sharding; the server takes one seed per call. Server mode: start the server on the policy first,
``trl vllm-serve --model <policy_path> --tensor-parallel-size N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from training.generation.engine import VLLM_MODES, SamplingSettings


class VLLMEngine:
    """K samples per prompt from vLLM (``n = K`` per request; the prompt's prefix blocks are shared)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | None,
        mode: str = "colocate",
        server_base_url: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
    ) -> None:
        if mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode: unknown {mode!r}; use one of {', '.join(VLLM_MODES)}.")
        try:
            import vllm
        except ImportError:
            raise ValueError(
                "generation_backend: vllm needs the vllm package (CUDA only, not in the lock: pip install vllm); "
                "or set generation_backend: auto."
            ) from None
        self.mode = mode
        if mode == "server":
            from trl.generation.vllm_client import VLLMClient

            self.client = VLLMClient(base_url=server_base_url) if server_base_url else VLLMClient()
        else:
            if not model_path:
                raise ValueError("vllm_mode: colocate needs the policy folder (policy_path).")
            self.llm = vllm.LLM(
                model=self._stock_llama(model_path),
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                enable_prefix_caching=True,  # the K samples and the system prompts share prefix blocks [4.2.2]
            )

    def _stock_llama(self, model_path: str) -> str:
        """``model_path``, or a stock-Llama copy of it when it is in our ``llama3`` format (kept for the run)."""
        import tempfile

        from hf_llama3.checkpoint_io import read_config_dict
        from hf_llama3.convert import convert_checkpoint

        if (
            not (Path(model_path) / "config.json").is_file()
            or read_config_dict(model_path).get("model_type") != "llama3"
        ):
            return model_path
        self._converted = tempfile.TemporaryDirectory(prefix="vllm-policy-")
        return str(convert_checkpoint(model_path, Path(self._converted.name) / "llama", to="llama"))

    def generate(
        self, prompts: Sequence[Sequence[int]], prompt_indices: Sequence[int], settings: SamplingSettings
    ) -> list[list[list[int]]]:
        """K continuations per prompt, each ending with its stop token when one was emitted."""
        if not prompts:
            return []
        if self.mode == "server":
            completions = self.client.generate(
                prompts=[list(p) for p in prompts],
                n=settings.num_samples,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                generation_kwargs={"stop_token_ids": list(settings.stop_ids), "seed": settings.seed},
            )["completion_ids"]
            k = settings.num_samples
            return [[self._closed(c, settings) for c in completions[i * k : (i + 1) * k]] for i in range(len(prompts))]
        from vllm import SamplingParams, TokensPrompt

        params = [
            SamplingParams(
                n=settings.num_samples,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                stop_token_ids=list(settings.stop_ids),
                seed=settings.prompt_seed(index),
            )
            for index in prompt_indices
        ]
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return [[self._closed(o.token_ids, settings, o.stop_reason) for o in out.outputs] for out in outputs]

    @staticmethod
    def _closed(tokens: Sequence[int], settings: SamplingSettings, stop_token: object = None) -> list[int]:
        """The sample with its stop token: vLLM leaves a special stop token out of ``token_ids``.

        ``stop_token`` is vLLM's ``stop_reason`` (the stop token id); the server returns none, so a sample shorter
        than ``max_new_tokens`` without a stop token at its end stopped on one: it is closed with
        the last of ``settings.stop_ids`` (``<|eot_id|>`` for Llama 3 chat).
        """
        tokens = list(tokens)
        if tokens and tokens[-1] in settings.stop_ids:
            return tokens
        if isinstance(stop_token, int):
            return [*tokens, stop_token]
        return [*tokens, settings.stop_ids[-1]] if len(tokens) < settings.max_new_tokens else tokens
