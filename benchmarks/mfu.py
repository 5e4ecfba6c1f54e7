"""Model FLOPs utilisation of the parallel engine on one device: a llama3.2-1b-shaped model, bf16, long sequences.

Runs ``ParallelTrainer`` steps (FSDP2 mixed precision on one rank: bf16 compute, fp32 master weights and
reductions; per-layer ``torch.compile``; SDPA) on random tokens and reports MFU from ``training.parallel.metrics``
(6N + causal attention FLOPs per token over the device's dense bf16 peak). Anchor: the goal of 50% MFU (the paper
reports 38-43% at 405B scale on H100s [3.3.2, Table 4]). Ends with one JSON line.

    python benchmarks/mfu.py                                  # on a GPU: llama3.2-1b shape, seq 8192
    python benchmarks/mfu.py --device cpu --preset tiny --seq 256 --peak-flops 1e11 --no-compile   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.distributed as dist

from hf_llama3 import Llama3Config
from training.parallel.engine import EngineConfig, OptimizerConfig, ParallelTrainer
from training.parallel.metrics import ThroughputMeter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="llama3.2-1b")
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded (compilation, allocator warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-flops", type=float, default=None, help="device peak FLOP/s (default: from GPU name)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    config = Llama3Config.from_preset(args.preset)
    engine = EngineConfig(
        fsdp={"param_dtype": "bfloat16", "reduce_dtype": "float32"},
        optimizer=OptimizerConfig(lr=1e-4, warmup_steps=0),
        compile=not args.no_compile,
        device=args.device,
    )
    trainer = ParallelTrainer(config, engine)
    meter = ThroughputMeter(config, args.seq, num_devices=1, peak_flops=args.peak_flops)
    if meter.peak_flops is None:
        raise SystemExit("Unknown device peak: pass --peak-flops (e.g. 989e12 for an H100 SXM in bf16).")
    gen = torch.Generator().manual_seed(0)
    results = []
    for step in range(args.warmup + args.steps):
        batch = {"input_ids": torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen)}
        meter.start()
        loss = trainer.step(batch)
        metrics = meter.stop(step + 1, loss, args.batch * args.seq)
        print(metrics.format(), flush=True)
        if step >= args.warmup:
            results.append(metrics.mfu)
    mfu = statistics.median(results)
    memory = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    print(f"median MFU {100 * mfu:.1f}% over {args.steps} steps; peak GPU memory {memory:.1f} GiB")
    dist.destroy_process_group()
    print(
        json.dumps(
            {
                "benchmark": "mfu",
                "metric": f"MFU, {args.preset} shape, seq {args.seq}, bf16, {args.device}",
                "ours": round(mfu, 4),
                "anchor": 0.5,
                "ratio": round(mfu / 0.5, 4),
                "goal": ">= 1.0",
            }
        )
    )


if __name__ == "__main__":
    main()
