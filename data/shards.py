"""Tokenize, mix, shuffle and pack documents into training shards, plus the reader that feeds training.

Layout of a shard folder (every file written to a temporary name and renamed, the manifest last). ``hf-llama3
curate`` packs per task (:class:`TokenWriter`, :class:`ShardPacker`, :class:`ManifestWriter`): every task takes its
share of each category's target (the mix is planned over every task's tokens) and writes
``shard_<task>_<n>``; :func:`write_shards` does the same in one process and writes ``shard_<n>``.

- ``shard_00000.tokens.npy``: uint32 ``[sequences, seq_len]`` token ids (the vocabulary is 128256).
- ``shard_00000.segments.npy``: int64 ``[segments, 4]`` rows ``(sequence, start, length, category)``:
  where each document piece sits, so training can build document masks ("we use an attention mask that
  prevents self-attention between different documents within the same sequence" [3.2]) and anyone can
  check the mix.
- ``manifest.json``: sequence length, tokenizer, EOS id, categories, token counts per category, the
  shards with their sequence counts and SHA-256.
- optionally ``datatrove/<part>_tokens.ds`` + ``.ds.index`` (one per packing task): the same token stream in datatrove's tokenized
  format (uint32 tokens, uint64 document ends), which datatrove's ``DatatroveFolderDataset`` and
  Nanotron's datatrove data loader read.

Every document piece ends with EOS. The order of pieces is a seeded shuffle of the mix, so shards are
shuffled and weighted; a sequence may hold the tail of one document and the head of the next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from datatrove.pipeline.base import PipelineStep

from data.mix import MixConfig, plan_mix
from hf_llama3.checkpoint_io import atomic_output_file

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass
class ShardConfig:
    """Args:
    seq_len: tokens per training sequence (8192 for the main pre-training stage [3.4.1]).
    sequences_per_shard: sequences in each shard file.
    datatrove_export: also write datatrove/Nanotron ``.ds`` token files.
    batch_size: documents tokenized per call.
    """

    seq_len: int = 8192  # [3.4.1]
    sequences_per_shard: int = 1024
    datatrove_export: bool = True
    batch_size: int = 256

    # Bounds the shared recipe loader checks (hf_llama3.recipe_loader).
    RECIPE_CONSTRAINTS: ClassVar[dict[str, dict[str, float]]] = {
        "seq_len": {"min": 2},
        "sequences_per_shard": {"min": 1},
        "batch_size": {"min": 1},
    }

    def __post_init__(self) -> None:
        if self.seq_len < 2 or self.sequences_per_shard < 1 or self.batch_size < 1:
            raise ValueError("shards.seq_len must be >= 2 and sequences_per_shard, batch_size >= 1.")


def encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids without special tokens: a transformers tokenizer is called in batch, anything else with
    an ``encode(text)`` method one text at a time."""
    if hasattr(tokenizer, "model_input_names"):  # a transformers tokenizer
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(tokenizer.encode(t)) for t in texts]


def eos_id(tokenizer) -> int:
    value = getattr(tokenizer, "eos_token_id", None)
    if value is None:
        value = getattr(tokenizer, "eos_id", None)
    if value is None:
        raise ValueError("the tokenizer has no eos_token_id / eos_id: packing needs an end-of-document token.")
    return int(value)


def _atomic_save(path: Path, write) -> None:
    with atomic_output_file(path) as tmp, open(tmp, "wb") as f:
        write(f)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def select_pieces(
    token_lists: list[list[int]], categories: list[str], targets: dict[str, int], seed: int
) -> list[tuple[int, int]]:
    """(document index, tokens to take) pieces meeting each category's target exactly, in shuffled order.

    Within a category documents come in a seeded order, repeated as epochs when the target needs more;
    the last piece is cut so the category total is exact. Each piece's length includes its EOS.
    """
    rng = random.Random(seed)
    pieces: list[tuple[int, int]] = []
    for category in sorted(targets):
        members = [i for i, c in enumerate(categories) if c == category and len(token_lists[i])]
        rng.shuffle(members)
        need, k = targets[category], 0
        while need > 0 and members:
            i = members[k % len(members)]
            take = min(need, len(token_lists[i]) + 1)
            if take >= 2:  # at least one token plus EOS
                pieces.append((i, take))
                need -= take
            else:
                need = 0
            k += 1
    rng.shuffle(pieces)
    return pieces


def write_shards(
    texts: Sequence[str],
    categories: Sequence[str],
    tokenizer,
    out_dir: str | os.PathLike,
    mix: MixConfig,
    config: ShardConfig,
    progress=None,
) -> dict:
    """Tokenize ``texts``, plan the mix, pack and write the shard folder in one process; returns the manifest.

    ``hf-llama3 curate`` does the same per task (:class:`TokenWriter`, :class:`ShardPacker`, :class:`ManifestWriter`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eos = eos_id(tokenizer)
    token_lists: list[list[int]] = []
    for start in range(0, len(texts), config.batch_size):
        token_lists += encode_batch(tokenizer, texts[start : start + config.batch_size])
        if progress is not None:
            progress.update(len(texts[start : start + config.batch_size]))
    available: dict[str, int] = {}
    for tokens, category in zip(token_lists, categories):
        available[category] = available.get(category, 0) + len(tokens) + 1
    targets = plan_mix(available, mix)
    part = pack_shards(token_lists, list(categories), targets, eos, out, config, mix.seed, "shard_", "000_tokens")
    manifest = manifest_of(
        [part], available, mix, config, eos, getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    )
    _atomic_save(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2, sort_keys=True).encode()))
    return manifest


def pack_shards(
    token_lists: Sequence,
    categories: list[str],
    targets: dict[str, int],
    eos: int,
    out: Path,
    config: ShardConfig,
    seed: int,
    prefix: str,
    datatrove_name: str,
) -> dict:
    """Select the pieces meeting ``targets``, pack them into sequences and write ``<prefix>NNNNN`` shard files (and
    ``datatrove/<datatrove_name>.ds``); returns this part of the manifest. A tail shorter than a sequence is dropped.
    Category ids in the segments index ``sorted(targets)``, the manifest's category list."""
    pieces = select_pieces(token_lists, categories, targets, seed)
    names = sorted(targets)
    category_ids = {c: i for i, c in enumerate(names)}
    stream = np.empty(sum(n for _, n in pieces), dtype=np.uint32)
    starts = np.empty(len(pieces), dtype=np.int64)
    lengths = np.array([n for _, n in pieces], dtype=np.int64)
    cats = np.array([category_ids[categories[i]] for i, _ in pieces], dtype=np.int64)
    pos = 0
    for j, (i, n) in enumerate(pieces):
        stream[pos : pos + n - 1] = token_lists[i][: n - 1]
        stream[pos + n - 1] = eos
        starts[j] = pos
        pos += n
    n_seq = len(stream) // config.seq_len

    shards = []
    for s, first in enumerate(range(0, n_seq, config.sequences_per_shard)):
        last = min(n_seq, first + config.sequences_per_shard)
        lo, hi = first * config.seq_len, last * config.seq_len
        tokens = stream[lo:hi].reshape(last - first, config.seq_len)
        segments = []
        ends = starts + lengths
        first_piece, last_piece = (
            int(np.searchsorted(ends, lo, side="right")),
            int(np.searchsorted(starts, hi, side="left")),
        )
        for start, length, cat in zip(
            starts[first_piece:last_piece], lengths[first_piece:last_piece], cats[first_piece:last_piece]
        ):
            a, b = max(start, lo), min(start + length, hi)
            while a < b:  # split a piece at sequence boundaries
                row = a // config.seq_len
                end = min(b, (row + 1) * config.seq_len)
                segments.append((row - first, a - row * config.seq_len, end - a, cat))
                a = end
        name = f"{prefix}{s:05d}"
        _atomic_save(out / f"{name}.tokens.npy", lambda f, t=tokens: np.save(f, t))
        _atomic_save(
            out / f"{name}.segments.npy", lambda f, g=segments: np.save(f, np.array(g, dtype=np.int64).reshape(-1, 4))
        )
        shards.append(
            {
                "tokens": f"{name}.tokens.npy",
                "segments": f"{name}.segments.npy",
                "sequences": int(last - first),
                "sha256": _sha256(out / f"{name}.tokens.npy"),
            }
        )
    used = stream[: n_seq * config.seq_len]
    written = {c: 0 for c in names}
    for start, length, cat in zip(starts, lengths, cats):
        written[names[cat]] += int(max(0, min(start + length, len(used)) - start))
    if config.datatrove_export and n_seq:
        (out / "datatrove").mkdir(exist_ok=True)
        ends = np.minimum(starts + lengths, len(used))
        ends = ends[ends > starts]
        _atomic_save(out / "datatrove" / f"{datatrove_name}.ds", lambda f: f.write(used.astype("<u4").tobytes()))
        _atomic_save(out / "datatrove" / f"{datatrove_name}.ds.index", lambda f: f.write(ends.astype("<u8").tobytes()))
    return {
        "sequences": int(n_seq),
        "tokens_per_category": written,
        "documents": len(token_lists),
        "pieces": len(pieces),
        "shards": shards,
        "tokens": len(stream),
    }


def manifest_of(
    parts: list[dict], available: dict[str, int], mix: MixConfig, config: ShardConfig, eos: int, tokenizer: str
) -> dict:
    """The shard folder's manifest from its parts (one per packing task, in task order)."""
    names = sorted(plan_mix(available, mix))
    sequences = sum(p["sequences"] for p in parts)
    if sequences == 0:
        raise ValueError(
            f"the mix holds {sum(p['tokens'] for p in parts)} tokens, fewer than one sequence of {config.seq_len} "
            "per packing task: lower shards.seq_len."
        )
    weights = mix.target_weights()
    return {
        "format": "hf-llama3-packed-v1",
        "seq_len": config.seq_len,
        "sequences": sequences,
        "eos_token_id": eos,
        "tokenizer": tokenizer,
        "categories": names,
        "target_weights": {c: round(weights[c], 6) for c in names},
        "available_tokens": dict(sorted(available.items())),
        "tokens_per_category": {c: sum(p["tokens_per_category"][c] for p in parts) for c in names},
        "documents": sum(p["documents"] for p in parts),
        "pieces": sum(p["pieces"] for p in parts),
        "seed": mix.seed,
        "shards": [shard for p in parts for shard in p["shards"]],
    }


class TokenWriter(PipelineStep):
    """Per task: the Llama 3 tokens of its documents, ``<folder>/<rank>.tokens`` (uint32 stream),
    ``<rank>.docs.npy`` (length, category) per document and ``<rank>.json`` (categories, tokens available)."""

    name = "TokenWriter"
    type = "🔢 - TOKENIZER"

    def __init__(self, folder: str, tokenizer_name: str | None, mix: MixConfig, config: ShardConfig):
        super().__init__()
        self.folder, self.tokenizer_name, self.mix, self.config = folder, tokenizer_name, mix, config

    def run(self, data, rank: int = 0, world_size: int = 1):
        from data.mix import category_of
        from hf_llama3 import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer_name)
        root = Path(self.folder)
        root.mkdir(parents=True, exist_ok=True)
        names: list[str] = []
        rows: list[tuple[int, int]] = []
        available: dict[str, int] = {}
        batch: list = []
        with atomic_output_file(root / f"{rank:05d}.tokens") as tmp, open(tmp, "wb") as out:

            def flush() -> None:
                for doc, tokens in zip(batch, encode_batch(tokenizer, [d.text for d in batch]), strict=True):
                    category = category_of(doc.metadata, self.mix)
                    if category not in names:
                        names.append(category)
                    rows.append((len(tokens), names.index(category)))
                    available[category] = available.get(category, 0) + len(tokens) + 1
                    np.asarray(tokens, dtype="<u4").tofile(out)
                    self.stat_update("tokens", value=len(tokens))
                batch.clear()

            for doc in data:
                batch.append(doc)
                if len(batch) == self.config.batch_size:
                    flush()
            flush()
        _atomic_save(
            root / f"{rank:05d}.docs.npy", lambda f: np.save(f, np.array(rows, dtype=np.int64).reshape(-1, 2))
        )
        meta = {"categories": names, "available": available, "eos": eos_id(tokenizer)}
        meta["tokenizer"] = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        _atomic_save(root / f"{rank:05d}.json", lambda f: f.write(json.dumps(meta, sort_keys=True).encode()))
        yield from ()


def _read_token_metas(folder: str) -> dict[int, dict]:
    return {int(p.stem): json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


def _summed_available(metas: dict[int, dict]) -> dict[str, int]:
    available: dict[str, int] = {}
    for meta in metas.values():
        for c, n in meta["available"].items():
            available[c] = available.get(c, 0) + n
    return available


class ShardPacker(PipelineStep):
    """Per task: the global mix plan (from every task's available tokens), this task's proportional share of each
    category's target, and its packed shards ``shard_<rank>_NNNNN``; the part manifest in ``<parts>/<rank>.json``."""

    name = "ShardPacker"
    type = "💽 - WRITER"

    def __init__(self, token_folder: str, out_dir: str, parts_folder: str, mix: MixConfig, config: ShardConfig):
        super().__init__()
        self.token_folder, self.out_dir, self.parts_folder = token_folder, out_dir, parts_folder
        self.mix, self.config = mix, config

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        metas = _read_token_metas(self.token_folder)
        available = _summed_available(metas)
        targets = plan_mix(available, self.mix)
        before = Counter()  # tokens of each category in the tasks before this one
        for r in sorted(metas):
            if r == rank:
                break
            before.update(metas[r]["available"])
        mine = metas[rank]["available"]
        # Cumulative rounding: the shares of a category add up to its target exactly.
        share = {
            c: round(t * (before[c] + mine.get(c, 0)) / available[c]) - round(t * before[c] / available[c])
            for c, t in targets.items()
        }
        root = Path(self.token_folder)
        rows = np.load(root / f"{rank:05d}.docs.npy")
        stream = np.fromfile(root / f"{rank:05d}.tokens", dtype="<u4")
        ends = np.cumsum(rows[:, 0]) if len(rows) else np.zeros(0, dtype=np.int64)
        token_lists = [stream[e - n : e] for (n, _), e in zip(rows.tolist(), ends.tolist())]
        categories = [metas[rank]["categories"][c] for c in rows[:, 1].tolist()]
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        seed = self.mix.seed * 1_000_003 + rank
        part = pack_shards(
            token_lists,
            categories,
            share,
            metas[rank]["eos"],
            out,
            self.config,
            seed,
            f"shard_{rank:05d}_",
            f"{rank:05d}_tokens",
        )
        part["tokens_per_category"] = {c: part["tokens_per_category"].get(c, 0) for c in targets}
        self.stat_update("sequences", value=part["sequences"])
        _atomic_save(Path(self.parts_folder) / f"{rank:05d}.json", lambda f: f.write(json.dumps(part).encode()))
        yield from ()


class ManifestWriter(PipelineStep):
    """One task: ``manifest.json`` over every packing task's part, written last (its presence means done)."""

    name = "ManifestWriter"
    type = "💽 - WRITER"

    def __init__(self, token_folder: str, parts_folder: str, out_dir: str, mix: MixConfig, config: ShardConfig):
        super().__init__()
        self.token_folder, self.parts_folder, self.out_dir = token_folder, parts_folder, out_dir
        self.mix, self.config = mix, config

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        metas = _read_token_metas(self.token_folder)
        parts = [json.loads(p.read_text()) for p in sorted(Path(self.parts_folder).glob("*.json"))]
        first = metas[min(metas)]
        manifest = manifest_of(
            parts, _summed_available(metas), self.mix, self.config, first["eos"], first["tokenizer"]
        )
        out = Path(self.out_dir)
        _atomic_save(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2, sort_keys=True).encode()))
        yield from ()


class PackedShardReader:
    """Reads packed shards in order, one training sample (sequence) at a time, resumable at an exact sample.

    Each sample is a dict with ``input_ids`` (int64 ``[seq_len]``), ``position_ids`` (restarting at 0 at
    every document start, which transformers' packed-sequence attention and our document masks read),
    ``document_ids`` (the piece each token belongs to, what ``Llama3ForCausalLM(document_ids=...)`` masks on),
    ``doc_lengths`` and ``categories`` of the pieces in the sequence, and ``index`` (the global sample
    number). ``state_dict()`` / ``load_state_dict()`` carry the position across restarts.
    """

    def __init__(self, shard_dir: str | os.PathLike, start_sample: int = 0, verify: bool = False):
        self.dir = Path(shard_dir)
        manifest_path = self.dir / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found: run `hf-llama3 curate` to write the shards first.")
        self.manifest = json.loads(manifest_path.read_text())
        self.seq_len = int(self.manifest["seq_len"])
        self.offsets = np.cumsum([0] + [s["sequences"] for s in self.manifest["shards"]])
        if verify:
            for shard in self.manifest["shards"]:
                if _sha256(self.dir / shard["tokens"]) != shard["sha256"]:
                    raise ValueError(
                        f"{shard['tokens']} does not match its SHA-256 in the manifest: the shard is corrupt."
                    )
        self.position = 0
        self.load_state_dict({"sample": start_sample})
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def state_dict(self) -> dict:
        return {"sample": self.position}

    def load_state_dict(self, state: dict) -> None:
        sample = int(state["sample"])
        if not 0 <= sample <= len(self):
            raise ValueError(f"sample {sample} is outside the {len(self)} samples of {self.dir}.")
        self.position = sample

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None or self._cache[0] != s:
            shard = self.manifest["shards"][s]
            self._cache = (
                s,
                np.load(self.dir / shard["tokens"], mmap_mode="r"),
                np.load(self.dir / shard["segments"]),
            )
        return self._cache[1], self._cache[2]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        s = int(np.searchsorted(self.offsets, index, side="right") - 1)
        tokens, segments = self._shard(s)
        row = index - int(self.offsets[s])
        segs = segments[segments[:, 0] == row]
        positions = np.concatenate([np.arange(length) for length in segs[:, 2]])
        return {
            "index": index,
            "input_ids": np.asarray(tokens[row], dtype=np.int64),
            "position_ids": positions.astype(np.int64),
            "document_ids": np.repeat(np.arange(len(segs)), segs[:, 2]).astype(np.int64),
            "doc_lengths": segs[:, 2].tolist(),
            "categories": [self.manifest["categories"][c] for c in segs[:, 3]],
        }

    def __iter__(self) -> Iterator[dict]:
        while self.position < len(self):
            sample = self[self.position]
            self.position += 1
            yield sample
