"""Curation throughput: our pipeline vs a stock datatrove FineWeb-style pipeline, on the same HTML corpus.

Both run in this process, one worker, on the same documents (the HTML pages of the embedded sample WARC,
repeated ``--copies`` times under distinct URLs, as JSONL), through the steps both pipelines have:

- ours:     InputReader -> UrlBlocklistFilter -> HtmlExtractor (resiliparse + DOM pre-pass) -> DomainTagger
            -> HeuristicFilter (Gopher repetition + quality, C4/FineWeb rules, dirty words, token KL)
- datatrove: JsonlReader -> URLFilter -> Trafilatura (favour_precision) -> GopherRepetitionFilter
            -> GopherQualityFilter -> C4QualityFilter -> FineWebQualityFilter

Language ID is left out of both (datatrove's LanguageFilter downloads its model at run time). Then MinHash
signatures on the extracted texts: ours (rensa, whitespace shingles, our banding) vs datatrove's stage 1
(``MinhashDedupSignature`` with its default English word tokenizer, spaCy), same 14x8 bands/rows.

    pip install -e ".[data-bench]"   # trafilatura, spaCy, tldextract, pyahocorasick for the datatrove side
    python benchmarks/curate.py [--copies 4 --repeats 3]

Prints the MinHash comparison as one JSON line, then the pipeline comparison as the last JSON line:
{"benchmark", "metric", "ours", "anchor", "ratio", "goal"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_corpus(path: Path, copies: int) -> int:
    """JSONL of the sample WARC's HTML pages, each repeated under ``copies`` distinct URLs."""
    from data.readers import InputReader, ReaderConfig

    pages = list(InputReader(ReaderConfig(paths=[str(ROOT / "data" / "sample" / "web.warc.gz")])).run())
    with path.open("w", encoding="utf-8") as f:
        for k in range(copies):
            for i, page in enumerate(pages):
                row = {
                    "id": f"{k}-{i}",
                    "text": page.text,
                    "url": f"{page.metadata['url']}?copy={k}",
                    "format": "html",
                }
                f.write(json.dumps(row) + "\n")
    return copies * len(pages)


def drain(pipeline) -> list:
    return list(pipeline)


def run_ours(corpus: Path) -> tuple[float, list[str]]:
    from data.domains import DomainTagger
    from data.extract import HtmlExtractor
    from data.heuristics import HeuristicFilter
    from data.readers import InputReader, ReaderConfig
    from data.url_filter import UrlBlocklistFilter

    steps = [UrlBlocklistFilter(), HtmlExtractor(), DomainTagger(), HeuristicFilter()]
    steps[0].filter(_probe())  # load the block lists before timing (datatrove's side is warmed the same way)
    start = time.perf_counter()
    data = InputReader(ReaderConfig(paths=[str(corpus)])).run()
    for step in steps:
        data = step.run(data)
    kept = drain(data)
    return time.perf_counter() - start, [d.text for d in kept]


def run_datatrove(corpus: Path) -> tuple[float, int]:
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        URLFilter,
    )
    from datatrove.pipeline.readers import JsonlReader

    url_filter = URLFilter()
    url_filter.filter(_probe())  # extract and load the block lists before timing
    steps = [url_filter, Trafilatura(favour_precision=True), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(), FineWebQualityFilter()]  # fmt: skip
    start = time.perf_counter()
    data = JsonlReader(str(corpus.parent), glob_pattern=corpus.name).run()
    for step in steps:
        data = step.run(data)
    kept = len(drain(data))
    return time.perf_counter() - start, kept


def _probe():
    from datatrove.data import Document

    return Document(text="x", id="probe", metadata={"url": "https://example.org/"})


def minhash_ours(texts: list[str]) -> float:
    from data.dedup_minhash import MinHashConfig, duplicate_flags, signatures

    config = MinHashConfig(per_language=False)
    start = time.perf_counter()
    duplicate_flags(signatures(texts, config), config)
    return time.perf_counter() - start


def minhash_datatrove(texts: list[str], work: Path) -> float:
    from datatrove.data import Document
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove's default xxhash path rejects str input with xxhash 4 (installed by `datasets`).
    config = MinhashConfig(
        num_buckets=14, hashes_per_bucket=8, n_grams=5, hash_config=HashConfig(hash_fc="sha1", precision=64)
    )
    step = MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    step.word_tokenizer.word_tokenize("warm up the spaCy pipeline")
    start = time.perf_counter()
    step.run(iter(docs))  # writes the signature files; returns nothing
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from loguru import logger as loguru_logger

    loguru_logger.remove()  # datatrove logs every step through loguru
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        n_docs = build_corpus(corpus, args.copies)
        # Interleaved repeats, best time of each: the machine is shared, so single runs are noisy.
        anchor_s = ours_s = mh_anchor = mh_ours = float("inf")
        for r in range(args.repeats):
            t, anchor_kept = run_datatrove(corpus)
            anchor_s = min(anchor_s, t)
            t, texts = run_ours(corpus)
            ours_s = min(ours_s, t)
            mh_anchor = min(mh_anchor, minhash_datatrove(texts, tmp / f"sigs{r}"))
            mh_ours = min(mh_ours, minhash_ours(texts))
    mh = {"benchmark": "curate_minhash_signatures", "metric": "docs/s", "ours": round(len(texts) / mh_ours, 1)}
    mh.update(anchor=round(len(texts) / mh_anchor, 1), goal=">= 2.0")
    mh["ratio"] = round(mh["ours"] / mh["anchor"], 2)
    print(json.dumps(mh))
    result = {
        "benchmark": "curate_shared_steps",
        "metric": "docs/s",
        "ours": round(n_docs / ours_s, 1),
        "anchor": round(n_docs / anchor_s, 1),
    }
    result["ratio"] = round(result["ours"] / result["anchor"], 2)
    result["goal"] = ">= 2.0"
    result.update(docs=n_docs, ours_kept=len(texts), anchor_kept=anchor_kept)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
