"""The curation recipe on datatrove's executors: local processes, Slurm or Ray [3.1].

``executor.kind`` in the recipe chooses how ``hf-llama3 curate`` runs. ``local`` (default) is our runner
(:mod:`data.pipeline`). ``datatrove-local``, ``slurm`` and ``ray`` build the same three stages as
datatrove pipelines chained with ``depends``, from the same recipe and the same steps:

1. ``[InputReader, url block list, extraction, domain, language, PII, heuristics, JsonlWriter]``, one task
   per input file;
2. ``[JsonlReader, URL dedup, MinHash, line dedup, quality, topics, JsonlWriter]``, one task (in-memory
   dedup; for corpora beyond one node's memory use :func:`data.dedup_minhash.datatrove_minhash_stages`);
3. ``[JsonlReader, ShardWriter]``, one task.

datatrove's executors give resumability (completed tasks are skipped on relaunch) and per-step stats in
``<output_dir>/logs/<stage>/stats.json``. With the same inputs, the shards equal our runner's.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data.config import CurateConfig, ExecutorConfig
from data.dedup_line import LineDeduplicator
from data.dedup_minhash import MinHashDeduplicator
from data.dedup_url import UrlDeduplicator
from data.mix import category_of
from data.pipeline import DEDUPED, FILTERED, SHARDS, per_document_steps
from data.quality import QualityFilter
from data.readers import InputReader, list_input_files
from hf_llama3.checkpoint_io import atomic_output_file


class TopicTagger(PipelineStep):
    """Tags knowledge topics on the whole (deduplicated) corpus, in batches."""

    name = "🗂 topics"
    type = "🏷 - TAGGER"

    def __init__(self, config):
        super().__init__()
        self.config = config

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from data.topics import TopicClassifier

        docs = list(data)
        if self.config.enabled:
            TopicClassifier(self.config).tag(docs)
        yield from docs


class ShardWriter(PipelineStep):
    """Collects the curated documents and writes the mixed, packed shards (one task)."""

    name = "📦 shards"
    type = "💽 - WRITER"

    def __init__(self, config: CurateConfig):
        super().__init__()
        self.config = config

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from data.pipeline import _topic_kept
        from data.shards import write_shards
        from hf_llama3 import load_tokenizer

        docs = [d for d in data if _topic_kept(d, self.config.mix.topic_keep)]
        categories = [category_of(d.metadata, self.config.mix) for d in docs]
        tokenizer = load_tokenizer(self.config.tokenizer)
        manifest = write_shards(
            [d.text for d in docs],
            categories,
            tokenizer,
            Path(self.config.output_dir) / SHARDS,
            self.config.mix,
            self.config.shards,
        )
        self.stat_update("sequences", value=manifest["sequences"])
        yield from ()


def datatrove_stages(config: CurateConfig) -> list[tuple[list, int]]:
    """The three stages as (datatrove pipeline, task count) pairs."""
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    root = Path(config.output_dir)
    files = list_input_files(config.reader.paths)
    stage2 = [JsonlReader(str(root / FILTERED), glob_pattern="*.jsonl.gz")]
    if config.url_dedup.enabled:
        stage2.append(UrlDeduplicator(config.url_dedup))
    if config.minhash.enabled:
        stage2.append(MinHashDeduplicator(config.minhash))
    if config.line_dedup.enabled:
        stage2.append(LineDeduplicator(config.line_dedup))
    stage2 += [
        QualityFilter(config.quality),
        TopicTagger(config.topics),
        JsonlWriter(str(root / DEDUPED), output_filename="docs.jsonl.gz"),
    ]
    return [
        (
            [
                InputReader(config.reader, files),
                *per_document_steps(config),
                JsonlWriter(str(root / FILTERED), output_filename="${rank}.jsonl.gz"),
            ],
            len(files),
        ),
        (stage2, 1),
        ([JsonlReader(str(root / DEDUPED), glob_pattern="*.jsonl.gz"), ShardWriter(config)], 1),
    ]


def build_executors(config: CurateConfig, executor: ExecutorConfig) -> list:
    """One datatrove executor per stage, each depending on the previous one."""
    logs = Path(config.output_dir) / "logs"
    executors = []
    for name, (pipeline, tasks) in zip(("filter", "dedup", "shards"), datatrove_stages(config)):
        common = {"pipeline": pipeline, "tasks": tasks, "logging_dir": str(logs / name)}
        if executors:
            common["depends"] = executors[-1]
        if executor.kind == "datatrove-local":
            from datatrove.executor import LocalPipelineExecutor

            executors.append(LocalPipelineExecutor(workers=min(tasks, config.workers), **common, **executor.options))
        elif executor.kind == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            executors.append(SlurmPipelineExecutor(job_name=f"curate-{name}", **common, **executor.options))
        else:
            from datatrove.executor import RayPipelineExecutor

            executors.append(RayPipelineExecutor(**common, **executor.options))
    return executors


def run_on_datatrove(config: CurateConfig, executor: ExecutorConfig) -> dict | None:
    """Launch the chain. Locally it runs to the end and writes ``report.json`` (returned); on Slurm/Ray it
    submits the dependent jobs and returns None (build the report later with :func:`datatrove_report`).

    datatrove skips tasks its logs mark done, so the run fingerprint guards these reruns as it does the local ones.
    """
    from data.fingerprint import check_curate_run

    check_curate_run(config, list_input_files(config.reader.paths))
    build_executors(config, executor)[-1].run()
    if executor.kind != "datatrove-local":
        return None
    return datatrove_report(config)


def datatrove_report(config: CurateConfig) -> dict:
    """``report.json`` from datatrove's per-stage ``stats.json`` (documents per step and drop reason) and the
    shard manifest (tokens per mix category); written atomically in ``output_dir``."""
    import json

    root = Path(config.output_dir)
    steps = []
    for stage in ("filter", "dedup", "shards"):
        for entry in json.loads((root / "logs" / stage / "stats.json").read_text()):
            counts = {k: (v["total"] if isinstance(v, dict) else v) for k, v in entry["stats"].items()}
            step = {"step": entry["name"], "stage": stage, "in_docs": counts.get("total", counts.get("documents", 0))}
            step["out_docs"] = counts.get("forwarded", step["in_docs"])
            step["dropped"] = {
                k.removeprefix("dropped_"): v for k, v in sorted(counts.items()) if k.startswith("dropped_")
            }
            step["skipped"] = {
                k.removeprefix("skipped_"): v for k, v in sorted(counts.items()) if k.startswith("skipped_")
            }
            step["languages"] = {
                k.removeprefix("lang_"): v for k, v in sorted(counts.items()) if k.startswith("lang_")
            }
            steps.append(step)
    manifest = json.loads((root / SHARDS / "manifest.json").read_text())
    total = sum(manifest["tokens_per_category"].values())
    report = {
        "executor": config.executor.kind,
        "steps": steps,
        "categories": {
            c: {
                "available_tokens": manifest["available_tokens"][c],
                "tokens_in_shards": n,
                "target_weight": manifest["target_weights"][c],
                "actual_weight": round(n / max(1, total), 6),
            }
            for c, n in sorted(manifest["tokens_per_category"].items())
        },
        "shards": {
            "sequences": manifest["sequences"],
            "seq_len": manifest["seq_len"],
            "tokens": total,
            "files": len(manifest["shards"]),
        },
    }
    with atomic_output_file(root / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False))
    return report
