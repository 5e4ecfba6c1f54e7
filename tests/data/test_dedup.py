"""Dedup: URL (newest crawl wins), MinHash recall against the LSH S-curve, the sharded clustering keeping the first
document of a cluster (where datatrove's union by size does not), CCNet line dedup (lines at <= N repeats survive)."""

import random
import struct

import numpy as np
import pytest
import wordfreq
from datatrove.data import Document

from data.dedup_line import LineDedupConfig, LineDeduplicator, normalize_line
from data.dedup_minhash import (
    MinHashConfig,
    MinHashDeduplicator,
    duplicate_flags,
    shingles,
    signatures,
)
from data.dedup_url import UrlDeduplicator, normalize_url

VOCAB = [w for w in wordfreq.top_n_list("en", 20000) if w.isalpha()]


def doc(text, id_, **meta):
    return Document(text=text, id=id_, metadata=meta)


def test_url_dedup_keeps_the_newest_crawl():
    docs = [
        doc("old", "a1", url="https://www.Example.com/page/", date="2021-01-01T00:00:00Z"),
        doc("new", "a2", url="https://example.com/page#top", date="2023-06-01T00:00:00Z"),
        doc("mid", "a3", url="http://example.com:80/page", date="2022-01-01T00:00:00Z"),
        doc("other", "b1", url="https://example.com/page?x=1", date="2020-01-01T00:00:00Z"),
        doc("tie-first", "c1", url="https://c.org/", date="2023-01-01T00:00:00Z"),
        doc("tie-second", "c2", url="https://c.org", date="2023-01-01T00:00:00Z"),
        doc("no url", "d1"),
    ]
    step = UrlDeduplicator()
    assert [d.id for d in step.run(docs)] == ["a2", "b1", "c1", "d1"]
    assert step.stats["dropped_older_crawl_of_url"].total == 3
    assert normalize_url("HTTPS://WWW.A.org:443/x/") == normalize_url("http://a.org/x") == "//a.org/x"


def test_url_dedup_on_the_sample_warc_keeps_the_2023_crawls():
    from data.readers import InputReader, ReaderConfig
    from tests.data.test_readers import SAMPLE

    docs = list(InputReader(ReaderConfig(paths=[str(SAMPLE / "web.warc.gz")])).run())
    kept = list(UrlDeduplicator().run(docs))
    assert len(docs) - len(kept) == 3  # the three 2021 crawls planted by the corpus builder
    assert not any("outdated" in d.text for d in kept)


def _pair(rng: random.Random, jaccard: float, n_words: int = 300, ngram: int = 5) -> tuple[str, str, float]:
    """A random document and a copy edited until its shingle Jaccard drops to about ``jaccard``."""
    words = rng.choices(VOCAB, k=n_words)
    copy = list(words)
    a = shingles(" ".join(words), ngram)
    while True:
        copy[rng.randrange(n_words)] = rng.choice(VOCAB)
        b = shingles(" ".join(copy), ngram)
        actual = len(a & b) / len(a | b)
        if actual <= jaccard:
            return " ".join(words), " ".join(copy), actual


@pytest.mark.parametrize(("bands", "rows"), [(14, 8), (20, 5)])
def test_minhash_recall_follows_the_lsh_s_curve(bands, rows):
    config = MinHashConfig(bands=bands, rows=rows)
    rng = random.Random(bands)
    for target in (0.5, 0.65, 0.75, 0.85):
        pairs = [_pair(rng, target) for _ in range(150)]
        texts = [t for a, b, _ in pairs for t in (a, b)]
        flags = duplicate_flags(signatures(texts, config), config)
        assert not flags[0::2].any()  # the first of each pair is never the one dropped
        found = flags[1::2]
        expected = np.array([config.candidate_probability(j) for _, _, j in pairs])
        # The detection count is a sum of independent Bernoulli(p_i): compare within 4 standard deviations.
        sigma = np.sqrt((expected * (1 - expected)).sum())
        assert abs(found.sum() - expected.sum()) <= 4 * sigma + 1, (target, found.sum(), expected.sum())


def test_minhash_step_drops_copies_and_respects_languages():
    rng = random.Random(0)
    base = " ".join(rng.choices(VOCAB, k=200))
    other = " ".join(rng.choices(VOCAB, k=200))
    docs = [
        doc(base, "orig", lang="en"),
        doc(base.upper() + "!", "case-and-punct-copy", lang="en"),
        doc(other, "distinct", lang="en"),
        doc(base, "same-text-other-language", lang="de"),
        doc(other, "code-a", lang="en", domain="code"),
        doc(other, "code-b-other-lid-guess", lang="es", domain="code"),
    ]
    step = MinHashDeduplicator(MinHashConfig())
    assert [d.id for d in step.run(docs)] == ["orig", "distinct", "same-text-other-language", "code-a"]
    step = MinHashDeduplicator(MinHashConfig(per_language=False))
    assert [d.id for d in step.run(docs)] == ["orig", "distinct"]
    with pytest.raises(ValueError, match="bands"):
        MinHashConfig(bands=0)


def test_sharded_clustering_keeps_the_first_document_of_each_cluster(tmp_path):
    """Pairs B-C (band 0) then A-C (band 1), A first in input order: ours keeps A like the in-memory step; datatrove's
    union by size keeps B, so its kept document would depend on the order pairs arrive in."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster

    from data.dedup_minhash import FirstOfClusterWriter, datatrove_config

    a, b, c = (0, 1), (0, 5), (1, 2)  # (signature task, position)
    (tmp_path / "dups").mkdir()
    for band, pair in enumerate([(b, c), (a, c)]):
        (tmp_path / "dups" / f"{band:05d}_00.dups").write_bytes(struct.pack("<4I", *pair[0], *pair[1]))
    config = MinHashConfig(bands=2)
    ours = FirstOfClusterWriter(str(tmp_path / "dups"), str(tmp_path / "ours"))
    theirs = MinhashDedupCluster(str(tmp_path / "dups"), str(tmp_path / "theirs"), config=datatrove_config(config))
    for name, step in (("ours", ours), ("theirs", theirs)):
        LocalPipelineExecutor([step], tasks=1, workers=1, logging_dir=str(tmp_path / f"logs_{name}")).run()

    def removed(folder):
        return sorted((int(p.stem), d) for p in (tmp_path / folder).glob("*.remove") for d in np.fromfile(p, "<u4"))

    assert removed("ours") == [b, c]
    assert removed("theirs") == [a, c]


def test_line_dedup_keeps_lines_at_or_below_n_repeats():
    footer = "Copyright 2023 Example Inc. All rights reserved."
    menu = "Home | About | Contact"
    docs = []
    for i in range(10):
        lines = [" ".join(VOCAB[100 + 12 * i : 112 + 12 * i])]  # unique (digits would be normalised to 0)
        if i < 7:
            lines.append(footer.replace("2023", str(2000 + i)))  # 7 copies after digit normalisation
        if i < 6:
            lines.append(menu)  # exactly 6 copies: kept
        docs.append(doc("\n".join(lines), f"d{i}"))
    step = LineDeduplicator(LineDedupConfig(max_repeats=6, min_chars=10))
    out = list(step.run(docs))
    assert len(out) == 10
    assert all("Copyright" not in d.text for d in out)
    assert sum(menu in d.text for d in out) == 6
    assert step.stats["removed_lines"].total == 7


def test_line_dedup_buckets_languages_and_empty_documents():
    line = "Subscribe to our newsletter for weekly updates!"
    docs = [doc(f"{line}\n" + " ".join(VOCAB[300 + 9 * i : 309 + 9 * i]), f"en{i}", lang="en") for i in range(4)]
    docs += [doc(line, f"de{i}", lang="de") for i in range(4)]
    # Buckets of 2 documents per language: the line occurs twice per bucket, so N=2 keeps it everywhere.
    keep = LineDeduplicator(LineDedupConfig(max_repeats=2, bucket_size=2, min_chars=5))
    assert sum(line in d.text for d in keep.run([doc(d.text, d.id, **d.metadata) for d in docs])) == 8
    drop = LineDeduplicator(LineDedupConfig(max_repeats=3, bucket_size=100, min_chars=5))
    out = list(drop.run(docs))
    assert [d.id for d in out] == ["en0", "en1", "en2", "en3"]  # the German documents were only that line
    assert drop.stats["dropped_empty_after_line_dedup"].total == 4
    assert normalize_line("  Café 2023, déjà-vu!  ") == "cafe 0000 dejavu"
