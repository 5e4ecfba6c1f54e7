"""Tokenize, mix, shuffle and pack documents into training shards, plus the reader that feeds training.

Layout of a shard folder (every file written to a temporary name and renamed, the manifest last):

- ``shard_00000.tokens.npy``: uint32 ``[sequences, seq_len]`` token ids (the vocabulary is 128256).
- ``shard_00000.segments.npy``: int64 ``[segments, 4]`` rows ``(sequence, start, length, category)``:
  where each document piece sits, so training can build document masks ("we use an attention mask that
  prevents self-attention between different documents within the same sequence" [3.2]) and anyone can
  check the mix.
- ``manifest.json``: sequence length, tokenizer, EOS id, categories, token counts per category, the
  shards with their sequence counts and SHA-256.
- optionally ``datatrove/000_tokens.ds`` + ``.ds.index``: the same token stream in datatrove's tokenized
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

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
        members = [i for i, c in enumerate(categories) if c == category and token_lists[i]]
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
    """Tokenize ``texts``, plan the mix, pack and write the shard folder; returns the manifest."""
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
    pieces = select_pieces(token_lists, list(categories), targets, mix.seed)
    category_ids = {c: i for i, c in enumerate(sorted(targets))}

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
    if n_seq == 0:
        raise ValueError(
            f"the mix holds {len(stream)} tokens, fewer than one sequence of {config.seq_len}: lower shards.seq_len."
        )

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
        name = f"shard_{s:05d}"
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
    written = {c: 0 for c in category_ids}
    for start, length, cat in zip(starts, lengths, cats):
        written[sorted(targets)[cat]] += int(max(0, min(start + length, len(used)) - start))
    if config.datatrove_export:
        (out / "datatrove").mkdir(exist_ok=True)
        ends = np.minimum(starts + lengths, len(used))
        ends = ends[ends > starts]
        _atomic_save(out / "datatrove" / "000_tokens.ds", lambda f: f.write(used.astype("<u4").tobytes()))
        _atomic_save(out / "datatrove" / "000_tokens.ds.index", lambda f: f.write(ends.astype("<u8").tobytes()))
    weights = mix.target_weights()
    manifest = {
        "format": "hf-llama3-packed-v1",
        "seq_len": config.seq_len,
        "sequences": int(n_seq),
        "eos_token_id": eos,
        "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__),
        "categories": sorted(targets),
        "target_weights": {c: round(weights[c], 6) for c in sorted(targets)},
        "available_tokens": dict(sorted(available.items())),
        "tokens_per_category": written,
        "documents": len(texts),
        "pieces": len(pieces),
        "seed": mix.seed,
        "shards": shards,
    }
    _atomic_save(out / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2, sort_keys=True).encode()))
    return manifest


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
