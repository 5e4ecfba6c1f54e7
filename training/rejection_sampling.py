"""Rejection sampling [paper 4.2.2]: K samples per prompt from the latest policy, scored by the reward model.

For each prompt the policy draws K outputs (the paper uses K = 10-30), optionally under one of a list of system
prompts that steer tone and style; the reward model scores them and the best one becomes SFT data (the worst is
kept too, so the pair can serve as preference data). The paper reports over 2x throughput from PagedAttention:
a request is admitted only if its maximum output fits, and the prompt's key/value cache is shared by all its
samples. This module does the same on transformers' ``DynamicCache``:

- prompts are sorted by length and grouped into batches whose worst-case size ``K * (prompt + max_new_tokens)``
  fits ``max_batch_tokens`` (admission control);
- each prompt is encoded once (one prefill per prompt, not K) and its cache is repeated to the K samples;
- a sample leaves the batch as soon as it emits a stop token (``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``),
  so finished samples cost nothing more;
- each prompt has its own random generator seeded from ``seed`` and the prompt's index: reruns are identical.

Outputs in ``output_dir``: ``samples.jsonl`` (every sample, its score and stop reason), ``sft.jsonl`` (``messages``:
the prompt and the best sample, TRL SFT's conversational format) and ``preferences.jsonl`` (``prompt``/``chosen``/
``rejected``: best and worst, TRL DPO's and our reward trainer's format).

    hf-llama3 rejection-sample --config recipes/tiny/rejection_sampling.yaml
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

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
    }

    def __post_init__(self) -> None:
        for name in ("policy_path", "reward_model_path", "prompts_path", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"{name} is required for rejection sampling.")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 to pick a best and a worst sample, got {self.num_samples}.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"Need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}.")
        if self.max_new_tokens < 1 or self.max_batch_tokens < 1 or self.score_pack_size < 1:
            raise ValueError("max_new_tokens, max_batch_tokens and score_pack_size must be positive.")


# ----------------------------------------------------------------------------------------------------------------
# Generation with a shared prompt cache


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


def length_batches(prompt_lengths: Sequence[int], num_samples: int, max_new_tokens: int, max_batch_tokens: int):
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
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: torch.Tensor,
    pad_id: int,
) -> list[list[list[int]]]:
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
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
            tokens[rows] = sample_next_token(logits[rows], temperature, top_p, generators[prompt_index])
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
) -> list[list[list[int]]]:
    """K sampled continuations (token ids, ending with the stop token when one was emitted) for each prompt.

    Prompt ``i`` draws from its own generator seeded with ``seed`` and ``i``, so a rerun with the same settings
    gives the same samples.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError(
            "Every prompt needs at least one token (the Llama 3 chat prompt starts with <|begin_of_text|>)."
        )
    model.eval()
    device = next(model.parameters()).device
    stop = torch.tensor(list(stop_ids), device=device)
    results: list[list[list[int]] | None] = [None] * len(prompts)
    batches = length_batches([len(p) for p in prompts], num_samples, max_new_tokens, max_batch_tokens)
    for batch in tqdm(batches, desc="rejection sampling", disable=len(batches) < 2):
        generators = [torch.Generator(device=device).manual_seed(seed * 1_000_003 + i) for i in batch]
        samples = _sample_batch(
            model,
            [prompts[i] for i in batch],
            generators,
            num_samples,
            max_new_tokens,
            temperature,
            top_p,
            stop,
            pad_id,
        )
        for index, prompt_samples in zip(batch, samples):
            results[index] = prompt_samples
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# Scoring and selection


@torch.no_grad()
def score_samples(
    reward_model, prompts: Sequence[Sequence[int]], samples: Sequence[Sequence[Sequence[int]]], pack_size: int = 8
) -> list[list[float]]:
    """Reward of every sample: the prompt and up to ``pack_size`` samples share one packed row (see training.reward)."""
    from training.reward import PackedRankingCollator

    reward_model.eval()
    device = next(reward_model.parameters()).device
    collate = PackedRankingCollator(pad_token_id=reward_model.config.pad_token_id or 0)
    scores: list[list[float]] = []
    for prompt, prompt_samples in zip(prompts, samples):
        prompt_scores: list[float] = []
        for start in range(0, len(prompt_samples), pack_size):
            chunk = prompt_samples[start : start + pack_size]
            batch = {k: v.to(device) for k, v in collate([pack_ranked_row(prompt, chunk)]).items()}
            prompt_scores += packed_rewards(reward_model, batch)[0, : len(chunk)].tolist()
        scores.append(prompt_scores)
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

    Already-loaded models and tokenizer may be passed (the rounds driver does); otherwise they are loaded. With a
    ``safety_filter`` (``training.safety.SafetyFilter``, or ``config.safety_guard_path``) unsafe samples are dropped.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hf_llama3 import encode_dialog
    from training.post_cli import StageInputs, load_rows, load_stage_tokenizer

    if tokenizer is None:
        tokenizer = load_stage_tokenizer(
            StageInputs(model_name_or_path=config.policy_path, tokenizer_name_or_path=config.tokenizer_name_or_path)
        )
    policy = policy if policy is not None else AutoModelForCausalLM.from_pretrained(config.policy_path)
    if reward_model is None:
        reward_model = AutoModelForSequenceClassification.from_pretrained(config.reward_model_path)
    rows = load_rows(config.prompts_path)
    dialogs = [with_system_prompt(prompt_messages(row, i), config.system_prompts, i) for i, row in enumerate(rows)]
    prompt_ids = [encode_dialog(tokenizer, d, add_generation_prompt=True).input_ids for d in dialogs]

    from hf_llama3 import stop_token_ids

    stops = stop_token_ids(tokenizer)
    samples = sample_responses(
        policy,
        prompt_ids,
        config.num_samples,
        config.max_new_tokens,
        config.temperature,
        config.top_p,
        config.seed,
        stops,
        config.max_batch_tokens,
        tokenizer.pad_token_id,
    )
    # A sample that ends without a stop token is closed with <|eot_id|> before scoring, as a finished turn would be.
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    closed = [[s if s and s[-1] in stops else [*s, eot] for s in prompt_samples] for prompt_samples in samples]
    scores = score_samples(reward_model, prompt_ids, closed, config.score_pack_size)
    if safety_filter is None and config.safety_guard_path:
        from training.safety.filter import SafetyFilter

        safety_filter = SafetyFilter.from_pretrained(config.safety_guard_path, threshold=config.safety_threshold)
    records = _select(tokenizer, dialogs, samples, scores, set(stops), safety_filter)
    output_dir = _write_outputs(Path(config.output_dir), records)
    if safety_filter is not None:  # [5.4.7] the stage report of the output filter
        _write_safety_report(output_dir, records, safety_filter)
    return output_dir


def _select(tokenizer, dialogs, samples, scores, stops: set[int], safety_filter=None) -> list[dict[str, Any]]:
    """Best and worst non-empty sample of each prompt by reward-model score (unsafe ones left out with a filter)."""
    all_texts = [[tokenizer.decode(s[:-1] if s and s[-1] in stops else s) for s in ps] for ps in samples]
    unsafe = safety_filter.drop_unsafe_samples(dialogs, all_texts) if safety_filter is not None else None
    records = []
    for index, (dialog, prompt_samples, prompt_scores) in enumerate(zip(dialogs, samples, scores)):
        texts = all_texts[index]
        reasons = ["stop" if s and s[-1] in stops else "length" for s in prompt_samples]
        usable = [k for k, text in enumerate(texts) if text.strip() and not (unsafe and unsafe[index][k])]
        record = {"index": index, "prompt": dialog, "samples": texts, "scores": prompt_scores, "stop_reasons": reasons}
        if unsafe is not None:
            record["unsafe"] = unsafe[index]
        if len(usable) >= 2:
            best = max(usable, key=lambda k: prompt_scores[k])
            worst = min(usable, key=lambda k: prompt_scores[k])
            record |= {"best": best, "worst": worst}
        else:
            logger.warning("prompt %d: fewer than 2 non-empty samples; no SFT or preference row", index)
        records.append(record)
    return records


def _write_outputs(output_dir: Path, records: list[dict[str, Any]]) -> Path:
    from hf_llama3.checkpoint_io import atomic_output_file

    output_dir.mkdir(parents=True, exist_ok=True)
    selected = [r for r in records if "best" in r]

    def assistant(text: str) -> dict[str, str]:
        return {"role": "assistant", "content": text}

    files = {
        "samples.jsonl": records,
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
    logger.info("Rejection sampling: %d prompts, %d selected -> %s", len(records), len(selected), output_dir)
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
        "rejection-sample", "Rejection sampling with a shared prompt KV cache (paper 4.2.2).", RejectionSamplingConfig
    )
    args = parser.parse_args(argv)
    config = load_stage_config(RejectionSamplingConfig, args)
    print(rejection_sample(config))
    return 0
