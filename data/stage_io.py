"""What every sharded curation stage shares: the documents of a task, deterministic JSONL writing, counted filters.

A stage's input is a folder of ``NNNNN.jsonl.gz`` parts (one per task of the stage before). Task ``rank`` of
``world_size`` reads a contiguous run of those parts (:func:`share_of`), so the documents of task 0, then task 1,
... are the corpus in input order: the dedup stages key documents by ``(task, position in the task)`` and "first in
input order" means the same whatever the number of tasks.

:class:`CountedFilter` is the one place where per-step statistics are recorded, as datatrove stats (``total``,
``forwarded``, ``dropped_<reason>`` documents and ``chars_in``, ``chars_out``, ``chars_dropped_<reason>``
characters); :mod:`data.report` reads them back from each task's ``logs/<stage>/stats/NNNNN.json``.
Our own writer replaces datatrove's JsonlWriter because that one stamps the gzip header with the time and writes in
place: a killed-then-resumed run must produce the same bytes, and never leave half a part behind.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.stats import Stats

from hf_llama3.checkpoint_io import atomic_output_file

logger = logging.getLogger(__name__)


def write_jsonl_gz(path: Path, docs: Iterable[Document]) -> int:
    """Write documents as gzip JSONL (no timestamp in the header: same input, same bytes), atomically."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_output_file(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f,
    ):
        for doc in docs:
            row = {"id": doc.id, "text": doc.text, "metadata": doc.metadata}
            f.write((json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n").encode())
            n += 1
    return n


def read_jsonl_gz(path: Path) -> Iterator[Document]:
    """The documents of one part written by :func:`write_jsonl_gz`."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Document(text=row["text"], id=row["id"], metadata=row["metadata"])


def share_of(n_items: int, rank: int, world_size: int) -> range:
    """The contiguous items of task ``rank``: task 0 gets the first ones, so tasks in order are the input order."""
    return range(rank * n_items // world_size, (rank + 1) * n_items // world_size)


def parts(folder: str | Path) -> list[Path]:
    """The ``*.jsonl.gz`` parts of a stage output, in order."""
    return sorted(Path(folder).glob("*.jsonl.gz"))


class ShareReader(PipelineStep):
    """Streams the documents of this task's share of a folder of parts (one document in memory at a time)."""

    name = "ShareReader"
    type = "📖 - READER"

    def __init__(self, folder: str | Path):
        super().__init__()
        self.folder = str(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = parts(self.folder)
        for i in share_of(len(files), rank, world_size):
            for doc in read_jsonl_gz(files[i]):
                self.stat_update("documents")
                yield doc


class PartWriter(PipelineStep):
    """Writes the task's documents to ``<folder>/<rank>.jsonl.gz`` (atomically, byte-reproducibly)."""

    name = "PartWriter"
    type = "💽 - WRITER"

    def __init__(self, folder: str | Path):
        super().__init__()
        self.folder = str(folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        n = write_jsonl_gz(Path(self.folder) / f"{rank:05d}.jsonl.gz", data)
        self.stat_update("written", value=n)
        yield from ()


class CountedFilter(PipelineStep):
    """Runs a filter (``filter(doc) -> bool | (False, reason)``) and counts documents and characters per reason.

    A filter may have ``start(rank, world_size)`` (called once per task, to load its share of dedup results); its
    own ``stat_update`` calls land in the same entry (the two share one stats object). A document a filter raises
    on is dropped as ``step_error`` and logged: one pathological page does not stop a crawl.
    """

    type = "🔻 - FILTER"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.name = type(inner).__name__
        self.stats = Stats(self.name)  # the report's step name is the filter's class name
        if isinstance(inner, PipelineStep):
            inner.stats = self.stats

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if hasattr(self.inner, "start"):
            self.inner.start(rank, world_size)
        for doc in data:
            chars = len(doc.text)
            self.stat_update("total")
            self.stat_update("chars_in", value=chars)
            try:
                result = self.inner.filter(doc)
            except Exception as err:
                logger.warning("%s failed on document %s: %r", self.name, doc.id, err)
                result = (False, "step_error")
            keep, reason = (result, None) if isinstance(result, bool) else result
            if keep:
                self.stat_update("forwarded")
                self.stat_update("chars_out", value=len(doc.text))
                yield doc
            else:
                reason = reason or "dropped"
                self.stat_update(f"dropped_{reason}")
                self.stat_update(f"chars_dropped_{reason}", value=chars)
