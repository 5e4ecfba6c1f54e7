"""Readers on the embedded sample corpus and on bad input: every bad record is counted, none crashes the run."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.readers import InputReader, ReaderConfig, decode_page, list_input_files
from data.sample.build import warc_record

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def read(paths, **kwargs):
    reader = InputReader(ReaderConfig(paths=[str(p) for p in paths], **kwargs))
    docs = list(reader.run())
    return docs, {k: v.total for k, v in reader.stats.stats.items()}


def test_sample_warc_reads_every_page_and_counts_the_empty_one():
    docs, stats = read([SAMPLE / "web.warc.gz"])
    assert stats["skipped_empty_page"] == 1
    assert len(docs) == stats["documents"] > 100
    urls = [d.metadata["url"] for d in docs]
    assert "https://docs.example-stdlib.org/library/textwrap.html" in urls
    assert all(d.metadata["date"].startswith("20") for d in docs)
    # The Windows-1251 page declares its charset in <meta> only: decoded, not skipped.
    ru = next(d for d in docs if d.metadata["url"] == "https://ru.example-docs.org/textwrap")
    assert "Модуль textwrap" in ru.text


def test_damaged_warc_keeps_good_records_and_counts_the_truncated_one():
    docs, stats = read([SAMPLE / "damaged.warc.gz"])
    assert len(docs) == 2
    assert stats.get("skipped_truncated_record", 0) + stats.get("skipped_corrupt_file", 0) == 1


def test_jsonl_malformed_lines_are_counted(tmp_path):
    docs, stats = read([SAMPLE / "multilingual.jsonl"])
    assert stats["skipped_malformed_json"] == 2
    assert len(docs) == 48 and all(d.metadata["format"] == "text" for d in docs)


def test_parquet_and_gzip_jsonl_and_html_folder(tmp_path):
    docs, _ = read([SAMPLE / "code.parquet"])
    assert len(docs) == 104 and "def " in docs[0].text
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "hello world", "id": "x"}) + "\n")
        f.write(json.dumps({"text": 3}) + "\n")
        f.write('{"text": "lone \\ud800 surrogate"}\n')
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html><body><p>Hi there</p></body></html>")
    (tmp_path / "site" / "empty.html").write_bytes(b"   ")
    (tmp_path / "site" / "latin.html").write_bytes("<p>caf\xe9 sans charset</p>".encode("latin-1"))
    docs, stats = read([tmp_path])
    assert sorted(d.text for d in docs) == ["<html><body><p>Hi there</p></body></html>", "hello world"]
    assert stats["skipped_missing_text"] == 1
    assert stats["skipped_empty_page"] == 1
    assert stats["skipped_undecodable"] == 2  # latin.html and the surrogate row


def test_corrupt_files_are_counted_and_skipped(tmp_path):
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    rows = gzip.compress(b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(100)))
    (tmp_path / "cut.jsonl.gz").write_bytes(rows[: len(rows) // 2])
    (tmp_path / "ok.jsonl").write_text(json.dumps({"text": "still read"}) + "\n")
    docs, stats = read([tmp_path])
    assert docs[-1].text == "still read"
    assert stats["skipped_corrupt_file"] == 2


def test_non_html_warc_records_are_skipped(tmp_path):
    record = warc_record("http://a.example/x.pdf", "2023-01-01T00:00:00Z", b"%PDF-1.4 binary", "", "application/pdf")
    (tmp_path / "pdf.warc.gz").write_bytes(record)
    docs, stats = read([tmp_path])
    assert docs == [] and stats["skipped_not_html"] == 1


def test_oversized_pages_are_skipped(tmp_path):
    big = b"<html><body>" + b"<p>word</p>" * (50_000_000 // 11) + b"</body></html>"  # a 50 MB page
    (tmp_path / "big.html").write_bytes(big)
    (tmp_path / "big.warc.gz").write_bytes(warc_record("http://big.example/", "2023-01-01T00:00:00Z", big, "utf-8"))
    table = pa.Table.from_pylist([{"text": "x" * 2_000_000}, {"text": "fine"}])
    pq.write_table(table, tmp_path / "rows.parquet")
    docs, stats = read([tmp_path], max_page_bytes=1_000_000)
    assert [d.text for d in docs] == ["fine"]
    assert stats["skipped_page_too_large"] == 3


def test_bad_config_and_missing_paths_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"reader\.paths is empty"):
        ReaderConfig(paths=[])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_input_files([str(tmp_path / "nope")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no known suffix"):
        list_input_files([str(tmp_path / "notes.txt")])


def test_decode_page_prefers_utf8_then_declared_charset():
    assert decode_page("é".encode()) == "é"
    assert decode_page("é".encode("latin-1"), "iso-8859-1") == "é"
    assert decode_page(b"\xff\xfe\xfa") is None
