"""Issue 16: the sharded dedup stages keep the documents the one-process reference steps keep, whatever the number of
tasks, and the URL (newest capture wins) and line (> 6 repeats per bucket) rules hold across task boundaries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from datatrove.data import Document

from data.config import load_config
from data.dedup_line import LineDeduplicator
from data.dedup_minhash import MinHashDeduplicator
from data.dedup_url import UrlDeduplicator
from data.executors import make_executor
from data.pipeline import DEDUPED, FILTERED, curate_stages
from data.stage_io import parts, read_jsonl_gz, write_jsonl_gz
from tests.data.test_readers import SAMPLE

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "data" / "sample.yaml"


def run_dedup_stages(config) -> list[Document]:
    """Every stage after ``filter`` up to ``dedup`` on datatrove's local executor; the kept documents in order."""
    for stage in curate_stages(config)[1:]:
        make_executor(config, stage).run()
        if stage.name == "dedup":
            break
    return [d for p in parts(Path(config.output_dir) / DEDUPED) for d in read_jsonl_gz(p)]


@pytest.fixture(scope="module")
def filtered_sample(tmp_path_factory) -> Path:
    """Stage 1 (``filter``) on the embedded sample, once: its four parts are what the dedup stages read."""
    out = tmp_path_factory.mktemp("sharded") / "stage1"
    config = load_config(RECIPE, [f"output_dir={out}", f"reader.paths=[{SAMPLE}]"])
    make_executor(config, curate_stages(config)[0]).run()
    return out / FILTERED


@pytest.mark.parametrize("tasks", [1, 2, 4])
def test_sharded_dedup_keeps_what_the_in_memory_steps_keep(filtered_sample, tmp_path, tasks):
    # Buckets of 40 documents with at most 2 repeats: line dedup has work, and buckets straddle task boundaries.
    sets = ["line_dedup.bucket_size=40", "line_dedup.max_repeats=2"]
    out = tmp_path / "run"
    shutil.copytree(filtered_sample, out / FILTERED)
    config = load_config(RECIPE, [f"output_dir={out}", f"reader.paths=[{SAMPLE}]", f"tasks={tasks}", *sets])
    docs = [d for p in parts(filtered_sample) for d in read_jsonl_gz(p)]
    reference = UrlDeduplicator(config.url_dedup).run(docs)
    reference = MinHashDeduplicator(config.minhash).run(reference)
    line_step = LineDeduplicator(config.line_dedup)
    reference = list(line_step.run(reference))
    kept = run_dedup_stages(config)
    assert [(d.id, d.text) for d in kept] == [(d.id, d.text) for d in reference]
    assert len(docs) - len(reference) >= 4 and line_step.stats["removed_lines"].total > 0  # every rule had work


def _write_parts(folder: Path, tasks_docs: list[list[Document]]) -> None:
    for i, docs in enumerate(tasks_docs):
        write_jsonl_gz(folder / f"{i:05d}.jsonl.gz", docs)


def _config(out: Path, tasks: int, *sets: str):
    return load_config(RECIPE, [f"output_dir={out}", f"reader.paths=[{out / FILTERED}]", f"tasks={tasks}", *sets])


def _text(i: int) -> str:
    """A line of its own (letters, not digits: line dedup reads every digit as 0)."""
    word = "".join(chr(ord("a") + int(c)) for c in str(i))
    return f"Page {word} has its own words: " + " ".join(f"{word}q{chr(ord('a') + k)}" for k in range(26))


def test_newest_capture_wins_across_tasks(tmp_path):
    """Captures of one URL read by different tasks: the newest survives wherever it is; a tie keeps the first."""
    page = "https://example.org/docs/page"

    def capture(id_: str, url: str, date: str) -> Document:
        return Document(text=_text(len(id_) + ord(id_[-1])), id=id_, metadata={"url": url, "date": date})

    _write_parts(
        tmp_path / FILTERED,
        [
            [capture("old", page, "2021-01-01T00:00:00Z"), capture("tie-first", "https://t.org/a", "2023-01-01")],
            [capture("newest", "http://www.example.org/docs/page/", "2024-05-01T00:00:00Z")],
            [
                capture("mid", page + "#top", "2022-01-01T00:00:00Z"),
                capture("tie-second", "https://t.org/a/", "2023-01-01"),
            ],
        ],
    )
    sets = ["minhash.enabled=false", "line_dedup.enabled=false", "url_dedup.buckets=2"]
    kept = run_dedup_stages(_config(tmp_path, 3, *sets))
    assert [d.id for d in kept] == ["tie-first", "newest"]


def test_lines_repeated_more_than_six_times_per_bucket_go_across_tasks(tmp_path):
    """A line in 7 documents spread over 3 tasks goes everywhere; one in 6 stays; one in 4 + 4 documents of two
    buckets stays (the paper counts per bucket [3.1.1])."""
    seven, six, split = "Accept cookies to continue", "Share this page on social media", "Back to the top"
    docs = []
    for i in range(20):
        lines = [_text(i)]
        if i < 7:
            lines.append(seven)
        if 7 <= i < 13:
            lines.append(six)
        if 6 <= i < 10 or 10 <= i < 14:  # 4 in bucket 0 (documents 0-9), 4 in bucket 1 (10-19)
            lines.append(split)
        docs.append(Document(text="\n".join(lines), id=f"d{i}", metadata={"lang": "en"}))
    _write_parts(tmp_path / FILTERED, [docs[:5], docs[5:11], docs[11:]])
    sets = ["minhash.enabled=false", "url_dedup.enabled=false", "line_dedup.bucket_size=10", "line_dedup.min_chars=5"]
    kept = run_dedup_stages(_config(tmp_path, 3, *sets, "line_dedup.partitions=2"))
    assert len(kept) == 20
    assert not any(seven in d.text for d in kept)
    assert sum(six in d.text for d in kept) == 6
    assert sum(split in d.text for d in kept) == 8
    reference = list(LineDeduplicator(_config(tmp_path, 1, *sets).line_dedup).run(docs))
    assert [d.text for d in kept] == [d.text for d in reference]
