"""The paper's quality checks of FP8 inference [6.2]: FP8 vs bf16 on the same prompts, in one report.

The paper notes that standard benchmarks (and perplexity) can miss what FP8 breaks, and checks the distribution
of reward-model scores of responses produced with FP8 and with bf16 (Figure 26 of the paper: 100,000 responses).
This module reports, for a bf16 model and its FP8 export on the same prompts:

- next-token distributions, teacher-forced on the prompt tokens: KL(bf16 || FP8) per position (mean, p99, max,
  in nats) and top-1 agreement;
- perplexity of both models on the same tokens and their ratio;
- with a reward model: the scores of each model's greedy responses (mean, std, quantiles), the mean difference
  and the two-sample Kolmogorov-Smirnov statistic between the two score distributions.

    python -m evaluation.fp8_quality --reference BF16_DIR --quantized FP8_DIR --prompts prompts.jsonl \
        [--reward-model RM_DIR] --output fp8_quality.json

``hf-llama3 quantize --fp8 SRC DST --check prompts.jsonl`` runs the same checks on a new export. The FP8 model
runs through ``hf_llama3.fp8_loader`` (FP8 arithmetic emulated on CPU, or on any device without fbgemm).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from evaluation.io import write_json
from hf_llama3.cli_types import positive_int

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@torch.no_grad()
def next_token_comparison(reference, quantized, sequences: Sequence[Sequence[int]]) -> dict[str, Any]:
    """KL(reference || quantized) of the next-token distributions, top-1 agreement and perplexities.

    Every sequence is run through both models on its own (no padding); position ``t`` predicts token ``t + 1``,
    so perplexity is over the sequence's own continuation and KL/top-1 are over every position.
    """
    kls, agree, nll_ref, nll_q, count = [], 0, 0.0, 0.0, 0
    for tokens in sequences:
        if len(tokens) < 2:
            raise ValueError(f"Each sequence needs at least 2 tokens for next-token checks, got {list(tokens)}.")
        ids = torch.tensor([list(tokens)], device=reference.device)
        log_p = F.log_softmax(reference(ids).logits[0].float(), dim=-1)
        log_q = F.log_softmax(quantized(ids).logits[0].float(), dim=-1)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
        agree += int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
        targets = ids[0, 1:]
        nll_ref -= float(log_p[:-1].gather(1, targets[:, None]).sum())
        nll_q -= float(log_q[:-1].gather(1, targets[:, None]).sum())
        count += len(targets)
    kl = torch.cat(kls).clamp(min=0.0)
    positions = kl.numel()
    return {
        "positions": positions,
        "kl_mean": float(kl.mean()),
        "kl_p99": float(torch.quantile(kl, 0.99)),
        "kl_max": float(kl.max()),
        "top1_agreement": agree / positions,
        "perplexity_reference": math.exp(nll_ref / count),
        "perplexity_quantized": math.exp(nll_q / count),
        "perplexity_ratio": math.exp((nll_q - nll_ref) / count),
    }


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    if not a or not b:
        raise ValueError("ks_statistic needs two non-empty samples.")
    xs, ys = sorted(a), sorted(b)
    gap, i, j = 0.0, 0, 0
    while i < len(xs) and j < len(ys):
        value = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= value:
            i += 1
        while j < len(ys) and ys[j] <= value:
            j += 1
        gap = max(gap, abs(i / len(xs) - j / len(ys)))
    return gap


def describe(scores: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation and quantiles of a score sample."""
    t = torch.tensor(list(scores), dtype=torch.float64)
    out = {"n": len(scores), "mean": float(t.mean()), "std": float(t.std()) if len(scores) > 1 else 0.0}
    out.update({f"q{int(q * 100):02d}": float(torch.quantile(t, q)) for q in QUANTILES})
    return out


@torch.no_grad()
def reward_scores(policy, reward_model, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[float]:
    """Reward-model score of ``policy``'s greedy response to each prompt (prompt + response scored together)."""
    scores = []
    for tokens in prompts:
        ids = torch.tensor([list(tokens)], device=policy.device)
        out = policy.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, min_new_tokens=1
        )
        scores.append(float(reward_model(out.to(reward_model.device)).logits[0, 0].float()))
    return scores


def compare(
    reference,
    quantized,
    prompts: Sequence[Sequence[int]],
    reward_model=None,
    max_new_tokens: int = 32,
) -> dict[str, Any]:
    """The full report for two loaded models; ``summary`` holds the headline figures."""
    report: dict[str, Any] = {"next_token": next_token_comparison(reference, quantized, prompts)}
    if reward_model is not None:
        ref_scores = reward_scores(reference, reward_model, prompts, max_new_tokens)
        q_scores = reward_scores(quantized, reward_model, prompts, max_new_tokens)
        report["reward"] = {
            "reference": describe(ref_scores),
            "quantized": describe(q_scores),
            "mean_difference": describe(q_scores)["mean"] - describe(ref_scores)["mean"],
            "ks_statistic": ks_statistic(ref_scores, q_scores),
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
        }
    nt = report["next_token"]
    report["summary"] = {
        "kl_mean": nt["kl_mean"],
        "top1_agreement": nt["top1_agreement"],
        "perplexity_ratio": nt["perplexity_ratio"],
    }
    if "reward" in report:
        report["summary"]["reward_mean_difference"] = report["reward"]["mean_difference"]
        report["summary"]["reward_ks_statistic"] = report["reward"]["ks_statistic"]
    return report


def read_prompts(path: str | os.PathLike, tokenizer_folder: str | os.PathLike | None = None) -> list[list[int]]:
    """Token ids of a JSONL prompts file: rows ``{"input_ids": [...]}`` or ``{"text": ...}`` (``"prompt"`` too),
    the texts tokenized with the tokenizer in ``tokenizer_folder``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Prompts file {path} does not exist.")
    rows, tokenizer = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number} is not JSON ({err}); write one JSON object per line.") from err
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object with 'input_ids' or 'text'.")
        if "input_ids" in row:
            rows.append([int(t) for t in row["input_ids"]])
            continue
        text = row.get("text", row.get("prompt"))
        if not isinstance(text, str) or not text:
            raise ValueError(f"{path}:{number}: needs a non-empty 'text' (or 'prompt') string or 'input_ids'.")
        if tokenizer is None:
            tokenizer = _tokenizer(tokenizer_folder, path)
        rows.append(tokenizer(text)["input_ids"])
    if not rows:
        raise ValueError(f"{path} has no prompts.")
    return rows


def _tokenizer(folder: str | os.PathLike | None, prompts: Path):
    from transformers import AutoTokenizer

    if folder is None or not (Path(folder) / "tokenizer.json").exists():
        raise ValueError(
            f"{prompts} has text prompts but {folder} has no tokenizer.json: add the tokenizer to the model folder "
            "or give token ids ('input_ids') in the prompts file."
        )
    return AutoTokenizer.from_pretrained(folder)


def check_folders(
    reference: str | os.PathLike,
    quantized: str | os.PathLike,
    prompts: str | os.PathLike,
    *,
    reward_model: str | os.PathLike | None = None,
    max_new_tokens: int = 32,
    activations: str = "fp8",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Load a bf16 folder and its FP8 export (CPU reference path) and return :func:`compare`'s report.

    ``dtype`` is the compute dtype of both models (fp32 by default, so that the report measures the FP8
    quantization rather than bf16 rounding differences between the two paths).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    import hf_llama3  # noqa: F401  (registers the llama3 Auto classes)
    from hf_llama3.fp8_loader import load_fp8_model

    token_ids = read_prompts(prompts, reference)
    ref_model = AutoModelForCausalLM.from_pretrained(reference, dtype=dtype).eval()
    q_model = load_fp8_model(quantized, activations=activations, dtype=dtype)
    rm = None
    if reward_model is not None:
        if not Path(reward_model).is_dir():
            raise FileNotFoundError(f"Reward-model folder {reward_model} does not exist.")
        rm = AutoModelForSequenceClassification.from_pretrained(reward_model, dtype=dtype).eval()
    report = compare(ref_model, q_model, token_ids, reward_model=rm, max_new_tokens=max_new_tokens)
    report["setup"] = {
        "reference": str(reference),
        "quantized": str(quantized),
        "prompts": len(token_ids),
        "activations": activations,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "reward_model": str(reward_model) if reward_model else None,
    }
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.fp8_quality --reference DIR --quantized DIR --prompts FILE [--reward-model DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.fp8_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="bf16 folder")
    parser.add_argument("--quantized", required=True, help="its FP8 export (hf-llama3 quantize --fp8)")
    parser.add_argument("--prompts", required=True, help="JSONL: {'text'} or {'input_ids'} per line")
    parser.add_argument("--reward-model", help="reward-model folder for the score distributions")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument("--activations", choices=("fp8", "bf16"), default="fp8")
    parser.add_argument("--output", required=True, type=Path, help="report JSON")
    args = parser.parse_args(argv)
    report = check_folders(
        args.reference,
        args.quantized,
        args.prompts,
        reward_model=args.reward_model,
        max_new_tokens=args.max_new_tokens,
        activations=args.activations,
    )
    write_json(args.output, report)
    print(json.dumps(report["summary"], sort_keys=True))
    return 0


if __name__ == "__main__":
    from hf_llama3.cli_errors import run_entry_point

    raise SystemExit(run_entry_point("fp8_quality", main))
