"""``hf-llama3 curate --config recipes/data/sample.yaml [--set key=value ...]``: run or resume curation."""

from __future__ import annotations

import argparse
import json
import logging

from data.config import CurateConfig, load_config
from hf_llama3.output_lock import output_lock
from hf_llama3.recipe_loader import describe


def main(argv: list[str] | None = None) -> int:
    """Run the curation pipeline; prints the report's summary as one JSON line."""
    parser = argparse.ArgumentParser(
        prog="hf-llama3 curate",
        description="Curate raw WARC/HTML/JSONL/parquet into tokenized, mixed training shards (Llama 3 paper, 3.1). "
        "Rerunning the same command resumes where a previous run stopped.",
        epilog=describe(CurateConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/data/sample.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key, e.g. mix.seed=3"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, args.set)
    # One run per output folder: a second `curate` into it would race the first's shards and temp files.
    with output_lock(config.output_dir):
        return _run(config)


def _run(config: CurateConfig) -> int:
    """Run every stage on the recipe's executor and print the summary line."""
    from data.pipeline import curate

    report = curate(config)
    if report is None:  # submitted to Slurm / Ray: the chain's last stage writes the report
        summary = {
            "output_dir": config.output_dir,
            "executor": config.executor.kind,
            "logs": f"{config.output_dir}/logs",
        }
        print(json.dumps(summary))
        return 0
    summary = {
        "output_dir": config.output_dir,
        "kept_documents": report["kept_documents"],
        "shard_tokens": report["shards"]["tokens"],
        "sequences": report["shards"]["sequences"],
        "mix": {c: v.get("actual_weight") for c, v in report["categories"].items() if "actual_weight" in v},
        "report": f"{config.output_dir}/report.json",
    }
    print(json.dumps(summary))
    return 0
