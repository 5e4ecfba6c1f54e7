"""Rejection sampling [paper 4.2.2]: K samples per prompt from the latest policy, scored by the reward model.

For each prompt the policy draws K outputs (the paper uses K = 10-30), optionally under one of a list of system
prompts that steer tone and style; the reward model scores them and the best one becomes SFT data (the worst is
kept too, so the pair can serve as preference data). The paper reports over 2x throughput from PagedAttention:
a request is admitted only if its maximum output fits, and the prompt's key/value cache is shared by all its
samples. The samples come from a generation engine (``training.generation``): transformers' continuous batching
(paged KV cache, the default on CUDA), our prefix-sharing sampler (the default on CPU, where it is the fastest:
BENCHMARKS.md) or vLLM (colocated or a server, when installed); ``device`` places the policy and the reward model,
which scores the samples on the same device in batches of packed rows.

Under ``torchrun``/``accelerate launch`` the prompts are sharded across the data-parallel ranks; rank 0 merges the
results in prompt order and writes them once. Each prompt is seeded from ``seed`` and its index, so reruns (and,
with the prefix-sharing or colocated vLLM backends, any number of ranks) give the same samples.

A sample that hit ``max_new_tokens`` without a stop token is truncated: it is never chosen (its reward judges an
unfinished answer, and SFT on it teaches the model to stop mid-sentence); it can still be the rejected response.

Outputs in ``output_dir``: ``samples.jsonl`` (every sample, its score, stop reason and truncated flag),
``sft.jsonl`` (``messages``: the prompt and the best sample, TRL SFT's conversational format),
``preferences.jsonl`` (``prompt``/``chosen``/``rejected``: best and worst, TRL DPO's and our reward trainer's
format) and ``summary.json`` (counts: samples stopped/truncated, prompts without a pick and why).

    hf-llama3 rejection-sample --config recipes/tiny/rejection_sampling.yaml
    torchrun --nproc-per-node 8 -m hf_llama3.cli rejection-sample --config recipes/llama3-8b/rejection_sampling.yaml
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from training.generation.data_parallel import data_parallel, gather_in_order, shard
from training.generation.engine import (
    GenerationEngine,
    SamplingSettings,
    make_engine,
    resolve_backend,
    resolve_device,
    stop_reason,
)
from training.reward import pack_ranked_row, packed_rewards

logger = logging.getLogger(__name__)

# <|end_of_text|>, <|eom_id|>, <|eot_id|>: a chat sample ends at any of them (paper 4.1.1, llama_models ChatFormat).
DEFAULT_STOP_IDS = (128001, 128008, 128009)


@dataclasses.dataclass
class RejectionSamplingConfig:
    """Settings of one rejection-sampling pass [4.2.2].

    Args:
        policy_path: The latest policy (causal LM folder).
        reward_model_path: The reward model folder (sequence classification, one score).
        prompts_path: Prompt rows: ``prompt`` (chat messages or text) or ``messages`` (the dialog up to the last
            user turn); json/jsonl/parquet or a ``save_to_disk`` folder.
        output_dir: Where the three jsonl files go (written atomically).
        tokenizer_name_or_path: Tokenizer folder; default: the policy's, else the real Llama 3 tokenizer.
        num_samples: K samples per prompt [4.2.2: 10 to 30].
        temperature, top_p: Sampling settings. The paper gives none for rejection sampling; the defaults are Meta's
            reference chat defaults (llama_models generation: temperature 0.6, top-p 0.9).
        max_new_tokens: Longest sample; also the admission bound of each request.
        max_batch_tokens: Admission budget: a batch of B prompts is formed only if
            ``B * K * (longest prompt + max_new_tokens)`` fits (our setting; the paper states the rule, not a size).
        system_prompts: Optional system prompts steering tone/style [4.2.2]; prompt i without its own system message
            gets ``system_prompts[i % len(system_prompts)]``.
        score_pack_size: Samples packed with their prompt in one reward-model row when scoring.
        seed: Seed of the per-prompt random generators.
        safety_guard_path: Optional guard folder (``hf-llama3 guard train``, or Meta's Llama Guard 3): samples its
            output check flags are dropped before the best/worst choice; counts go to ``safety_report.json`` [5.4.7].
        safety_threshold: P(unsafe) threshold of that filter (default: the guard's).
        device: Where the policy and the reward model run: ``cpu``, ``cuda`` (each rank's ``LOCAL_RANK`` GPU) or
            ``auto`` (CUDA when available).
        generation_backend: ``auto`` (continuous batching on CUDA, prefix sharing on CPU), ``continuous_batching``
            (transformers' ``generate_batch``, paged KV cache), ``prefix_sharing`` (our sampler) or ``vllm``.
        vllm_mode, vllm_server_base_url, vllm_tensor_parallel_size, vllm_gpu_memory_utilization: The vLLM backend
            (TRL's ``use_vllm`` settings): ``colocate`` loads vLLM in this process on ``policy_path``; ``server``
            calls a ``trl vllm-serve`` server (default URL ``http://0.0.0.0:8000``).
        score_batch_size: Packed reward-model rows per forward pass.
        allow_truncated_chosen: Let a sample that hit ``max_new_tokens`` be chosen. Off by default (a truncated
            answer is never an SFT target); only for untrained demo models, which never emit a stop token.
    """

    policy_path: str = ""
    reward_model_path: str = ""
    prompts_path: str = ""
    output_dir: str = ""
    tokenizer_name_or_path: str | None = None
    num_samples: int = 10
    temperature: float = 0.6
    top_p: float = 0.9
    max_new_tokens: int = 256
    max_batch_tokens: int = 65536
    system_prompts: list[str] = dataclasses.field(default_factory=list)
    score_pack_size: int = 8
    seed: int = 0
    safety_guard_path: str | None = None
    safety_threshold: float | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    generation_backend: Literal["auto", "prefix_sharing", "continuous_batching", "vllm"] = "auto"
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_server_base_url: str | None = None
    vllm_tensor_parallel_size: int = 1
    vllm_gpu_memory_utilization: float = 0.9
    score_batch_size: int = 8
    allow_truncated_chosen: bool = False

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader) before the config is built.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "num_samples": {"min": 2},
        "temperature": {"min": 0},
        "top_p": {"gt": 0, "max": 1},
        "max_new_tokens": {"min": 1},
        "max_batch_tokens": {"min": 1},
        "score_pack_size": {"min": 1},
        "seed": {"min": 0},
        "safety_threshold": {"min": 0, "max": 1},
        "vllm_tensor_parallel_size": {"min": 1},
        "vllm_gpu_memory_utilization": {"gt": 0, "max": 1},
        "score_batch_size": {"min": 1},
    }

    def __post_init__(self) -> None:
        for name in ("policy_path", "reward_model_path", "prompts_path", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required for rejection sampling.")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 to pick a best and a worst sample, got {self.num_samples}.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"Need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}.")
        if min(self.max_new_tokens, self.max_batch_tokens, self.score_pack_size, self.score_batch_size) < 1:
            raise ValueError(
                "max_new_tokens, max_batch_tokens, score_pack_size and score_batch_size must be positive."
            )


# ----------------------------------------------------------------------------------------------------------------
# Generation through an engine (training.generation)


def sample_responses(
    model,
    prompts: Sequence[Sequence[int]],
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 0.6,
    top_p: float = 0.9,
    seed: int = 0,
    stop_ids: Sequence[int] = DEFAULT_STOP_IDS,
    max_batch_tokens: int = 65536,
    pad_id: int = 128004,
    *,
    backend: str = "auto",
    engine: GenerationEngine | None = None,
    prompt_indices: Sequence[int] | None = None,
) -> list[list[list[int]]]:
    """K sampled continuations (token ids, ending with the stop token when one was emitted) for each prompt.

    Drawn by ``engine``, else by the ``backend`` engine built around ``model`` (``auto``: by the model's device,
    see :mod:`training.generation.engine`). Prompt ``j`` is seeded from ``seed`` and ``prompt_indices[j]`` (default
    ``j``), its index in the whole prompt set, so a rerun, or a data-parallel shard of the same set, gives the same
    samples (for the backends that seed per prompt).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError(
            "Every prompt needs at least one token (the Llama 3 chat prompt starts with <|begin_of_text|>)."
        )
    if engine is None:
        engine = make_engine(backend, model, max_batch_tokens=max_batch_tokens)
    settings = SamplingSettings(num_samples, max_new_tokens, temperature, top_p, seed, tuple(stop_ids), pad_id)
    indices = range(len(prompts)) if prompt_indices is None else prompt_indices
    return engine.generate(prompts, list(indices), settings)


# ----------------------------------------------------------------------------------------------------------------
# Scoring and selection


@torch.no_grad()
def score_samples(
    reward_model,
    prompts: Sequence[Sequence[int]],
    samples: Sequence[Sequence[Sequence[int]]],
    pack_size: int = 8,
    batch_size: int = 8,
) -> list[list[float]]:
    """Reward of every sample: the prompt and up to ``pack_size`` samples share one packed row (see training.reward);
    ``batch_size`` packed rows go through the reward model together, on its device."""
    from training.reward import PackedRankingCollator

    reward_model.eval()
    device = next(reward_model.parameters()).device
    collate = PackedRankingCollator(pad_token_id=reward_model.config.pad_token_id or 0)
    rows = [  # (prompt, first sample, packed row)
        (p, start, pack_ranked_row(prompt, prompt_samples[start : start + pack_size]))
        for p, (prompt, prompt_samples) in enumerate(zip(prompts, samples))
        for start in range(0, len(prompt_samples), pack_size)
    ]
    scores: list[list[float]] = [[0.0] * len(prompt_samples) for prompt_samples in samples]
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        batch = {k: v.to(device) for k, v in collate([row for _, _, row in chunk]).items()}
        rewards = packed_rewards(reward_model, batch).tolist()
        for (p, start, row), row_rewards in zip(chunk, rewards):
            count = len(row["response_ends"])
            scores[p][start : start + count] = row_rewards[:count]
    return scores


def with_system_prompt(messages: list[dict[str, Any]], system_prompts: Sequence[str], index: int) -> list[dict]:
    """Prepend ``system_prompts[index % n]`` unless the dialog has its own system message [4.2.2]."""
    if not system_prompts or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompts[index % len(system_prompts)]}, *messages]


def prompt_messages(row: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """The chat prompt of a row: ``prompt`` (messages or text) or ``messages`` without a trailing assistant turn."""
    prompt = row.get("prompt") or row.get("messages")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not prompt or not isinstance(prompt, list):
        raise ValueError(f"row {index}: no prompt (need a 'prompt' or 'messages' column with the dialog so far).")
    if prompt[-1].get("role") == "assistant":
        prompt = prompt[:-1]
    if not prompt or not any(str(m.get("content") or "").strip() for m in prompt):
        raise ValueError(f"row {index}: the prompt is empty.")
    return prompt


def rejection_sample(
    config: RejectionSamplingConfig, policy=None, reward_model=None, tokenizer=None, safety_filter=None
) -> Path:
    """Run one rejection-sampling pass and write ``samples``/``sft``/``preferences`` jsonl files; return the folder.

    Already-loaded models and tokenizer may be passed (the rounds driver does); otherwise they are loaded, on
    ``config.device``. With a ``safety_filter`` (``training.safety.SafetyFilter``, or ``config.safety_guard_path``)
    unsafe samples are dropped. Under a data-parallel launcher every rank samples and scores its shard of the
    prompts; rank 0 writes the merged outputs, and every rank returns once they are written.
    """
    import torch.distributed as dist

    from hf_llama3 import encode_dialog, stop_token_ids
    from training.post_cli import StageInputs, load_rows, load_stage_tokenizer

    device = resolve_device(config.device)
    backend = resolve_backend(config.generation_backend, device)
    if tokenizer is None:
        tokenizer = load_stage_tokenizer(
            StageInputs(model_name_or_path=config.policy_path, tokenizer_name_or_path=config.tokenizer_name_or_path)
        )
    rows = load_rows(config.prompts_path)
    dialogs = [with_system_prompt(prompt_messages(row, i), config.system_prompts, i) for i, row in enumerate(rows)]
    prompt_ids = [encode_dialog(tokenizer, d, add_generation_prompt=True).input_ids for d in dialogs]
    stops = stop_token_ids(tokenizer)
    with data_parallel(device) as (rank, world_size):
        mine = shard(len(prompt_ids), rank, world_size)
        samples, scores = _sample_and_score(
            config, backend, device, [prompt_ids[i] for i in mine], mine, stops, policy, reward_model, tokenizer
        )
        merged = gather_in_order(mine, list(zip(samples, scores)), world_size)
        output_dir = Path(config.output_dir)
        if merged is not None:
            if safety_filter is None and config.safety_guard_path:
                from training.safety.filter import SafetyFilter

                safety_filter = SafetyFilter.from_pretrained(
                    config.safety_guard_path, threshold=config.safety_threshold
                )
            samples, scores = [m[0] for m in merged], [m[1] for m in merged]
            records = select_samples(
                tokenizer, dialogs, samples, scores, stops, config.allow_truncated_chosen, safety_filter
            )
            run = {"backend": backend, "device": str(device), "world_size": world_size}
            output_dir = _write_outputs(output_dir, records, config.max_new_tokens, run)
            if safety_filter is not None:  # [5.4.7] the stage report of the output filter
                _write_safety_report(output_dir, records, safety_filter)
        if world_size > 1:  # the other ranks return once rank 0's files exist
            dist.barrier()
    return output_dir


def _sample_and_score(
    config: RejectionSamplingConfig,
    backend: str,
    device: torch.device,
    prompts: list[list[int]],
    prompt_indices: list[int],
    stops: list[int],
    policy,
    reward_model,
    tokenizer,
) -> tuple[list[list[list[int]]], list[list[float]]]:
    """This rank's samples of ``prompts`` (global indices ``prompt_indices``) and their rewards, on ``device``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if policy is None and backend != "vllm":  # vLLM loads the policy itself
        policy = AutoModelForCausalLM.from_pretrained(config.policy_path)
    if policy is not None:
        policy = policy.to(device)
    engine = make_engine(
        backend,
        policy,
        device=device,
        max_batch_tokens=config.max_batch_tokens,
        model_path=config.policy_path,
        vllm={
            "mode": config.vllm_mode,
            "server_base_url": config.vllm_server_base_url,
            "tensor_parallel_size": config.vllm_tensor_parallel_size,
            "gpu_memory_utilization": config.vllm_gpu_memory_utilization,
        },
    )
    samples = sample_responses(
        policy,
        prompts,
        config.num_samples,
        config.max_new_tokens,
        config.temperature,
        config.top_p,
        config.seed,
        stops,
        config.max_batch_tokens,
        tokenizer.pad_token_id,
        engine=engine,
        prompt_indices=prompt_indices,
    )
    if reward_model is None:
        reward_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path)
    reward_model = reward_model.to(device)
    # A sample that ends without a stop token is closed with <|eot_id|> before scoring, as a finished turn would be.
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    closed = [[s if s and s[-1] in stops else [*s, eot] for s in prompt_samples] for prompt_samples in samples]
    return samples, score_samples(reward_model, prompts, closed, config.score_pack_size, config.score_batch_size)


def select_samples(
    tokenizer,
    dialogs: Sequence[list[dict[str, Any]]],
    samples: Sequence[Sequence[Sequence[int]]],
    scores: Sequence[Sequence[float]],
    stops: Sequence[int],
    allow_truncated_chosen: bool = False,
    safety_filter=None,
) -> list[dict[str, Any]]:
    """One record per prompt: every sample with its score, stop reason (and token), truncated flag, and the pick.

    ``best`` is the highest-scoring usable sample that ended with a stop token (a truncated one only with
    ``allow_truncated_chosen``); ``worst`` the lowest-scoring usable sample whose text differs from it. Usable:
    non-empty, and not flagged by ``safety_filter``. A prompt gets both or neither; ``skipped`` says why not.
    """
    all_texts = [[tokenizer.decode(s[:-1] if s and s[-1] in stops else s) for s in ps] for ps in samples]
    unsafe = safety_filter.drop_unsafe_samples(dialogs, all_texts) if safety_filter is not None else None
    records = []
    for index, (dialog, prompt_samples, prompt_scores) in enumerate(zip(dialogs, samples, scores)):
        texts = all_texts[index]
        reasons = [stop_reason(s, stops) for s in prompt_samples]
        truncated = [reason == "length" for reason in reasons]
        usable = [k for k, text in enumerate(texts) if text.strip() and not (unsafe and unsafe[index][k])]
        record = {
            "index": index,
            "prompt": dialog,
            "samples": texts,
            "scores": prompt_scores,
            "stop_reasons": reasons,
            "stop_tokens": [s[-1] if reason == "stop" else None for s, reason in zip(prompt_samples, reasons)],
            "truncated": truncated,
            "num_tokens": [len(s) for s in prompt_samples],
        }
        if unsafe is not None:
            record["unsafe"] = unsafe[index]
        record["best_scoring_truncated"] = bool(usable) and truncated[max(usable, key=lambda k: prompt_scores[k])]
        candidates = [k for k in usable if allow_truncated_chosen or not truncated[k]]
        if len(usable) < 2:
            record["skipped"] = "fewer than 2 usable samples"
        elif not candidates:
            record["skipped"] = "every usable sample is truncated"
        else:
            best = max(candidates, key=lambda k: prompt_scores[k])
            others = [k for k in usable if texts[k] != texts[best]]
            if others:
                record |= {"best": best, "worst": min(others, key=lambda k: prompt_scores[k])}
            else:
                record["skipped"] = "every usable sample is identical to the best"
        if "skipped" in record:
            logger.warning("prompt %d: no SFT or preference row (%s)", index, record["skipped"])
        records.append(record)
    return records


def summarize(records: Sequence[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Counts of one pass: samples stopped/truncated, prompts picked, prompts skipped by reason."""
    skipped: dict[str, int] = {}
    for record in records:
        if "skipped" in record:
            skipped[record["skipped"]] = skipped.get(record["skipped"], 0) + 1
    samples = sum(len(r["samples"]) for r in records)
    truncated = sum(sum(r["truncated"]) for r in records)
    return {
        "prompts": len(records),
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "stopped_samples": samples - truncated,
        "truncated_samples": truncated,
        "truncated_chosen": sum("best" in r and r["truncated"][r["best"]] for r in records),
        "best_scoring_sample_truncated": sum(r["best_scoring_truncated"] for r in records),
        "prompts_selected": sum("best" in r for r in records),
        "prompts_skipped": skipped,
    }


def _write_outputs(output_dir: Path, records: list[dict[str, Any]], max_new_tokens: int, run: dict[str, Any]) -> Path:
    from hf_llama3.checkpoint_io import atomic_output_file

    output_dir.mkdir(parents=True, exist_ok=True)
    selected = [r for r in records if "best" in r]

    def assistant(text: str) -> dict[str, str]:
        return {"role": "assistant", "content": text}

    summary = {**summarize(records, max_new_tokens), **run}
    files = {
        "samples.jsonl": [{**r, "max_new_tokens": max_new_tokens} for r in records],
        "sft.jsonl": [{"messages": [*r["prompt"], assistant(r["samples"][r["best"]])]} for r in selected],
        "preferences.jsonl": [
            {
                "prompt": r["prompt"],
                "chosen": [assistant(r["samples"][r["best"]])],
                "rejected": [assistant(r["samples"][r["worst"]])],
                "chosen_score": r["scores"][r["best"]],
                "rejected_score": r["scores"][r["worst"]],
            }
            for r in selected
        ],
    }
    for name, rows in files.items():
        with atomic_output_file(output_dir / name) as tmp:
            tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with atomic_output_file(output_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "Rejection sampling: %d prompts, %d selected, %d of %d samples truncated -> %s",
        len(records),
        len(selected),
        summary["truncated_samples"],
        summary["samples"],
        output_dir,
    )
    return output_dir


def _write_safety_report(output_dir: Path, records: list[dict[str, Any]], safety_filter) -> None:
    from hf_llama3.checkpoint_io import atomic_output_file

    report = {
        "samples": sum(len(r["samples"]) for r in records),
        "unsafe_samples_dropped": sum(sum(r.get("unsafe", [])) for r in records),
        "prompts_without_selection": sum("best" not in r for r in records),
        "filter": safety_filter.report(),
    }
    with atomic_output_file(output_dir / "safety_report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("Safety filter: dropped %d of %d samples", report["unsafe_samples_dropped"], report["samples"])


def main(argv: list[str]) -> int:
    """``hf-llama3 rejection-sample``: K samples per prompt, scored by the reward model, best and worst kept."""
    from training.post_cli import load_stage_config, stage_parser

    parser = stage_parser(
        "rejection-sample", "Rejection sampling through a generation engine (paper 4.2.2).", RejectionSamplingConfig
    )
    args = parser.parse_args(argv)
    config = load_stage_config(RejectionSamplingConfig, args)
    print(rejection_sample(config))
    return 0
