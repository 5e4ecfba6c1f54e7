"""Curation memory: peak memory per task of the sharded stages stays flat while the corpus grows; the one-process
dedup of before (every document of the corpus in one task) grows with it.

The corpus is the embedded sample's documents replicated 1x, 4x and 16x with perturbations, so that every dedup has
work: every fifth page of a replica is a newer capture of the same URL (URL dedup), two thirds of the pages change
one word in fifty (near-duplicates for MinHash), the rest change a third of their words (new documents). Each
replica of each sample file is one JSONL input file. Every scale runs the full recipe (``recipes/data/sample.yaml``)
with the same number of tasks (``--tasks``) and line-dedup buckets of ``--bucket-size`` documents (the paper's unit
of line-dedup memory [3.1.1], scaled to the sample).

Each task runs in its own process, forked from this one after the imports (so every task starts from the same
baseline), through datatrove's local executor (``local_tasks=1``); its peak RSS is the child's ``ru_maxrss``
(``os.wait4``). The anchor is the one-process dedup of before (URL dedup, MinHash, line dedup over all of
``filtered/`` in one process, :class:`data.dedup_url.UrlDeduplicator` and friends), measured the same way.

    python benchmarks/curate_memory.py [--scales 1 4 16 --tasks 4]

Prints one JSON line per scale, then the result: {"benchmark", "metric", "ours", "anchor", "ratio", "goal"} where
ours and anchor are the growth of the peak task memory from the smallest to the largest scale (1.0 = flat).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "data" / "sample.yaml"
_TEXT_BETWEEN_TAGS = re.compile(r">([^<]+)<")


def _perturb(text: str, html: bool, rng: random.Random, rate: float) -> str:
    """Replace a ``rate`` share of the words (only between tags in HTML, so pages still parse)."""

    def words(segment: str) -> str:
        return " ".join(w if rng.random() > rate else f"{w[::-1]}x" for w in segment.split(" "))

    if html:
        return _TEXT_BETWEEN_TAGS.sub(lambda m: ">" + words(m.group(1)) + "<", text)
    return words(text)


def build_corpus(folder: Path, scale: int) -> int:
    """``scale`` perturbed replicas of the sample's documents, one JSONL file per replica and sample file."""
    from data.readers import InputReader, ReaderConfig, list_input_files

    folder.mkdir(parents=True)
    n = 0
    for source in list_input_files([str(ROOT / "data" / "sample")]):
        docs = list(InputReader(ReaderConfig(paths=[source])).run())
        for replica in range(scale):
            rng = random.Random(f"{replica}-{source}")
            with (folder / f"{replica:03d}_{Path(source).name.split('.')[0]}.jsonl").open("w") as f:
                for i, doc in enumerate(docs):
                    meta, html = doc.metadata, doc.metadata.get("format") == "html"
                    text, url, date = doc.text, meta.get("url", ""), meta.get("date", "")
                    if replica:
                        if i % 5 == 0 and url:
                            date = f"{2024 + replica // 12}-{replica % 12 + 1:02d}-01T00:00:00Z"  # a newer capture
                        elif url:
                            url = f"{url}?replica={replica}"
                        text = _perturb(text, html, rng, 0.02 if i % 3 else 0.33)
                    row = {
                        "id": f"{replica}-{doc.id}",
                        "text": text,
                        "url": url,
                        "date": date,
                        "format": meta["format"],
                    }
                    row.update({k: meta[k] for k in ("lang", "category") if k in meta})
                    f.write(json.dumps(row) + "\n")
                    n += 1
    return n


def peak_rss_mb(run) -> float:
    """Run ``run()`` in a forked child; its peak resident memory in MB."""
    pid = os.fork()
    if pid == 0:  # the child: one task, then out without running the parent's cleanup
        code = 1
        try:
            run()
            code = 0
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the measured task failed (status {status})")
    return usage.ru_maxrss / 1024


def run_scale(work: Path, scale: int, tasks: int, bucket_size: int) -> dict:
    from data.config import load_config
    from data.dedup_line import LineDeduplicator
    from data.dedup_minhash import MinHashDeduplicator
    from data.dedup_url import UrlDeduplicator
    from data.executors import make_executor
    from data.fingerprint import check_curate_run
    from data.pipeline import FILTERED, curate_stages
    from data.readers import list_input_files
    from data.stage_io import parts, read_jsonl_gz

    corpus, out = work / f"corpus{scale}", work / f"out{scale}"
    documents = build_corpus(corpus, scale)
    sets = [f"output_dir={out}", f"reader.paths=[{corpus}]", f"tasks={tasks}", f"line_dedup.bucket_size={bucket_size}"]
    config = load_config(RECIPE, sets)
    check_curate_run(config, list_input_files(config.reader.paths))
    peaks: dict[str, float] = {}
    for stage in curate_stages(config):
        for rank in range(stage.tasks):
            one = load_config(RECIPE, [*sets, f"executor.options={{local_tasks: 1, local_rank_offset: {rank}}}"])
            task_stage = next(s for s in curate_stages(one) if s.name == stage.name)
            mb = peak_rss_mb(lambda c=one, s=task_stage: make_executor(c, s).run())
            peaks[stage.name] = max(peaks.get(stage.name, 0.0), round(mb, 1))

    def in_memory_dedup() -> None:
        docs = [d for p in parts(out / FILTERED) for d in read_jsonl_gz(p)]
        kept = UrlDeduplicator(config.url_dedup).run(docs)
        kept = MinHashDeduplicator(config.minhash).run(kept)
        for _ in LineDeduplicator(config.line_dedup).run(kept):
            pass

    report = json.loads((out / "report.json").read_text())
    return {
        "scale": scale,
        "input_documents": documents,
        "kept_documents": report["kept_documents"],
        "peak_task_mb": max(peaks.values()),
        "peak_dedup_task_mb": max(v for k, v in peaks.items() if k != "filter"),
        "in_memory_dedup_mb": round(peak_rss_mb(in_memory_dedup), 1),
        "peak_mb_per_stage": peaks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--bucket-size", type=int, default=250, help="line-dedup bucket (documents)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from loguru import logger as loguru_logger

    import data.pipeline  # noqa: F401 - imported before the forks, so every task starts from the same baseline

    loguru_logger.remove()
    os.environ["TQDM_DISABLE"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_scale(Path(tmp), scale, args.tasks, args.bucket_size) for scale in args.scales]
    for r in results:
        print(json.dumps(r))
    first, last = results[0], results[-1]
    ours = last["peak_dedup_task_mb"] / first["peak_dedup_task_mb"]
    anchor = last["in_memory_dedup_mb"] / first["in_memory_dedup_mb"]
    result = {
        "benchmark": "curate_memory",
        "metric": f"peak task RSS growth {first['scale']}x -> {last['scale']}x corpus ({args.tasks} tasks)",
        "ours": round(ours, 3),
        "anchor": round(anchor, 3),
        "ratio": round(ours / anchor, 3),
        "goal": "<= 1.0",
        "ours_mb": [r["peak_dedup_task_mb"] for r in results],
        "anchor_mb": [r["in_memory_dedup_mb"] for r in results],
        "filter_task_mb": [r["peak_mb_per_stage"]["filter"] for r in results],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
