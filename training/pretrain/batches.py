"""Global training batches of any shape from packed shards, in a data order no batch shape can change.

Each source (a folder of packed shards from ``hf-llama3 curate``) is read as one contiguous token stream: the
shard rows concatenated, documents separated by EOS. A sequence of length ``L`` is the next ``L`` tokens of its
source, so the ramp (4096 -> 8192 -> 131072 tokens [3.4]) changes how the stream is cut, never which tokens come
next. The last ``eval_sequences`` rows of every source are held out for the evaluation loss. Document ids restart
after each EOS; the engine turns them into the document mask and restarting positions [3.2]. Each data-parallel rank
reads only its own rows of the global batch: the source draws and stream positions still advance over every row, so
the data order (and a resumed run) is the same under any layout. A row is read whole on its context-parallel ranks
(its document ids depend on every EOS before a chunk); the engine cuts the chunks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from data.shards import PackedShardReader

from .schedules import SourceSampler

logger = logging.getLogger(__name__)


class SourceStream:
    """One source's training tokens as an endless stream (epochs repeat, with a log line); the position is the state.

    A source is a shard folder, or one mix category of a shard folder (``{path, category}``): then the stream is the
    pieces of that category in shard order (each ending with its EOS), so one curated folder can feed a data-mix
    schedule over the paper's categories [3.1.2].
    """

    def __init__(self, name: str, source: str | dict, eval_sequences: int):
        self.name = name
        path, category = (source, None) if isinstance(source, str) else (source["path"], source.get("category"))
        self.path = str(path)
        self.reader = PackedShardReader(path)
        self.row_len = self.reader.seq_len
        self.eos = int(self.reader.manifest["eos_token_id"])
        self.train_rows = len(self.reader) - eval_sequences
        if self.train_rows < 1:
            raise ValueError(
                f"source {name!r} ({path}) has {len(self.reader)} sequences, not enough to hold out "
                f"eval_sequences={eval_sequences} and train on the rest: curate more data or lower eval_sequences."
            )
        self.spans = self._spans(category)
        self.size = int(sum(n for _, _, n in self.spans))
        if self.size == 0:
            raise ValueError(f"source {name!r}: category {category!r} has no tokens in the training rows of {path}.")
        self.ends = np.cumsum([n for _, _, n in self.spans])
        self.position = 0  # tokens consumed, over all epochs

    def _spans(self, category: str | None) -> list[tuple[int, int, int]]:
        """(row, start, length) pieces of the stream, in order."""
        if category is None:
            return [(row, 0, self.row_len) for row in range(self.train_rows)]
        categories = self.reader.manifest["categories"]
        if category not in categories:
            raise ValueError(f"source {self.name!r}: no category {category!r} in {self.path} (it has {categories}).")
        wanted = categories.index(category)
        spans = []
        for shard, first in zip(self.reader.manifest["shards"], self.reader.offsets):
            segments = np.load(Path(self.path) / shard["segments"])
            for row, start, length, cat in segments:
                if cat == wanted and first + row < self.train_rows:
                    spans.append((int(first + row), int(start), int(length)))
        return spans

    def skip(self, length: int) -> None:
        """Pass over the next ``length`` tokens without reading them (another data-parallel rank's row)."""
        boundary = (self.position + length - 1) // self.size  # the last epoch start inside the skipped tokens
        if boundary >= 1 and boundary * self.size >= self.position:
            logger.info("source %s: starting epoch %d", self.name, boundary + 1)
        self.position += length

    def take(self, length: int) -> np.ndarray:
        """The next ``length`` tokens."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        while filled < length:
            offset = self.position % self.size
            if offset == 0 and self.position:
                logger.info("source %s: starting epoch %d", self.name, self.position // self.size + 1)
            index = int(np.searchsorted(self.ends, offset, side="right"))
            row, start, span = self.spans[index]
            col = start + offset - (int(self.ends[index]) - span)
            n = min(length - filled, start + span - col)
            out[filled : filled + n] = self.reader[row]["input_ids"][col : col + n]
            filled += n
            self.position += n
        return out

    def eval_rows(self, seq_len: int) -> np.ndarray:
        """The held-out rows of the folder, cut to ``seq_len`` tokens: ``[eval_sequences, seq_len]``."""
        if seq_len > self.row_len:
            raise ValueError(
                f"eval_seq_len={seq_len} is longer than the shard rows of {self.name!r} ({self.row_len})."
            )
        rows = range(self.train_rows, len(self.reader))
        return np.stack([self.reader[i]["input_ids"][:seq_len] for i in rows])


def documents_from_eos(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Document index of each token of packed rows: a new document starts after every EOS token [3.2]."""
    starts = torch.zeros_like(input_ids)
    starts[:, 1:] = (input_ids[:, :-1] == eos_token_id).long()
    return starts.cumsum(dim=1)


def to_batch(input_ids: np.ndarray | torch.Tensor, eos: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and EOS-delimited ``document_ids`` for the engine / the model."""
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    return {"input_ids": input_ids, "document_ids": documents_from_eos(input_ids, eos)}


class BatchBuilder:
    """Builds each global batch: sequence by sequence, the sampler picks a source under the current weights."""

    def __init__(self, sources: dict[str, str | dict], eval_sequences: int):
        self.streams = {name: SourceStream(name, path, eval_sequences) for name, path in sorted(sources.items())}
        eos = {s.eos for s in self.streams.values()}
        if len(eos) != 1:
            raise ValueError(f"the sources use different EOS ids {sorted(eos)}: curate them with one tokenizer.")
        self.eos = eos.pop()
        self.sampler = SourceSampler()
        self.tokens_per_source = dict.fromkeys(self.streams, 0)

    def build(
        self, batch_size: int, seq_len: int, weights: dict[str, float], rows: slice | None = None
    ) -> dict[str, torch.Tensor]:
        """The next global batch ``[batch_size, seq_len]`` drawn under ``weights``, or only its ``rows`` (this
        data-parallel rank's, ``ParallelTrainer.local_rows``): the others are drawn and skipped, not read."""
        wanted = range(batch_size)[rows if rows is not None else slice(None)]
        read = []
        for index in range(batch_size):
            name = self.sampler.draw(weights)
            if index in wanted:
                read.append(self.streams[name].take(seq_len))
            else:
                self.streams[name].skip(seq_len)
            self.tokens_per_source[name] += seq_len
        return to_batch(np.stack(read), self.eos)

    def eval_batches(self, seq_len: int) -> dict[str, dict[str, torch.Tensor]]:
        """Held-out batch of every shard folder at ``seq_len``, named by its first source (category views of one
        folder share its held-out rows)."""
        batches: dict[str, dict[str, torch.Tensor]] = {}
        seen: set[str] = set()
        for name, stream in self.streams.items():
            if stream.path not in seen:
                seen.add(stream.path)
                batches[name] = to_batch(stream.eval_rows(seq_len), self.eos)
        return batches

    def state_dict(self) -> dict:
        return {
            "positions": {name: s.position for name, s in self.streams.items()},
            "sampler": self.sampler.state_dict(),
            "tokens_per_source": dict(self.tokens_per_source),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, position in state["positions"].items():
            if name not in self.streams:
                raise ValueError(f"the checkpoint's data state has source {name!r}, which the recipe does not list.")
            self.streams[name].position = int(position)
        self.sampler.load_state_dict(state["sampler"])
        self.tokens_per_source.update(state["tokens_per_source"])
