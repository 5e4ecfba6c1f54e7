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


def run_on_datatrove(config: CurateConfig, executor: ExecutorConfig) -> None:
    """Launch the chain (locally it runs to the end; on Slurm it submits the three dependent jobs)."""
    build_executors(config, executor)[-1].run()
