"""The curation runner: three resumable stages from raw files to training shards [3.1].

1. ``filtered/``: one task per input file (``workers`` processes): read, URL block lists, extraction,
   domain tag, language ID, PII, heuristics. Each task writes ``NNNNN.jsonl.gz`` then ``NNNNN.stats.json``
   (its completion marker), both through temporary names.
2. ``deduped/``: over all stage-1 output in file order: URL dedup (newest crawl), global MinHash, CCNet
   line dedup, model-based quality, knowledge topics; ``docs.jsonl.gz`` then ``stats.json``.
3. ``shards/``: mix categories, topic downsampling, Llama 3 tokenization, packing; ``manifest.json`` last.

A rerun skips every task whose marker exists and redoes the others from scratch, so a crash never
leaves half a result and the output is byte-identical to an uninterrupted run (every stage is
deterministic: fixed seeds, sorted inputs, gzip without timestamps). A rerun with another recipe or other input
contents is refused (``fingerprint.json``, :mod:`data.fingerprint`), and a run where no document survives a stage
stops with one line naming the step that dropped them all (:mod:`data.survival`). ``report.json`` and ``report.png``
sum up documents and characters kept and dropped per step and reason, languages and mix categories.

The per-document steps are datatrove ``BaseFilter``s, so the same blocks also run inside datatrove's executors
(local, Slurm, Ray): see :mod:`data.cluster`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from datatrove.data import Document
from tqdm.auto import tqdm

from data.config import CurateConfig
from data.dedup_line import LineDeduplicator
from data.dedup_minhash import MinHashDeduplicator
from data.dedup_url import UrlDeduplicator
from data.domains import DomainTagger
from data.extract import HtmlExtractor
from data.fingerprint import check_curate_run
from data.heuristics import HeuristicFilter
from data.langid import LanguageFilter
from data.mix import category_of
from data.pii import PiiFilter
from data.quality import QualityFilter
from data.readers import InputReader, list_input_files
from data.report import build_report, write_report
from data.shards import MANIFEST, write_shards
from data.survival import check_survivors
from data.topics import TopicClassifier
from data.url_filter import UrlBlocklistFilter
from hf_llama3.checkpoint_io import atomic_output_file

logger = logging.getLogger(__name__)
FILTERED, DEDUPED, SHARDS = "filtered", "deduped", "shards"


def per_document_steps(config: CurateConfig) -> list:
    """Stage-1 steps in the order they run."""
    return [
        UrlBlocklistFilter(config.url_filter),
        HtmlExtractor(config.extract),
        DomainTagger(config.domains),
        LanguageFilter(config.langid),
        PiiFilter(config.pii),
        HeuristicFilter(config.heuristics),
    ]


def _step_name(step) -> str:
    return type(step).__name__


class StepStats:
    """Documents and characters in, out and dropped per reason, for each step, in a JSON-able dict."""

    def __init__(self) -> None:
        self.steps: dict[str, dict] = {}

    def _entry(self, name: str) -> dict:
        return self.steps.setdefault(
            name, {"step": name, "in_docs": 0, "in_chars": 0, "out_docs": 0, "out_chars": 0, "dropped": {}}
        )

    def as_list(self) -> list[dict]:
        """The steps in the order they ran (JSON objects with sorted keys would lose that order)."""
        return list(self.steps.values())

    def seen(self, name: str, doc: Document) -> None:
        entry = self._entry(name)
        entry["in_docs"] += 1
        entry["in_chars"] += len(doc.text)

    def kept(self, name: str, doc: Document) -> None:
        entry = self._entry(name)
        entry["out_docs"] += 1
        entry["out_chars"] += len(doc.text)

    def dropped(self, name: str, reason: str, chars: int) -> None:
        slot = self._entry(name)["dropped"].setdefault(reason, {"docs": 0, "chars": 0})
        slot["docs"] += 1
        slot["chars"] += chars


def _write_jsonl_gz(path: Path, docs: Iterable[Document]) -> int:
    n = 0
    with (
        atomic_output_file(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f,
    ):
        for doc in docs:
            f.write(
                (
                    json.dumps(
                        {"id": doc.id, "text": doc.text, "metadata": doc.metadata}, sort_keys=True, ensure_ascii=False
                    )
                    + "\n"
                ).encode()
            )
            n += 1
    return n


def read_jsonl_gz(path: Path) -> Iterator[Document]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Document(text=row["text"], id=row["id"], metadata=row["metadata"])


def _write_json(path: Path, payload: dict) -> None:
    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False))


def run_file_task(config: CurateConfig, index: int, path: str, out_dir: str) -> str:
    """Stage 1 on one input file; returns the stats path (the task's completion marker)."""
    out = Path(out_dir)
    reader = InputReader(config.reader, files=[path])
    steps = per_document_steps(config)
    stats = StepStats()

    def kept_docs() -> Iterator[Document]:
        for doc in reader.read_file(path):
            for step in steps:
                name = _step_name(step)
                stats.seen(name, doc)
                chars = len(doc.text)
                try:
                    result = step.filter(doc)
                except Exception as err:  # one document a step cannot handle is dropped, counted and logged
                    logger.warning("%s failed on document %s of %s: %r", name, doc.id, path, err)
                    result = (False, "step_error")
                keep, reason = (result, None) if isinstance(result, bool) else result
                if not keep:
                    stats.dropped(name, reason or "dropped", chars)
                    break
                stats.kept(name, doc)
            else:
                yield doc

    n = _write_jsonl_gz(out / f"{index:05d}.jsonl.gz", kept_docs())
    skipped = {
        k.removeprefix("skipped_"): v.total for k, v in sorted(reader.stats.stats.items()) if k.startswith("skipped_")
    }
    payload = {"input": path, "kept": n, "reader_skipped": skipped, "steps": stats.as_list()}
    _write_json(out / f"{index:05d}.stats.json", payload)
    return str(out / f"{index:05d}.stats.json")


def _clean_temporaries(folder: Path) -> None:
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink()


def run_stage1(config: CurateConfig, files: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(out)
    todo = [(i, f) for i, f in enumerate(files) if not (out / f"{i:05d}.stats.json").exists()]
    if len(todo) < len(files):
        logger.info("stage 1: %d of %d input files already done, resuming", len(files) - len(todo), len(files))
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="filter", unit="file")
    if config.workers == 1:
        for i, f in todo:
            run_file_task(config, i, f, str(out))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for _ in pool.map(
                run_file_task, [config] * len(todo), [i for i, _ in todo], [f for _, f in todo], [str(out)] * len(todo)
            ):
                bar.update()
    bar.close()


def _counted(step, docs: list[Document], stats: StepStats, reason: str) -> list[Document]:
    """Run a whole-corpus step (dedup) and record what it dropped."""
    name = _step_name(step)
    for doc in docs:
        stats.seen(name, doc)
    chars_before = {id(d): len(d.text) for d in docs}
    kept = list(step.run(docs))
    kept_ids = {id(d) for d in kept}
    for doc in docs:
        if id(doc) not in kept_ids:
            stats.dropped(name, reason, chars_before[id(doc)])
    for doc in kept:
        stats.kept(name, doc)
    return kept


def run_stage2(config: CurateConfig, stage1: Path, n_files: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(out)
    if (out / "stats.json").exists():
        logger.info("stage 2: already done")
        return
    docs = [d for i in range(n_files) for d in read_jsonl_gz(stage1 / f"{i:05d}.jsonl.gz")]
    stats = StepStats()
    if config.url_dedup.enabled:
        docs = _counted(UrlDeduplicator(config.url_dedup), docs, stats, "older_crawl_of_url")
    if config.minhash.enabled:
        docs = _counted(MinHashDeduplicator(config.minhash), docs, stats, "minhash_duplicate")
    if config.line_dedup.enabled:
        line_step = LineDeduplicator(config.line_dedup)
        docs = _counted(line_step, docs, stats, "empty_after_line_dedup")
        # _entry, not steps[...]: a step that saw no document has no entry yet (finding 6 of issue 12).
        stats._entry(_step_name(line_step))["removed_lines"] = int(line_step.stats["removed_lines"].total)
    quality = QualityFilter(config.quality)
    kept = []
    for doc in tqdm(docs, desc="quality", unit="doc"):
        stats.seen("QualityFilter", doc)
        chars = len(doc.text)
        result = quality.filter(doc)
        if result is True:
            stats.kept("QualityFilter", doc)
            kept.append(doc)
        else:
            stats.dropped("QualityFilter", result[1], chars)
    if config.topics.enabled:
        TopicClassifier(config.topics).tag(kept)
    _write_jsonl_gz(out / "docs.jsonl.gz", kept)
    _write_json(out / "stats.json", {"kept": len(kept), "steps": stats.as_list()})


def _topic_kept(doc: Document, topic_keep: dict[str, float]) -> bool:
    """Deterministic downsampling of over-represented topics: keep a stable hash fraction of each topic."""
    keep = topic_keep.get(str(doc.metadata.get("topic", "")), 1.0)
    digest = int.from_bytes(hashlib.blake2b(doc.id.encode(), digest_size=8).digest(), "little")
    return digest / 2**64 < keep


def run_stage3(config: CurateConfig, stage2: Path, out: Path, tokenizer=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(out)
    if (out / MANIFEST).exists():
        logger.info("stage 3: already done")
        return json.loads((out / MANIFEST).read_text())
    docs = [d for d in read_jsonl_gz(stage2 / "docs.jsonl.gz") if _topic_kept(d, config.mix.topic_keep)]
    if tokenizer is None:
        from hf_llama3 import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer)
    categories = [category_of(d.metadata, config.mix) for d in docs]
    with tqdm(total=len(docs), desc="tokenize", unit="doc") as bar:
        return write_shards(
            [d.text for d in docs], categories, tokenizer, out, config.mix, config.shards, progress=bar
        )


def curate(config: CurateConfig, tokenizer=None) -> dict:
    """Run (or resume) the whole pipeline; returns the report."""
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    files = list_input_files(config.reader.paths)
    check_curate_run(config, files)  # a rerun resumes only the same recipe on the same input contents
    run_stage1(config, files, root / FILTERED)
    stage1 = [json.loads((root / FILTERED / f"{i:05d}.stats.json").read_text()) for i in range(len(files))]
    check_survivors("filter", sum(s["kept"] for s in stage1), [s["steps"] for s in stage1], str(root / FILTERED))
    run_stage2(config, root / FILTERED, len(files), root / DEDUPED)
    stage2 = json.loads((root / DEDUPED / "stats.json").read_text())
    check_survivors("dedup", stage2["kept"], [stage2["steps"]], str(root / DEDUPED / "stats.json"))
    manifest = run_stage3(config, root / DEDUPED, root / SHARDS, tokenizer)
    final_docs = read_jsonl_gz(root / DEDUPED / "docs.jsonl.gz")
    report = build_report(stage1, stage2, manifest, final_docs, config.mix)
    write_report(report, root)
    return report
