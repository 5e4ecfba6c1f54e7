"""Run every benchmark in this folder (what `make bench` runs) and print their JSON lines together at the end.

Each script runs as its own process with its default settings, its output shown when it ends. ``mfu.py`` and
``fp8_gpu.py`` need a GPU for their real measurements; without CUDA they run their CPU smoke settings. The run fails
(exit 1) when a script fails or ends without its JSON line. Results go in BENCHMARKS.md by hand, with the machine
and the date.

    .venv/bin/python benchmarks/run_all.py [--only rejection_sampling model_step]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Settings other than a script's defaults, and why: without a GPU, the GPU benchmarks run the CPU smoke settings from
# their own docstrings (their real figures need CUDA; the smoke run checks the script and its anchor still work).
CPU_SMOKE_ARGS: dict[str, list[str]] = {
    "mfu": ["--device", "cpu", "--preset", "tiny", "--seq", "256", "--peak-flops", "1e11", "--no-compile"],
    "fp8_gpu": ["--device", "cpu", "--preset", "tiny-deep", "--batch", "2", "--new-tokens", "4", "--prompt-len", "16"],
}
ARGS: dict[str, list[str]] = {} if torch.cuda.is_available() else CPU_SMOKE_ARGS


def json_lines(output: str) -> list[dict]:
    """The benchmark result lines of a script's output."""
    results = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and '"benchmark"' in line:
            results.append(json.loads(line))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="script names without .py (default: all)")
    args = parser.parse_args(argv)
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    if args.only:
        unknown = set(args.only) - {p.stem for p in scripts}
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem in args.only]

    results, failures = [], []
    for script in scripts:
        command = [sys.executable, str(script), *ARGS.get(script.stem, [])]
        print(f"==> {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
        lines = json_lines(proc.stdout)
        print(f"<== {script.stem}: exit {proc.returncode}, {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode or not lines:
            failures.append(f"{script.stem} ({'exit ' + str(proc.returncode) if proc.returncode else 'no JSON line'})")
        results += lines

    print("\nAll benchmark results:")
    for line in results:
        print(json.dumps(line))
    if failures:
        print(f"Failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
