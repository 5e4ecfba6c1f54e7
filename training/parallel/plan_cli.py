"""``hf-llama3 plan``: the layouts of a model on N GPUs that fit, fastest projected first; writes the recipe's
``parallel:`` section of the chosen one (see :mod:`training.parallel.planner`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_llama3 import Llama3Config
from hf_llama3.cli_errors import CLIError
from hf_llama3.cli_types import positive_float, positive_int, unit_float
from hf_llama3.configuration_llama3 import PRESETS

from .gpu_specs import GB, GPU_PRESETS, gpu_spec
from .planner import (
    HEADROOM,
    TABLE_HEADER,
    enumerate_layouts,
    evaluate,
    parse_layout,
    set_flags,
    table_row,
    write_recipe_section,
)
from .simulated_launch import shortfall
from .step_time import model_flops_per_token

# The paper's batch once fully ramped: 16M tokens [3.4.1].
PAPER_BATCH_TOKENS = 16 * 2**20


def build_parser() -> argparse.ArgumentParser:
    """The ``plan`` options."""
    parser = argparse.ArgumentParser(prog="hf-llama3 plan", description=__doc__)
    parser.add_argument(
        "--model", default="llama3-405b", help=f"a preset ({', '.join(sorted(PRESETS))}) or a config.json"
    )
    parser.add_argument("--gpus", type=positive_int, required=True, help="number of GPUs")
    parser.add_argument("--seq-len", type=positive_int, default=8192, help="tokens per sequence (default 8192)")
    parser.add_argument(
        "--batch-tokens", type=positive_int, default=PAPER_BATCH_TOKENS, help="global batch in tokens (16M, [3.4.1])"
    )
    parser.add_argument("--gpu", choices=sorted(GPU_PRESETS), default="h100", help="GPU kind (default h100)")
    parser.add_argument("--hbm-gb", type=positive_float, help="override: memory per GPU, GB (10^9 bytes)")
    parser.add_argument("--peak-tflops", type=positive_float, help="override: dense bf16 peak per GPU, TFLOP/s")
    parser.add_argument("--intra-node-gbps", type=positive_float, help="override: NVLink bus bandwidth, GB/s")
    parser.add_argument("--inter-node-gbps", type=positive_float, help="override: inter-node bandwidth per GPU, GB/s")
    parser.add_argument("--gpus-per-node", type=positive_int, help="override: GPUs per node (8)")
    parser.add_argument("--matmul-efficiency", type=unit_float, help="override: fraction of the peak kernels reach")
    parser.add_argument("--headroom", type=unit_float, default=HEADROOM, help="HBM fraction kept free (0.1)")
    parser.add_argument("--top", type=positive_int, default=5, help="layouts to print (default 5)")
    parser.add_argument("--layout", help="evaluate one layout: tp=8,cp=1,pp=16,dp=64[,v=2][,mbs=1][,ac=full|none]")
    parser.add_argument("--output", type=Path, help="write the best (or the given) layout's recipe section here")
    return parser


def load_model(name: str) -> Llama3Config:
    """A preset name or the path of a ``config.json`` (or of its folder)."""
    if name in PRESETS:
        return Llama3Config.from_preset(name)
    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise CLIError(f"--model {name!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a config.json.")
    return Llama3Config.from_json_file(str(path))


def main(argv: list[str] | None = None) -> int:
    """Print the plan; exit 2 with one line when nothing (or the given layout) fits."""
    args = build_parser().parse_args(argv)
    config = load_model(args.model)
    gpu = gpu_spec(
        args.gpu,
        hbm_bytes=None if args.hbm_gb is None else int(args.hbm_gb * GB),
        bf16_flops=None if args.peak_tflops is None else args.peak_tflops * 1e12,
        intra_node_bandwidth=None if args.intra_node_gbps is None else args.intra_node_gbps * GB,
        inter_node_bandwidth=None if args.inter_node_gbps is None else args.inter_node_gbps * GB,
        gpus_per_node=args.gpus_per_node,
        matmul_efficiency=args.matmul_efficiency,
    )
    if args.batch_tokens % args.seq_len:
        raise CLIError(f"--batch-tokens {args.batch_tokens} is not a multiple of --seq-len {args.seq_len}.")
    flops = model_flops_per_token(config, args.seq_len)
    print(
        f"{args.model} on {args.gpus:,} x {gpu.name} ({gpu.hbm_bytes / GB:.0f} GB, {gpu.bf16_flops / 1e12:.0f} "
        f"TFLOP/s bf16 x {gpu.matmul_efficiency:.2f} reached, NVLink {gpu.intra_node_bandwidth / GB:.0f} GB/s, "
        f"inter-node {gpu.inter_node_bandwidth / GB:.0f} GB/s), seq {args.seq_len}, batch {args.batch_tokens:,} "
        f"tokens; {flops / 1e9:.1f} GFLOP/token (6N + 6Lhs); memory of the worst rank, GB = 10^9 bytes"
    )
    if args.layout is not None:
        dims, checkpointing = parse_layout(args.layout)
        dims.validate_world(args.gpus)
        chosen = [
            evaluate(
                config, dims, args.seq_len, args.batch_tokens, gpu, checkpointing, exact=True, headroom=args.headroom
            )
        ]
    else:
        candidates = enumerate_layouts(config, args.gpus, args.seq_len, args.batch_tokens, gpu, args.headroom)
        fitting = [c for c in candidates if c.fits]
        print(f"{len(candidates)} layouts the engine accepts, {len(fitting)} fit the HBM less {args.headroom:.0%}")
        if not fitting:
            best = min(candidates, key=lambda c: c.memory.total) if candidates else None
            hint = f" (smallest: {best.name}, {best.memory.total / GB:.1f} GB)" if best else ""
            raise CLIError(
                f"no layout of {args.model} on {args.gpus} GPUs fits {gpu.hbm_bytes / GB:.0f} GB less the "
                f"{args.headroom:.0%} headroom{hint}: use more GPUs, a shorter --seq-len or a GPU with more HBM."
            )
        # Recount the printed ones from the rank's model built on meta tensors (pretrain --dry-run's accounting).
        chosen = [
            evaluate(
                config,
                c.dims,
                args.seq_len,
                args.batch_tokens,
                gpu,
                c.activation_checkpointing,
                exact=True,
                headroom=args.headroom,
            )
            for c in fitting[: args.top]
        ]
    print(TABLE_HEADER)
    for candidate in chosen:
        print(table_row(candidate))
    best = chosen[0]
    if not best.fits:
        raise CLIError(shortfall(best.memory, best.budget_bytes, f"--layout {args.layout}"))
    print(f"launch it with: {set_flags(best)}")
    if args.output is not None:
        header = f"hf-llama3 plan: {best.name} for {args.model}, seq {args.seq_len}, {args.gpus} x {gpu.name}"
        write_recipe_section(args.output, best, header)
        print(f"wrote {args.output}")
    return 0
