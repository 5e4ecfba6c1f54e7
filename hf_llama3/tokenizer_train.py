"""Train a byte-level BPE tokenizer laid out like Llama 3's, on a user's corpus (``hf-llama3 tokenizer train``).

Llama 3's tokenizer is byte-level BPE with tiktoken's split pattern and 256 special tokens after the base
vocabulary [paper 3.2]. This trains the base vocabulary on your text with the same split pattern and byte
alphabet (`tokenizers`' BPE trainer), writes it in tiktoken's ``tokenizer.model`` format (the format Meta
ships, which Meta's ``llama_models.llama3.Tokenizer`` reads), then builds the Hugging Face folder from that
file exactly as the real tokenizer is built (`hf_llama3.load_tokenizer`): special tokens at
``base_size + i`` in Meta's order, pad ``<|finetune_right_pad_id|>``, the Llama 3.1 chat template.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .checkpoint_io import atomic_output_dir
from .cli_types import positive_int
from .tokenization_llama3 import LLAMA3_SPLIT_PATTERN, load_tokenizer

logger = logging.getLogger(__name__)

# The real base vocabulary: 100K tiktoken tokens + 28K added for other languages [paper 3.2].
LLAMA3_BASE_VOCAB_SIZE = 128000
_BYTE_ALPHABET = 256


@dataclass
class TokenizerTrainConfig:
    """Settings of ``hf-llama3 tokenizer train``.

    Args:
        inputs: text corpora: ``.txt`` files (each line a piece of text) or ``.jsonl`` files (one JSON object a
            line, the text under ``text_field``).
        output_dir: the Hugging Face tokenizer folder to write (``tokenizer.model`` in tiktoken format beside it).
        vocab_size: base vocabulary size, byte alphabet included; the 256 special tokens come on top.
            Llama 3 uses 128000 [paper 3.2]; a small corpus may yield fewer tokens than asked.
        min_frequency: a pair must occur this often to be merged.
        text_field: the JSON key holding the text in ``.jsonl`` inputs.
        overwrite: replace an existing ``output_dir`` (only a folder hf-llama3 wrote, never one holding an input).
    """

    inputs: list[str]
    output_dir: str
    vocab_size: int = LLAMA3_BASE_VOCAB_SIZE
    min_frequency: int = 2
    text_field: str = "text"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("no input files: pass one or more .txt or .jsonl corpora.")
        for path in self.inputs:
            if not Path(path).is_file():
                raise FileNotFoundError(f"corpus file not found: {path}")
            if Path(path).suffix not in (".txt", ".jsonl"):
                raise ValueError(
                    f"{path}: use .txt (a text a line) or .jsonl (objects with a {self.text_field!r} key)."
                )
        if self.vocab_size <= _BYTE_ALPHABET:
            raise ValueError(f"vocab_size={self.vocab_size} must exceed the {_BYTE_ALPHABET}-byte alphabet.")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency={self.min_frequency} must be at least 1.")
        if Path(self.output_dir).exists() and not self.overwrite:
            raise FileExistsError(f"{self.output_dir} exists; pass --overwrite to replace it.")


# Meta's tiktoken encoder cuts runs of more than 25,000 consecutive whitespace or non-whitespace characters before
# pre-tokenizing (llama_models `Tokenizer.encode`); training does the same, so a 1 MB line without a space is 40
# words of 25,000 characters, not one word that BPE training would merge over for hours.
MAX_RUN_CHARS = 25_000


def split_long_runs(text: str, max_run: int = MAX_RUN_CHARS) -> Iterator[str]:
    """``text`` in pieces, cut only inside runs of more than ``max_run`` whitespace or non-whitespace characters."""
    start, run, in_space = 0, 0, None
    for index, char in enumerate(text):
        is_space = char.isspace()
        run = run + 1 if is_space == in_space else 1
        in_space = is_space
        if run > max_run:
            yield text[start:index]
            start, run = index, 1
    if start < len(text):
        yield text[start:]


def iter_corpus(config: TokenizerTrainConfig) -> Iterator[str]:
    """Texts of the corpus files, in order, over-long runs split (`split_long_runs`)."""
    for text in _corpus_texts(config):
        if len(text) <= MAX_RUN_CHARS:
            yield text
        else:
            yield from split_long_runs(text)


def _corpus_texts(config: TokenizerTrainConfig) -> Iterator[str]:
    for path in config.inputs:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if Path(path).suffix == ".txt":
                    yield line
                    continue
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[config.text_field]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(
                        f"{path}:{number}: expected a JSON object with a string {config.text_field!r} ({err})."
                    ) from err
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{number}: {config.text_field!r} must be a string.")
                yield text


def train_bpe(config: TokenizerTrainConfig) -> Tokenizer:
    """Train byte-level BPE with Llama 3's split pattern (no special tokens; they are appended later)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train_from_iterator(iter_corpus(config), trainer=trainer)
    return tokenizer


def write_tiktoken_model(tokenizer: Tokenizer, path: str | os.PathLike) -> int:
    """Write the BPE vocabulary as tiktoken ranks (``<base64 bytes> <rank>`` lines); returns the base size.

    Ranks follow token ids, which the trainer assigns in merge order after the 256 bytes, so tiktoken's
    lowest-rank-first merging replays the learned merges.
    """
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    vocab = sorted(tokenizer.get_vocab(with_added_tokens=False).items(), key=lambda item: item[1])
    if [i for _, i in vocab] != list(range(len(vocab))):
        raise ValueError("the trained vocabulary has gaps in its ids; cannot write tiktoken ranks.")
    lines = [f"{base64.b64encode(bytes(byte_of[c] for c in token)).decode()} {rank}\n" for token, rank in vocab]
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(vocab)


def train_tokenizer(config: TokenizerTrainConfig) -> Path:
    """Train, write ``tokenizer.model`` and the Hugging Face files into ``config.output_dir``; returns it."""
    output = Path(config.output_dir)
    # Only a folder a previous `tokenizer train` wrote may be replaced, never one holding the corpus.
    with atomic_output_dir(output, overwrite=config.overwrite, inputs=config.inputs) as staging:
        base_size = write_tiktoken_model(train_bpe(config), staging / "tokenizer.model")
        logger.info("Trained %d base tokens (asked for %d).", base_size, config.vocab_size)
        # Built from the tiktoken file like the real tokenizer, so both formats give the same ids.
        hf_tokenizer = load_tokenizer(staging / "tokenizer.model", cache_dir=staging / ".cache")
        shutil.rmtree(staging / ".cache")
        hf_tokenizer.save_pretrained(staging)
    return output


def main(argv: list[str] | None = None) -> int:
    """``hf-llama3 tokenizer train --input CORPUS... --output DIR [--vocab-size N]``."""
    parser = argparse.ArgumentParser(prog="hf-llama3 tokenizer", description="Llama 3 tokenizer tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train a BPE tokenizer with Llama 3's split pattern and special tokens on your corpus"
    )
    train.add_argument("--input", nargs="+", required=True, help=".txt or .jsonl corpus files")
    train.add_argument("--output", required=True, help="tokenizer folder to write (must not exist unless --overwrite)")
    train.add_argument("--vocab-size", type=positive_int, default=LLAMA3_BASE_VOCAB_SIZE, help="base vocabulary size")
    train.add_argument("--min-frequency", type=positive_int, default=2, help="minimum pair count to merge")
    train.add_argument("--text-field", default="text", help="JSON key of the text in .jsonl inputs")
    train.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = TokenizerTrainConfig(
        inputs=args.input,
        output_dir=args.output,
        vocab_size=args.vocab_size,
        min_frequency=args.min_frequency,
        text_field=args.text_field,
        overwrite=args.overwrite,
    )
    output = train_tokenizer(config)
    print(f"wrote tokenizer to {output} (tokenizer.model in tiktoken format + Hugging Face files)")
    return 0
