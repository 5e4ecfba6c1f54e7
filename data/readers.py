"""Readers: turn WARC (gzip), HTML folders, JSONL and parquet files into datatrove ``Document``s.

Every reader is tolerant of bad input: a record it cannot use (non-UTF-8 bytes with no usable charset,
a truncated WARC record, an empty or oversized page, a malformed JSONL line, an unreadable parquet file)
is counted under ``skipped_<reason>`` in the step's stats and skipped; the run goes on.

Documents carry the raw page in ``text`` (HTML for WARC/HTML inputs, already-clean text for JSONL/parquet
when ``metadata["format"] == "text"``) and ``url``, ``date`` (ISO 8601 crawl date), ``source`` in metadata.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

logger = logging.getLogger(__name__)

# File suffix -> reader kind.
SUFFIXES = {
    ".warc.gz": "warc",
    ".warc": "warc",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".parquet": "parquet",
}
_HTML_START = re.compile(r"\s*<(!doctype|html|head|body)\b", re.IGNORECASE)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.IGNORECASE)


@dataclass
class ReaderConfig:
    """Which files to read and the per-record limits.

    Args:
        paths: files or folders (folders are walked recursively, files sorted by path so every run and
            every worker sees the same order).
        max_page_bytes: pages larger than this are skipped as ``page_too_large``. The paper gives no
            number; 10 MB keeps almost every real page and bounds memory per document.
        text_key / id_key / url_key / date_key: field names for JSONL and parquet rows.
    """

    paths: list[str] = field(default_factory=list)
    max_page_bytes: int = 10_000_000

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {"max_page_bytes": {"min": 1}}
    text_key: str = "text"
    id_key: str = "id"
    url_key: str = "url"
    date_key: str = "date"

    def __post_init__(self) -> None:
        if isinstance(self.paths, str):
            self.paths = [self.paths]
        if not self.paths:
            raise ValueError(
                "reader.paths is empty: give at least one input file or folder (WARC, HTML, JSONL, parquet)."
            )
        if self.max_page_bytes <= 0:
            raise ValueError(f"reader.max_page_bytes must be > 0, got {self.max_page_bytes}.")


def file_kind(path: str | os.PathLike) -> str | None:
    """The reader kind for ``path`` from its suffix, or None if no reader handles it."""
    name = str(path).lower()
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def list_input_files(paths: list[str]) -> list[str]:
    """All readable input files under ``paths``, sorted; raises FileNotFoundError for a missing path."""
    files: list[str] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"input path {p!r} does not exist: check reader.paths in the config.")
        if path.is_dir():
            files += [str(f) for f in sorted(path.rglob("*")) if f.is_file() and file_kind(f)]
        elif file_kind(path):
            files.append(str(path))
        else:
            raise ValueError(f"input file {p!r} has no known suffix: use one of {sorted(SUFFIXES)}.")
    if not files:
        raise FileNotFoundError(f"no WARC/HTML/JSONL/parquet files found under {paths}.")
    return files


def decode_page(body: bytes, declared: str | None = None) -> str | None:
    """Decode HTML bytes: UTF-8 first, then the charset the HTTP header or a ``<meta>`` tag declares.

    Returns None when neither works (the caller counts the page as ``undecodable``): guessing a charset
    would put mojibake into the training data.
    """
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    candidates = [declared] if declared else []
    if match := _META_CHARSET.search(body[:4096]):
        candidates.append(match.group(1).decode("ascii"))
    for charset in candidates:
        if charset.lower().replace("-", "") in {"utf8"}:
            continue
        try:
            return body.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    return None


class InputReader(PipelineStep):
    """Reads every input file assigned to this rank (files[rank::world_size]) and yields its documents."""

    name = "📖 input reader"
    type = "📖 - READER"

    def __init__(self, config: ReaderConfig, files: list[str] | None = None):
        super().__init__()
        self.config = config
        self.files = files if files is not None else list_input_files(config.paths)

    def skip(self, reason: str) -> None:
        """Count one skipped record under ``skipped_<reason>``."""
        self.stat_update(f"skipped_{reason}")

    def read_file(self, path: str) -> Iterator[Document]:
        """Yield the documents of one file, counting skipped records."""
        kind = file_kind(path)
        reader = {
            "warc": self._read_warc,
            "html": self._read_html,
            "jsonl": self._read_jsonl,
            "parquet": self._read_parquet,
        }
        yield from reader[kind](path)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        for path in self.files[rank::world_size]:
            for doc in self.read_file(path):
                self.stat_update("documents")
                yield doc

    # -- one method per input format --------------------------------------------------------------------

    def _page(self, body: bytes, doc_id: str, url: str, date: str, source: str, charset: str | None = None):
        if not body.strip():
            self.skip("empty_page")
            return None
        if len(body) > self.config.max_page_bytes:
            self.skip("page_too_large")
            return None
        html = decode_page(body, charset)
        if html is None:
            self.skip("undecodable")
            return None
        return Document(text=html, id=doc_id, metadata={"url": url, "date": date, "source": source, "format": "html"})

    def _read_warc(self, path: str) -> Iterator[Document]:
        from fastwarc.warc import ArchiveIterator, WarcRecordType

        # fastwarc detects gzip (one member per record) by itself.
        try:
            with open(path, "rb") as stream:
                for record in ArchiveIterator(stream, record_types=WarcRecordType.response, parse_http=True):
                    ctype = (record.http_content_type or "text/html").lower()
                    if ctype not in {"text/html", "application/xhtml+xml"}:
                        self.skip("not_html")
                        continue
                    if record.content_length > self.config.max_page_bytes:
                        self.skip("page_too_large")
                        continue
                    body = record.reader.read()
                    if len(body) < record.content_length:
                        self.skip("truncated_record")
                        continue
                    url = record.headers.get("WARC-Target-URI", "")
                    date = record.headers.get("WARC-Date", "")
                    doc = self._page(body, record.record_id, url, date, path, record.http_charset)
                    if doc is not None:
                        yield doc
        except Exception as err:  # a corrupt gzip member ends the file, not the run
            logger.warning("WARC file %s is corrupt after some records (%s); skipping the rest of it", path, err)
            self.skip("corrupt_file")

    def _read_html(self, path: str) -> Iterator[Document]:
        if os.path.getsize(path) > self.config.max_page_bytes:
            self.skip("page_too_large")
            return
        body = Path(path).read_bytes()
        # An HTML folder has no crawl metadata: the path is the URL, the file time the crawl date.
        date = datetime.fromtimestamp(os.path.getmtime(path), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = self._page(body, path, Path(path).resolve().as_uri(), date, path)
        if doc is not None:
            yield doc

    def _row(self, row: dict, path: str, index: int) -> Document | None:
        cfg = self.config
        text = row.get(cfg.text_key)
        if not isinstance(text, str):
            self.skip("missing_text")
            return None
        if not text.strip():
            self.skip("empty_page")
            return None
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # lone surrogates ("\ud800" escapes are valid JSON): not text
            self.skip("undecodable")
            return None
        if size > cfg.max_page_bytes:
            self.skip("page_too_large")
            return None
        fmt = row.get("format") or ("html" if _HTML_START.match(text) else "text")
        meta = {
            "url": str(row.get(cfg.url_key) or ""),
            "date": str(row.get(cfg.date_key) or ""),
            "source": path,
            "format": fmt,
        }
        for key in ("lang", "category"):
            if key in row:
                meta[key] = row[key]
        return Document(text=text, id=str(row.get(cfg.id_key) or f"{path}#{index}"), metadata=meta)

    def _read_jsonl(self, path: str) -> Iterator[Document]:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                for index, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        self.skip("malformed_json")
                        continue
                    if not isinstance(row, dict):
                        self.skip("malformed_json")
                        continue
                    doc = self._row(row, path, index)
                    if doc is not None:
                        yield doc
        except (OSError, EOFError) as err:  # truncated gzip
            logger.warning("JSONL file %s is corrupt (%s); skipping the rest of it", path, err)
            self.skip("corrupt_file")

    def _read_parquet(self, path: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except Exception as err:
            logger.warning("parquet file %s is unreadable (%s); skipping it", path, err)
            self.skip("corrupt_file")
            return
        index = 0
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                doc = self._row(row, path, index)
                index += 1
                if doc is not None:
                    yield doc
