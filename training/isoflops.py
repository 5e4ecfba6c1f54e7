"""IsoFLOPs sweep runner for the scaling-law experiments [3.2.1].

For each compute budget C and each model size N the runner trains a fresh Llama 3 model for
``C / (6 * N)`` tokens with the paper's sweep settings (AdamW, linear warmup then cosine decay to 0.1x
of a peak LR between 2e-4 and 4e-4 that depends on the model size, weight decay 0.1 x LR), records the
final validation loss, and then fits and plots the scaling law with ``evaluation.scaling_laws``:

    hf-llama3 scaling-law sweep --config recipes/scaling_law/tiny.yaml

The loop is deliberately single-process and plain (torch AdamW plus transformers' cosine-with-min-LR
schedule): the runs at real budgets belong on a cluster through the pre-training engine, but the sweep
logic, the bookkeeping and the fit are the same. ``results.jsonl`` is rewritten (atomically) after each
finished run, so an interrupted sweep resumes where it stopped; ``fingerprint.json`` makes sure it resumes only
points of the same settings and data (:mod:`training.isoflops_resume`).

N counts the parameters that do per-token matrix-multiply FLOPs: everything except the input
embedding table (a lookup, no FLOPs); the paper does not say which count it uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from evaluation.cli import scaling_law_main, write_scaling_law_report
from evaluation.contamination import read_jsonl_field
from evaluation.needle import default_corpus
from evaluation.scaling_laws import FLOPS_PER_PARAM_TOKEN, SweepPoint
from hf_llama3 import Llama3Config, Llama3ForCausalLM, load_tokenizer
from hf_llama3.checkpoint_io import atomic_output_file
from hf_llama3.run_fingerprint import check_fingerprint
from training.isoflops_resume import FRESH, check_finished_points, sweep_fingerprint
from training.post_cli import load_stage_config, stage_parser

logger = logging.getLogger(__name__)


@dataclass
class IsoFLOPsConfig:
    """One IsoFLOPs sweep: budgets x model sizes, the paper's optimizer settings, data and output.

    Args:
        budgets: compute budgets in FLOPs (the paper: 6e18 to 1e22 [3.2.1]).
        sizes: model shapes, each a dict of ``Llama3Config`` overrides on top of ``preset`` (paper: 40M to 16B).
        preset: the ``Llama3Config`` preset the sizes modify.
        seq_len, batch_size: tokens per step = batch_size x seq_len (paper: 250K to 4M tokens per batch).
        peak_lr_range: (lowest, highest) peak LR; the largest size gets the lowest, the smallest the highest,
            log-interpolated in N between (paper: 2e-4 to 4e-4 [3.2.1]).
        min_lr_ratio: cosine decays to this fraction of the peak (paper: 0.1 [3.2.1]).
        weight_decay: AdamW's coefficient; AdamW multiplies it by the current LR, so 0.1 is the paper's
            "weight decay 0.1 x LR" [3.2.1].
        warmup_steps: linear warmup (paper: 2000 [3.2.1]); capped at half of a run's steps.
        train_files, val_files: JSONL files with a ``text`` (or ``input_ids``) field; empty uses the built-in
            offline corpus (standard-library docstrings), split into training and validation documents.
        val_tokens: validation tokens scored per run (whole sequences).
        compact_vocab: train on the ids that occur in the data, renumbered 0..K-1, instead of all 128256 ids.
            For CPU-sized sweeps only, where the 128256-row output layer would take almost all the compute;
            the tokenizer and the token sequences are unchanged. Off for real budgets.
        tokenizer: tokenizer path for ``hf_llama3.load_tokenizer``; None is the real Llama 3 tokenizer.
        output_dir: receives results.jsonl, fit.json and the PNG plots.
        extrapolate_to: also forecast the compute-optimal model at this budget (paper: 3.8e25 FLOPs).
        device: where the models train ("cpu", "cuda", ...).
        num_threads: torch intra-op threads for the sweep; None keeps torch's default. Models this small
            gain nothing from more threads and slow down badly when the cores are shared (use 1 for CPU sweeps).
        seed: model initialisation and data order.
    """

    budgets: list[float]
    sizes: list[dict[str, Any]]
    output_dir: str
    preset: str = "tiny"
    seq_len: int = 64
    batch_size: int = 8
    peak_lr_range: list[float] = field(default_factory=lambda: [2e-4, 4e-4])
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    val_tokens: int = 4096
    compact_vocab: bool = False
    tokenizer: str | None = None
    extrapolate_to: float | None = None
    device: str = "cpu"
    num_threads: int | None = None
    seed: int = 0

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader) before the config is built.
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "budgets": {"gt": 0},
        "seq_len": {"min": 2},
        "batch_size": {"min": 1},
        "peak_lr_range": {"gt": 0},
        "min_lr_ratio": {"min": 0, "max": 1},
        "weight_decay": {"min": 0},
        "warmup_steps": {"min": 0},
        "val_tokens": {"min": 1},
        "extrapolate_to": {"gt": 0},
        "num_threads": {"min": 1},
        "seed": {"min": 0},
    }

    def __post_init__(self) -> None:
        # YAML 1.1 reads "3.0e9" (no exponent sign) as a string: coerce every number given in e-notation.
        self.budgets = sorted(float(b) for b in self.budgets)
        self.peak_lr_range = [float(v) for v in self.peak_lr_range]
        self.extrapolate_to = None if self.extrapolate_to is None else float(self.extrapolate_to)
        if len(self.budgets) < 2 or min(self.budgets) <= 0:
            raise ValueError(f"budgets: give at least 2 positive FLOP budgets for a power law, got {self.budgets}.")
        if len(self.sizes) < 3 or not all(isinstance(s, dict) for s in self.sizes):
            raise ValueError("sizes: give at least 3 model shapes (dicts of Llama3Config overrides) per budget.")
        if self.seq_len < 2 or self.batch_size < 1 or self.val_tokens < self.seq_len:
            raise ValueError("seq_len must be >= 2, batch_size >= 1 and val_tokens >= seq_len.")
        low, high = self.peak_lr_range
        if not 0 < low <= high:
            raise ValueError(f"peak_lr_range must be [low, high] with 0 < low <= high, got {self.peak_lr_range}.")
        if not 0 <= self.min_lr_ratio <= 1 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("min_lr_ratio must be in [0, 1]; weight_decay and warmup_steps must be >= 0.")
        if bool(self.train_files) != bool(self.val_files):
            raise ValueError("give both train_files and val_files, or neither (for the built-in corpus).")


def compute_params(model: torch.nn.Module) -> int:
    """Parameters that cost FLOPs per token: all but the input embedding table (see the module docstring)."""
    total = sum(p.numel() for p in model.parameters())
    return total - model.get_input_embeddings().weight.numel()


def peak_lr(params: int, all_params: Sequence[int], lr_range: Sequence[float]) -> float:
    """The size-dependent peak LR: log-interpolated from ``high`` (smallest model) to ``low`` (largest)."""
    low, high = lr_range
    lo, hi = math.log(min(all_params)), math.log(max(all_params))
    t = 0.0 if hi == lo else (math.log(params) - lo) / (hi - lo)
    return math.exp(math.log(high) + t * (math.log(low) - math.log(high)))


def _token_stream(texts, tokenizer) -> np.ndarray:
    ids: list[int] = []
    for item in texts:
        ids += tokenizer.encode(item, add_special_tokens=False) if isinstance(item, str) else list(item)
        ids.append(tokenizer.eos_token_id)  # document boundary
    return np.asarray(ids, dtype=np.int64)


def load_data(config: IsoFLOPsConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Training and validation token streams, and the model vocabulary size they need."""
    tokenizer = load_tokenizer(config.tokenizer)
    if config.train_files:
        train = _token_stream((t for f in config.train_files for t in read_jsonl_field(f)), tokenizer)
        val = _token_stream((t for f in config.val_files for t in read_jsonl_field(f)), tokenizer)
    else:
        docs = default_corpus()  # every 10th document is held out for validation
        held_out = set(range(0, len(docs), 10))
        train = _token_stream((d for i, d in enumerate(docs) if i not in held_out), tokenizer)
        val = _token_stream((docs[i] for i in sorted(held_out)), tokenizer)
    if val.size < config.val_tokens + 1:
        raise ValueError(f"validation data has {val.size} tokens, fewer than val_tokens={config.val_tokens} + 1.")
    vocab_size = len(tokenizer)
    if config.compact_vocab:
        vocab, inverse = np.unique(np.concatenate([train, val]), return_inverse=True)
        train, val = inverse[: train.size], inverse[train.size :]
        vocab_size = int(vocab.size)
    return train, val, vocab_size


def _batches(stream: np.ndarray, batch_size: int, seq_len: int, start: int = 0):
    """Consecutive ``[batch, seq_len]`` windows of the stream, wrapping around at its end."""
    span = batch_size * seq_len
    position = start
    while True:
        index = (position + np.arange(span)) % stream.size
        yield torch.from_numpy(stream[index].reshape(batch_size, seq_len))
        position += span


def build_model(config: IsoFLOPsConfig, size: dict[str, Any], vocab_size: int) -> Llama3ForCausalLM:
    overrides = dict(size, vocab_size=vocab_size, use_cache=False)
    if config.compact_vocab:  # renumbered ids: the Llama 3 special-token ids no longer exist
        overrides |= dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return Llama3ForCausalLM(Llama3Config.from_preset(config.preset, **overrides))


@torch.no_grad()
def validation_loss(model: Llama3ForCausalLM, val: np.ndarray, config: IsoFLOPsConfig) -> float:
    """Mean next-token loss over the first ``val_tokens`` validation tokens, in whole sequences."""
    model.eval()
    rows = config.val_tokens // config.seq_len
    batch = torch.from_numpy(val[: rows * config.seq_len].reshape(rows, config.seq_len)).to(config.device)
    loss = float(model(input_ids=batch, labels=batch).loss)
    model.train()
    return loss


def train_one(
    config: IsoFLOPsConfig, size: dict[str, Any], budget: float, lr: float, data: tuple[np.ndarray, np.ndarray, int]
) -> dict[str, Any]:
    """Train one size at one budget for budget / (6N) tokens and return its results record."""
    train, val, vocab_size = data
    torch.manual_seed(config.seed)
    model = build_model(config, size, vocab_size).to(config.device)
    n = compute_params(model)
    tokens_per_step = config.batch_size * config.seq_len
    steps = max(1, round(budget / (FLOPS_PER_PARAM_TOKEN * n) / tokens_per_step))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, min(config.warmup_steps, steps // 2), steps, min_lr_rate=config.min_lr_ratio
    )
    model.train()
    batches = _batches(train, config.batch_size, config.seq_len)
    for _ in tqdm(range(steps), desc=f"C={budget:.2g} N={n}", unit="step", leave=False):
        batch = next(batches).to(config.device)
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise ValueError(f"training diverged at C={budget:.3g}, N={n} (loss {float(loss)}); lower peak_lr_range.")
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    tokens = steps * tokens_per_step
    return {
        "compute": budget,
        "params": n,
        "tokens": tokens,
        "loss": validation_loss(model, val, config),
        "steps": steps,
        "peak_lr": lr,
        "size": size,
    }


def run_sweep(config: IsoFLOPsConfig) -> Path:
    """Run every (budget, size) not yet in results.jsonl, then fit and plot; returns the output folder."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.jsonl"
    done = []
    if results_path.is_file():
        done = [json.loads(line) for line in results_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    finished = {(r["compute"], json.dumps(r["size"], sort_keys=True)) for r in done}
    data = load_data(config)
    with torch.device("meta"):  # count parameters without allocating the models
        all_params = [compute_params(build_model(config, size, data[2])) for size in config.sizes]
    # (budget, size) alone would resume points of another LR range, sequence length or data: refuse those.
    check_fingerprint(output, sweep_fingerprint(config, data), what="an IsoFLOPs sweep", fresh=FRESH)
    lrs = {
        json.dumps(s, sort_keys=True): peak_lr(n, all_params, config.peak_lr_range)
        for s, n in zip(config.sizes, all_params)
    }
    check_finished_points(done, lrs, str(output))
    for budget in config.budgets:
        for size, n in zip(config.sizes, all_params):
            if (budget, json.dumps(size, sort_keys=True)) in finished:
                continue
            record = train_one(config, size, budget, peak_lr(n, all_params, config.peak_lr_range), data)
            logger.info("C=%.3g N=%d tokens=%d loss=%.4f", budget, n, record["tokens"], record["loss"])
            done.append(record)
            with atomic_output_file(results_path) as tmp:  # rewritten whole after every run: resumable, never torn
                tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in done), encoding="utf-8")
    points = [SweepPoint(r["compute"], r["params"], r["tokens"], r["loss"]) for r in done]
    write_scaling_law_report(points, output, extrapolate_to=config.extrapolate_to)
    return output


def main(argv: list[str]) -> int:
    """``hf-llama3 scaling-law {sweep,fit,forecast} ...``: ``sweep`` trains here, the rest is evaluation's."""
    if not argv or argv[0] != "sweep":
        return scaling_law_main(argv)
    parser: argparse.ArgumentParser = stage_parser(
        "scaling-law sweep", "Train an IsoFLOPs sweep, then fit and plot.", IsoFLOPsConfig
    )
    parser.add_argument("--output-dir", help="override output_dir from the recipe")
    args = parser.parse_args(argv[1:])
    config = load_stage_config(IsoFLOPsConfig, args, {"output_dir": args.output_dir})
    output = run_sweep(config)
    print(f"IsoFLOPs sweep written to {output}: results.jsonl, fit.json, isoflops.png, power_law.png")
    return 0
