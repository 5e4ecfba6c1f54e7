"""Document-level global MinHash dedup [3.1.1 "Document-level: We perform global MinHash (Broder, 1997)
de-duplication across the entire dataset"].

Signatures come from rensa (about 10x faster than datasketch at the same recall); banding is ours so that
the candidate probability is exactly the textbook S-curve for the chosen ``bands`` x ``rows``:
``P(candidate | Jaccard s) = 1 - (1 - s**rows)**bands``. Candidate pairs are merged with union-find and
each cluster keeps its first document (input order). The paper does not publish its parameters; the
default 14 bands x 8 rows over word 5-gram shingles is FineWeb's, with a 50% detection point near
Jaccard 0.72. ``per_language`` dedups within each language only [3.1.1 Multilingual].

Sharded (what ``hf-llama3 curate`` runs, any number of tasks): the four stages of datatrove's MinHash, with
our signatures written in its layout so its bucket stage matches them:

1. :class:`SignatureWriter` (one task per share): rensa signatures, ``bucket_BBB/<rank>.minhash.sig`` sorted
   records of ``rows`` uint64 values plus the document's position (datatrove's ``MinhashDedupSignature`` layout at
   64-bit precision). ``per_language`` puts a 28-bit hash of the language group above the 32-bit MinHash
   values, so documents of different groups never share a band;
2. datatrove's ``MinhashDedupBuckets`` (one task per band): a merge of the sorted files, pairs sharing a band;
3. :class:`FirstOfClusterWriter` (one task): union-find over the pairs; each cluster keeps its first document
   in input order, like the in-memory step. datatrove's ``MinhashDedupCluster`` unions by size, which keeps a
   member that depends on the order pairs arrive in, so the kept document would change with the task count;
4. :class:`MinHashDedupFilter` (in the dedup stage): drops the positions in ``<rank>.remove`` (datatrove's
   layout), counted with characters like every other step.

A task holds its share's signatures for one band at a time (8 x rows + 4 bytes a document), the band merge holds
a few records per file, the clustering holds the duplicates only. :class:`MinHashDeduplicator` is the same rule in
one process (the reference the sharded steps are tested against).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from hf_llama3.checkpoint_io import atomic_output_file

_NON_WORD = re.compile(r"[^\w\s]+")


@dataclass
class MinHashConfig:
    """MinHash/LSH parameters (FineWeb's defaults; the paper publishes none).

    Args:
        bands / rows: LSH banding; ``bands * rows`` permutations.
        ngram: word n-gram size of the shingles.
        seed: the permutation seed.
        per_language: only documents of the same language can be duplicates.
    """

    enabled: bool = True
    bands: int = 14
    rows: int = 8
    ngram: int = 5
    seed: int = 1
    per_language: bool = True

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "bands": {"min": 1},
        "rows": {"min": 1},
        "ngram": {"min": 1},
    }

    def __post_init__(self) -> None:
        for name in ("bands", "rows", "ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"minhash.{name} must be >= 1, got {getattr(self, name)}.")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def candidate_probability(self, jaccard: float) -> float:
        """The LSH S-curve: probability that a pair at this Jaccard similarity shares a band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands


def language_group(metadata: dict) -> str:
    """The dedup group of a document: its language, except that all code is one group (lid.176's guess for
    source code is noise, and a copied snippet is a duplicate whatever language ID says)."""
    return "code" if metadata.get("domain") == "code" else str(metadata.get("lang", ""))


def shingles(text: str, n: int) -> set[str]:
    """Word n-grams of the normalised text (lower case, punctuation removed, whitespace collapsed)."""
    words = _NON_WORD.sub(" ", text.lower()).split()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def signatures(texts: Sequence[str], config: MinHashConfig) -> np.ndarray:
    """(len(texts), num_perm) uint64 MinHash signatures computed by rensa."""
    from rensa import RMinHash

    token_sets = [sorted(shingles(t, config.ngram)) for t in texts]
    digests = RMinHash.digests_from_token_sets(token_sets, num_perm=config.num_perm, seed=config.seed)
    return np.asarray(digests, dtype=np.uint64).reshape(len(texts), config.num_perm)


def duplicate_flags(sigs: np.ndarray, config: MinHashConfig, groups: Sequence[str] | None = None) -> np.ndarray:
    """Boolean mask: True for documents that duplicate an earlier one in their LSH cluster."""
    n = len(sigs)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(config.bands):
        block = np.ascontiguousarray(sigs[:, band * config.rows : (band + 1) * config.rows])
        buckets: dict[tuple, int] = {}
        for i in range(n):
            key = (groups[i] if groups is not None else "", block[i].tobytes())
            j = buckets.setdefault(key, i)
            if j != i:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) != i for i in range(n)], dtype=bool)


class MinHashDeduplicator(PipelineStep):
    """Drops near-duplicates (``minhash_duplicate``), keeping the first document of each cluster."""

    name = "🫂 minhash dedup"
    type = "🫂 - DEDUP"

    def __init__(self, config: MinHashConfig | None = None):
        super().__init__()
        self.config = config or MinHashConfig()

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = list(data)
        if not docs:
            return
        with self.track_time("corpus"):
            sigs = signatures([d.text for d in docs], self.config)
            groups = [language_group(d.metadata) for d in docs] if self.config.per_language else None
            dup = duplicate_flags(sigs, self.config, groups)
        for doc, is_dup in zip(docs, dup):
            self.stat_update("total")
            if is_dup:
                self.stat_update("dropped", "dropped_minhash_duplicate")
            else:
                self.stat_update("forwarded")
                yield doc


def datatrove_config(config: MinHashConfig):
    """datatrove's MinhashConfig for the same bands and rows, at the 64-bit precision of our signature files."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig as DatatroveMinhashConfig
    from datatrove.utils.hashing import HashConfig

    return DatatroveMinhashConfig(
        n_grams=config.ngram,
        num_buckets=config.bands,
        hashes_per_bucket=config.rows,
        seed=config.seed,
        hash_config=HashConfig(hash_fc="sha1", precision=64),
    )


def _group_offset(group: str) -> int:
    """28 bits of the language group above the 32-bit MinHash values (datatrove's buckets need values < 2**61)."""
    return int.from_bytes(hashlib.blake2b(group.encode(), digest_size=4).digest(), "little") >> 4 << 32


class SignatureWriter(PipelineStep):
    """Sharded step 1: the task's signatures in datatrove's ``MinhashDedupSignature`` file layout."""

    name = "SignatureWriter"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str, config: MinHashConfig, batch_size: int = 64):
        # 64 documents per rensa call: a batch's shingle lists are most of what the task holds (512 cost 28 MB more
        # in benchmarks/curate_memory.py for no measurable speed).
        super().__init__()
        self.folder, self.config, self.batch_size = folder, config, batch_size

    def _signatures(self, docs: list[Document]) -> np.ndarray:
        sigs = signatures([d.text for d in docs], self.config)
        if self.config.per_language:
            sigs += np.array([[_group_offset(language_group(d.metadata))] for d in docs], dtype=np.uint64)
        return sigs

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        cfg = self.config
        dtype = np.dtype([(f"h{i}", "<u8") for i in range(cfg.rows)] + [("pos", "<u4")])
        paths = [Path(self.folder) / f"bucket_{b:03d}" / f"{rank:05d}.minhash.sig" for b in range(cfg.bands)]
        for path in paths:  # a killed run's temporaries would be read as signature files by the band merge
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f".{path.name}.*"):
                stale.unlink()
        unsorted = Path(self.folder) / "unsorted" / f"{rank:05d}"
        unsorted.mkdir(parents=True, exist_ok=True)
        files: list = []
        pos = 0

        def flush(batch: list[Document]) -> None:
            nonlocal pos
            sigs = self._signatures(batch)
            for band, f in enumerate(files):
                records = np.empty(len(batch), dtype=dtype)
                for i in range(cfg.rows):
                    records[f"h{i}"] = sigs[:, band * cfg.rows + i]
                records["pos"] = np.arange(pos, pos + len(batch), dtype=np.uint32)
                records.tofile(f)
            pos += len(batch)

        with self.track_time():
            with contextlib.ExitStack() as stack:
                files += [stack.enter_context(open(unsorted / f"{b:03d}", "wb")) for b in range(cfg.bands)]
                batch: list[Document] = []
                for doc in data:
                    batch.append(doc)
                    if len(batch) == self.batch_size:
                        flush(batch)
                        batch = []
                if batch:
                    flush(batch)
            self.stat_update("total", value=pos)
            for band, path in enumerate(paths):  # sorted one band at a time, as datatrove's signature stage does
                records = np.fromfile(unsorted / f"{band:03d}", dtype=dtype)
                records.sort(order=dtype.names)
                with atomic_output_file(path) as tmp:
                    records.tofile(tmp)
                (unsorted / f"{band:03d}").unlink()
        yield from ()


class FirstOfClusterWriter(PipelineStep):
    """Sharded step 3 (one task): clusters the duplicate pairs; ``<out>/<rank:06d>.remove`` lists, per signature
    task, the sorted positions of every document but the first of its cluster."""

    name = "FirstOfClusterWriter"
    type = "🫂 - DEDUP"

    def __init__(self, dups_folder: str, out_folder: str):
        super().__init__()
        self.dups_folder, self.out_folder = dups_folder, out_folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(x: tuple[int, int]) -> tuple[int, int]:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while x != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        for path in sorted(Path(self.dups_folder).glob("*.dups")):
            pairs = np.fromfile(path, dtype="<u4").reshape(-1, 4)
            for f1, d1, f2, d2 in pairs.tolist():
                a, b = find((f1, d1)), find((f2, d2))
                if a != b:  # the earlier document (task, position) stays the root: the first of the cluster
                    parent[max(a, b)] = min(a, b)
        removed: dict[int, list[int]] = {}
        for node in parent:
            if find(node) != node:
                removed.setdefault(node[0], []).append(node[1])
        self.stat_update("duplicates", value=sum(len(v) for v in removed.values()))
        out = Path(self.out_folder)
        out.mkdir(parents=True, exist_ok=True)
        for task, positions in sorted(removed.items()):
            with atomic_output_file(out / f"{task:06d}.remove") as tmp:
                tmp.write_bytes(struct.pack(f"<{len(positions)}I", *sorted(positions)))
        yield from ()


class MinHashDedupFilter(BaseFilter):
    """Sharded step 4 (wrapped in :class:`data.stage_io.CountedFilter`): drops ``minhash_duplicate`` positions."""

    name = "MinHashDedupFilter"

    def __init__(self, remove_folder: str):
        super().__init__()
        self.remove_folder = remove_folder
        self.drops: set[int] = set()
        self.pos = 0

    def start(self, rank: int, world_size: int) -> None:
        path = Path(self.remove_folder) / f"{rank:06d}.remove"
        self.drops = set(np.fromfile(path, dtype="<u4").tolist()) if path.exists() else set()
        self.pos = 0

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        pos, self.pos = self.pos, self.pos + 1
        return (False, "minhash_duplicate") if pos in self.drops else True
