"""Training-step time and peak memory: our Llama3ForCausalLM vs transformers' LlamaForCausalLM.

Same config (the real 128256-token vocabulary, a few layers, fp32, CPU), same weights, same batch. Each model runs
in its own child process so its peak resident memory is its own: the figure is the rise of the peak RSS above the
process's RSS just before the first step (activations, logits, loss buffers and gradients of one step). Our model
computes the loss chunk by chunk (`config.loss_chunk_size`) and never holds the [tokens, vocab] fp32 logits.

    python benchmarks/model_step.py [--seq 1024 --batch 2 --layers 2 --hidden 256 --steps 3]

Each model runs ``--repeats`` times, interleaved with the other, and keeps its best step time.
Ends with one JSON line per metric: {"benchmark", "metric", "ours", "anchor", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_one(which: str, args: argparse.Namespace) -> dict:
    """Child process: build the model, run warm-up + timed steps, report median step time and peak RSS rise."""
    import torch

    from hf_llama3 import Llama3Config, Llama3ForCausalLM
    from hf_llama3.convert import llama_config_from_ours

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Llama3Config.from_preset(
        "tiny",
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 256),
    )
    config._attn_implementation = "sdpa"
    ours = Llama3ForCausalLM(config)
    if which == "ours":
        model = ours
    else:
        from transformers import LlamaForCausalLM

        llama_config = llama_config_from_ours(config)
        llama_config._attn_implementation = "sdpa"
        model = LlamaForCausalLM(llama_config)
        model.load_state_dict(ours.state_dict())
    del ours
    model.train()
    input_ids = torch.randint(0, 128000, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))

    def step() -> float:
        start = time.perf_counter()
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed, loss.item()

    baseline = rss_bytes()
    step()  # warm-up (also the first, cold-allocator step for the peak)
    times, losses = zip(*(step() for _ in range(args.steps)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": statistics.median(times), "peak_rise_bytes": peak - baseline, "loss": losses[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved child runs per model (best one kept)")
    parser.add_argument("--child", choices=["ours", "anchor"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args)))
        return

    forwarded = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("child", "repeats")]
    runs: dict[str, list[dict]] = {"anchor": [], "ours": []}
    # Interleaved child runs (anchor, ours, anchor, ours, ...): a load change on a shared machine hits both alike.
    for _ in range(args.repeats):
        for which in ("anchor", "ours"):
            out = subprocess.run(
                [sys.executable, __file__, f"--child={which}", *forwarded], capture_output=True, text=True, check=True
            )
            runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ours, anchor = (
        {
            "step_s": min(r["step_s"] for r in runs[which]),
            "peak_rise_bytes": min(r["peak_rise_bytes"] for r in runs[which]),
            "loss": runs[which][0]["loss"],
        }
        for which in ("ours", "anchor")
    )
    print(
        f"config: vocab 128256, seq {args.seq}, batch {args.batch}, layers {args.layers}, hidden {args.hidden}, fp32, "
        f"{args.threads} threads"
    )
    print(f"loss           ours {ours['loss']:.6f}  anchor {anchor['loss']:.6f}")
    print(f"step time (s)  ours {ours['step_s']:.3f}  anchor {anchor['step_s']:.3f}")
    print(f"peak rise (MB) ours {ours['peak_rise_bytes'] / 2**20:.0f}  anchor {anchor['peak_rise_bytes'] / 2**20:.0f}")
    for metric, key, goal in (("step_time_s", "step_s", "<= 1.0"), ("peak_memory_bytes", "peak_rise_bytes", "<= 0.6")):
        print(
            json.dumps(
                {
                    "benchmark": "model_step",
                    "metric": metric,
                    "ours": ours[key],
                    "anchor": anchor[key],
                    "ratio": ours[key] / anchor[key],
                    "goal": goal,
                }
            )
        )


if __name__ == "__main__":
    main()
