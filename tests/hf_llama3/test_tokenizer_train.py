"""`hf-llama3 tokenizer train`: a BPE tokenizer in Llama 3's layout, checked with Meta's tiktoken Tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import llama_models
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
from transformers import AutoTokenizer

from hf_llama3.chat_format import encode_dialog
from hf_llama3.cli import main as cli_main
from hf_llama3.tokenization_llama3 import SPECIAL_TOKENS
from hf_llama3.tokenizer_train import TokenizerTrainConfig, train_tokenizer

HELD_OUT = [
    "The tokenizer keeps code indentation:\n    return x  # comment\n\n",
    "Ünïcödé, 日本語, русский текст and emoji 😀 survive the round trip.",
    "I'm sure they'll say it's 12345 tokens.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    """Text shipped inside Meta's llama-models package: its prompt-format guides and Python sources."""
    root = Path(llama_models.__file__).parent
    folder = tmp_path_factory.mktemp("corpus")
    txt = folder / "guides.txt"
    txt.write_text((root / "llama3_1" / "prompt_format.md").read_text(encoding="utf-8"), encoding="utf-8")
    jsonl = folder / "code.jsonl"
    sources = sorted((root / "llama3").glob("*.py"))
    jsonl.write_text("".join(json.dumps({"text": p.read_text(encoding="utf-8")}) + "\n" for p in sources))
    return [txt, jsonl]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("trained") / "tok"
    return train_tokenizer(
        TokenizerTrainConfig(inputs=[str(p) for p in corpus], output_dir=str(output), vocab_size=700)
    )


def test_trained_tokenizer_matches_meta_tiktoken_tokenizer(trained):
    meta = MetaTokenizer(trained / "tokenizer.model")
    tok = AutoTokenizer.from_pretrained(trained)
    base = meta.n_words - 256
    assert 256 < base <= 700
    assert len(tok) == meta.n_words
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == meta.special_tokens
    assert list(meta.special_tokens) == list(SPECIAL_TOKENS)
    assert tok.pad_token_id == base + 4 and tok.bos_token_id == base
    for text in HELD_OUT:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == meta.encode(text, bos=False, eos=False)
        assert tok.decode(ids) == text
    sample = Path(llama_models.__file__).parent.joinpath("llama3", "tokenizer.py").read_text(encoding="utf-8")
    assert len(tok(sample)["input_ids"]) < 0.5 * len(sample.encode())  # merges learned from the corpus compress


def test_trained_tokenizer_speaks_the_chat_format(trained):
    tok = AutoTokenizer.from_pretrained(trained)
    dialog = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    out = tok.apply_chat_template(dialog, return_dict=True, return_assistant_tokens_mask=True)
    encoded = encode_dialog(tok, dialog)
    assert out["input_ids"] == encoded.input_ids
    assert out["assistant_masks"] == [int(label != -100) for label in encoded.labels]


def test_cli_trains_and_reports_user_errors(corpus, tmp_path, capsys):
    output = tmp_path / "cli-tok"
    args = ["tokenizer", "train", "--input", *map(str, corpus), "--output", str(output), "--vocab-size", "400"]
    assert cli_main(args) == 0
    assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in output.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert cli_main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    assert cli_main(["tokenizer", "train", "--input", str(bad), "--output", str(tmp_path / "x")]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert (
        cli_main(["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "y")])
        == 2
    )
    assert "corpus file not found" in capsys.readouterr().err
    assert cli_main([*args[:-2], "--vocab-size", "100", "--overwrite"]) == 2
    assert "must exceed the 256-byte alphabet" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_pair(trained):
    """(our tokenizer reloaded with stock AutoTokenizer, Meta's Tokenizer on the written tokenizer.model)."""
    return AutoTokenizer.from_pretrained(trained), MetaTokenizer(trained / "tokenizer.model")


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
    | st.text("the lin\n\tokdf():_'s01", max_size=60)
)
def test_trained_tokenizer_matches_meta_on_random_text(trained_pair, text):
    tok, meta = trained_pair
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == meta.encode(text, bos=False, eos=False)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("max_run", [1, 3, 25_000])
def test_long_runs_are_split_where_meta_splits_them(max_run):
    """Our split of over-long runs equals Meta's `_split_whitespaces_or_nonwhitespaces` (its encoder's rule)."""
    from hf_llama3.tokenizer_train import MAX_RUN_CHARS, split_long_runs

    assert MAX_RUN_CHARS == 25_000
    texts = ["", "a", "ab  cd", " " * 7 + "x" * 9 + "\n\n" + "y" * 4, "z" * 60_001 + " " * 30_000 + "end"]
    for text in texts:
        ours = list(split_long_runs(text, max_run))
        meta = [piece for piece in MetaTokenizer._split_whitespaces_or_nonwhitespaces(text, max_run) if piece]
        assert ours == meta, text[:40]
        assert "".join(ours) == text


def test_a_megabyte_line_without_whitespace_trains(tmp_path):
    """Before runs were split, BPE training on one 1 MB word ran for hours (issue 12); now it is 40 words."""
    import random

    rng = random.Random(0)
    corpus = tmp_path / "one_line.txt"
    corpus.write_text("".join(rng.choice("abcdefghij") for _ in range(1_000_000)) + "\n", encoding="utf-8")
    out = train_tokenizer(TokenizerTrainConfig(inputs=[str(corpus)], output_dir=str(tmp_path / "tok"), vocab_size=300))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer("abcdefghij" * 3).input_ids) < 30  # merges were learnt from the long line
