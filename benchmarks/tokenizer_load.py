"""Tokenizer load and encode time: our converted Llama 3 tokenizer vs its anchors.

1. Load: `hf_llama3.load_tokenizer()` from a warm cache vs the same call converting Meta's tiktoken
   ``tokenizer.model`` from scratch (an empty cache). The cache is what makes a second load cheap.
2. Encode: our fast tokenizer vs Meta's tiktoken-based `llama_models.llama3.Tokenizer` on the same texts
   (one batch call for ours, Meta's per-text `encode`), equal ids checked.

Each load runs in a fresh child process (imports done before the clock starts), ``--repeats`` times, best kept.

    python benchmarks/tokenizer_load.py [--repeats 3]

Ends with one JSON line per metric: {"benchmark", "metric", "ours", "anchor", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, cache_dir: str) -> None:
    from hf_llama3.tokenization_llama3 import load_tokenizer

    start = time.perf_counter()
    load_tokenizer(cache_dir=cache_dir)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def load_seconds(mode: str, cache_dir: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--cache-dir", cache_dir],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def encode_benchmark(repeats: int) -> tuple[float, float]:
    import llama_models
    from llama_models.llama3.tokenizer import Tokenizer

    from hf_llama3.tokenization_llama3 import default_tokenizer_model_path, load_tokenizer

    root = Path(llama_models.__file__).parent
    texts = [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")) + sorted(root.rglob("*.md"))]
    ours, meta = load_tokenizer(), Tokenizer(default_tokenizer_model_path())
    ours_best = meta_best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        ours_ids = ours(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        ours_best = min(ours_best, time.perf_counter() - start)
        start = time.perf_counter()
        meta_ids = [meta.encode(text, bos=False, eos=False) for text in texts]
        meta_best = min(meta_best, time.perf_counter() - start)
    assert ours_ids == meta_ids, "ids differ from Meta's"
    print(
        f"encode: {len(texts)} texts, {sum(map(len, texts))} chars, {sum(map(len, meta_ids))} tokens", file=sys.stderr
    )
    return ours_best, meta_best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["load"], help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache_dir)
        return
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cold.append(load_seconds("load", cache))  # empty cache: converts and writes tokenizer.json
            warm.append(load_seconds("load", cache))  # same cache: reads tokenizer.json
    ours_encode, meta_encode = encode_benchmark(args.repeats)
    results = [
        ("tokenizer_load", "seconds, load_tokenizer() warm cache vs converting", min(warm), min(cold), "<= 0.5"),
        (
            "tokenizer_encode",
            "seconds to encode llama-models sources, ours vs Meta tiktoken",
            ours_encode,
            meta_encode,
            "<= 1.0",
        ),
    ]
    for benchmark, metric, ours, anchor, goal in results:
        print(
            json.dumps(
                {
                    "benchmark": benchmark,
                    "metric": metric,
                    "ours": round(ours, 4),
                    "anchor": round(anchor, 4),
                    "ratio": round(ours / anchor, 3),
                    "goal": goal,
                }
            )
        )


if __name__ == "__main__":
    main()
