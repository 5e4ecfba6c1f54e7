"""The curation recipe as datatrove stages, every one sharded over tasks and resumable [3.1].

Each stage is a datatrove pipeline run by the executor the recipe names (:mod:`data.executors`: local processes,
Slurm or Ray); its per-task completion markers and statistics are datatrove's, in ``<output_dir>/logs/<stage>/``.
``tasks`` (the recipe) is the number of tasks of every stage that reads a share of the documents; the other stages
have one task per bucket or partition. In order:

1. ``filter`` (one task per input file): read, URL block lists, extraction, domain tag, language ID, PII, heuristics
   -> ``filtered/NNNNN.jsonl.gz``;
2. ``url_keys``, ``url_newest``: URL dedup by URL-hash buckets (newest capture wins) [3.1.1];
3. ``minhash_signatures``, ``minhash_buckets``, ``minhash_clusters``: global MinHash dedup [3.1.1];
4. ``line_hashes``, ``line_counts``: CCNet line dedup per bucket of ``line_dedup.bucket_size`` documents [3.1.1];
5. ``dedup`` (``tasks``): applies the three dedups, model-based quality, knowledge topics -> ``deduped/``;
6. ``tokenize``, ``pack``, ``manifest``: topic downsampling, Llama 3 tokens, the mix planned over every task's
   tokens and packed per task -> ``shards/`` with one ``manifest.json`` [3.1.2];
7. ``report``: ``report.json`` and ``report.png`` from the statistics of every stage.

A document's identity in the dedup stages is (task, position in its share); shares are contiguous runs of the
filtered parts, so tasks in order are the input order, and the kept documents are those of the one-process
reference steps (:class:`data.dedup_url.UrlDeduplicator` and friends) whatever ``tasks`` is. Every file a task
writes is written atomically and deterministically, so a killed run rerun gives byte-identical outputs. A rerun
with another recipe or other input contents is refused (:mod:`data.fingerprint`), and a run where no document
survives ``filter`` or ``dedup`` stops with one line naming the step that dropped them all (:mod:`data.survival`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from data.config import CurateConfig
from data.dedup_line import LineDedupFilter, LineHashWriter, RepeatedLineFinder
from data.dedup_minhash import FirstOfClusterWriter, MinHashDedupFilter, SignatureWriter, datatrove_config
from data.dedup_url import NewestCaptureFinder, UrlDedupFilter, UrlKeyWriter
from data.domains import DomainTagger
from data.extract import HtmlExtractor
from data.heuristics import HeuristicFilter
from data.langid import LanguageFilter
from data.pii import PiiFilter
from data.quality import QualityFilter
from data.readers import InputReader, list_input_files
from data.shards import ManifestWriter, ShardPacker, TokenWriter
from data.stage_io import CountedFilter, PartWriter, ShareReader
from data.url_filter import UrlBlocklistFilter

logger = logging.getLogger(__name__)
FILTERED, DEDUPED, SHARDS, WORK = "filtered", "deduped", "shards", "work"


def per_document_steps(config: CurateConfig) -> list:
    """Stage-1 filters in the order they run."""
    return [
        UrlBlocklistFilter(config.url_filter),
        HtmlExtractor(config.extract),
        DomainTagger(config.domains),
        LanguageFilter(config.langid),
        PiiFilter(config.pii),
        HeuristicFilter(config.heuristics),
    ]


def _topic_kept(doc: Document, topic_keep: dict[str, float]) -> bool:
    """Deterministic downsampling of over-represented topics: keep a stable hash fraction of each topic."""
    keep = topic_keep.get(str(doc.metadata.get("topic", "")), 1.0)
    digest = int.from_bytes(hashlib.blake2b(doc.id.encode(), digest_size=8).digest(), "little")
    return digest / 2**64 < keep


class TopicDownsampler:
    """``mix.topic_keep`` as a counted filter (``topic_downsampled``) [3.1.2]."""

    def __init__(self, topic_keep: dict[str, float]):
        self.topic_keep = topic_keep

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return True if _topic_kept(doc, self.topic_keep) else (False, "topic_downsampled")


class TopicTagger(PipelineStep):
    """Tags knowledge topics [3.1.2] on the task's documents, a batch at a time."""

    name = "TopicTagger"
    type = "🏷 - TAGGER"

    def __init__(self, config, batch_size: int = 256):
        super().__init__()
        self.config, self.batch_size = config, batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if not self.config.enabled:
            yield from data
            return
        from data.topics import TopicClassifier

        classifier, batch = TopicClassifier(self.config), []
        for doc in data:
            batch.append(doc)
            if len(batch) == self.batch_size:
                classifier.tag(batch)
                yield from batch
                batch = []
        if batch:
            classifier.tag(batch)
            yield from batch


class ReportWriter(PipelineStep):
    """One task: ``report.json`` and ``report.png`` (:mod:`data.report`)."""

    name = "ReportWriter"
    type = "📊 - STATS"

    def __init__(self, config: CurateConfig):
        super().__init__()
        self.config = config

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from data.report import build_report, write_report

        write_report(build_report(self.config), self.config.output_dir)
        yield from ()


@dataclass
class Stage:
    """One datatrove pipeline and its task count; ``logs/<name>`` holds its markers and statistics."""

    name: str
    pipeline: list
    tasks: int


def curate_stages(config: CurateConfig) -> list[Stage]:
    """Every stage of the recipe, in the order they run (each reads only what the stages before wrote)."""
    root = Path(config.output_dir)
    work = root / WORK
    tasks = config.tasks
    files = list_input_files(config.reader.paths)
    filtered = str(root / FILTERED)

    def replay(minhash: bool = False, lines: bool = False) -> list:
        """The task's share of the filtered documents with the dedup decisions already taken applied."""
        steps: list = [ShareReader(filtered)]
        if config.url_dedup.enabled:
            steps.append(CountedFilter(UrlDedupFilter(str(work / "url_drops"))))
        if minhash and config.minhash.enabled:
            steps.append(CountedFilter(MinHashDedupFilter(str(work / "minhash_remove"))))
        if lines and config.line_dedup.enabled:
            steps.append(
                CountedFilter(
                    LineDedupFilter(str(work / "line_hashes"), str(work / "repeated_lines"), config.line_dedup)
                )
            )
        return steps

    steps = [CountedFilter(step) for step in per_document_steps(config)]
    stages = [Stage("filter", [InputReader(config.reader, files), *steps, PartWriter(filtered)], len(files))]
    if config.url_dedup.enabled:
        stages += [
            Stage("url_keys", [ShareReader(filtered), UrlKeyWriter(str(work / "url_keys"), config.url_dedup)], tasks),
            Stage(
                "url_newest",
                [NewestCaptureFinder(str(work / "url_keys"), str(work / "url_drops"))],
                config.url_dedup.buckets,
            ),
        ]
    if config.minhash.enabled:
        from datatrove.pipeline.dedup import MinhashDedupBuckets

        stages += [
            Stage("minhash_signatures", [*replay(), SignatureWriter(str(work / "signatures"), config.minhash)], tasks),
            Stage(
                "minhash_buckets",
                [
                    MinhashDedupBuckets(
                        str(work / "signatures"), str(work / "minhash_dups"), config=datatrove_config(config.minhash)
                    )
                ],
                config.minhash.bands,
            ),
            Stage(
                "minhash_clusters", [FirstOfClusterWriter(str(work / "minhash_dups"), str(work / "minhash_remove"))], 1
            ),
        ]
    if config.line_dedup.enabled:
        stages += [
            Stage(
                "line_hashes",
                [*replay(minhash=True), LineHashWriter(str(work / "line_hashes"), config.line_dedup)],
                tasks,
            ),
            Stage(
                "line_counts",
                [RepeatedLineFinder(str(work / "line_hashes"), str(work / "repeated_lines"), config.line_dedup)],
                config.line_dedup.partitions,
            ),
        ]
    stages += [
        Stage(
            "dedup",
            [
                *replay(minhash=True, lines=True),
                CountedFilter(QualityFilter(config.quality)),
                TopicTagger(config.topics),
                PartWriter(root / DEDUPED),
            ],
            tasks,
        ),
        Stage(
            "tokenize",
            [
                ShareReader(root / DEDUPED),
                CountedFilter(TopicDownsampler(config.mix.topic_keep)),
                TokenWriter(str(work / "tokens"), config.tokenizer, config.mix, config.shards),
            ],
            tasks,
        ),
        Stage(
            "pack",
            [
                ShardPacker(
                    str(work / "tokens"), str(root / SHARDS), str(work / "shard_parts"), config.mix, config.shards
                )
            ],
            tasks,
        ),
        Stage(
            "manifest",
            [
                ManifestWriter(
                    str(work / "tokens"), str(work / "shard_parts"), str(root / SHARDS), config.mix, config.shards
                )
            ],
            1,
        ),
        Stage("report", [ReportWriter(config)], 1),
    ]
    return stages


def curate(config: CurateConfig) -> dict | None:
    """Run (or resume) every stage on the recipe's executor; returns the report, or None when the stages were
    submitted to a cluster (Slurm, Ray: the report is the chain's last stage)."""
    import json

    from data.executors import run_stages
    from data.fingerprint import check_curate_run

    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    check_curate_run(config, list_input_files(config.reader.paths))
    if not run_stages(config, curate_stages(config)):
        return None
    return json.loads((Path(config.output_dir) / "report.json").read_text())
