"""The converted Llama 3 tokenizer against Meta's tiktoken-based `llama_models.llama3.Tokenizer`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_models.llama3 import tokenizer as meta_tokenizer_module
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

import hf_llama3
from hf_llama3 import tokenization_llama3
from hf_llama3.tokenization_llama3 import SPECIAL_TOKENS, default_tokenizer_model_path, load_tokenizer

from .llama3_reference import cache_dir, hf_tokenizer, meta_tokenizer

HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that exercises every branch of the split pattern: code, contractions, digits, many scripts, emoji
# (with ZWJ sequences and skin tones), combining marks, odd Unicode whitespace and long whitespace runs.
VARIED_TEXTS = [
    "This is a test sentence.",
    'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\n',
    '#include <stdio.h>\nint main(){printf("%d\\n", 42);}\r\n',
    "I'm sure it's fine; they'LL say we'VE done what you'd DONE.",
    "1234567890 3.14159 1e-10 0x1F 1,000,000",
    "日本語のテキストです。中文文本。한국어 텍스트. Русский текст. Ελληνικά. עברית. العربية. हिन्दी. ไทย.",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦🏳️‍🌈 and flags 🇫🇷🇯🇵, math ∑∫√∞ ≠ ≤ ≥.",
    "e\u0301 a\u0308 Z\u0336a\u0337l\u0338g\u0335o",
    "tabs\t\tand   spaces    \n\n\n  \r\n\r\n\t \u00a0nbsp\u2003em\u3000ideo\u2028ls\u0085nel\x0b\x0c",
    " " * 300 + "x" + "\n" * 200 + "y" + "\t" * 100,
    "",
    " ",
    "<|eot_id|> is text unless special tokens are allowed",
    "\ufeffBOM and \x00 NUL \x1b[31mANSI\x1b[0m",
]


def _meta_encode(text: str, **kwargs) -> list[int]:
    return meta_tokenizer().encode(text, bos=False, eos=False, **kwargs)


def test_vocabulary_and_special_tokens_match_meta():
    tok, meta = hf_tokenizer(), meta_tokenizer()
    assert len(tok) == meta.n_words == 128256
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS} == meta.special_tokens
    assert list(meta.special_tokens) == list(SPECIAL_TOKENS)  # Meta's order, ids 128000..128255
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (meta.bos_id, meta.eos_id, meta.pad_id)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (128000, 128001, 128004)
    assert set(tok.all_special_ids) >= {128000, 128001, 128004}
    assert all(tok.added_tokens_decoder[i].special for i in range(128000, 128256))


def test_every_base_token_has_meta_bytes():
    """All 128000 BPE tokens map to exactly the bytes Meta's tiktoken model gives them."""
    tok, meta = hf_tokenizer(), meta_tokenizer()
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    pieces = tok.convert_ids_to_tokens(list(range(128000)))
    mismatched = [
        i
        for i, piece in enumerate(pieces)
        if bytes(byte_of[c] for c in piece) != meta.model.decode_single_token_bytes(i)
    ]
    assert mismatched == []


@pytest.mark.parametrize("text", VARIED_TEXTS, ids=range(len(VARIED_TEXTS)))
def test_encode_matches_meta(text):
    tok = hf_tokenizer()
    assert tok(text, add_special_tokens=False)["input_ids"] == _meta_encode(text, allowed_special="all")
    assert tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == _meta_encode(text)
    assert tok(text)["input_ids"] == meta_tokenizer().encode(text, bos=True, eos=False, allowed_special="all")


def test_encode_matches_meta_on_long_text():
    """50k+ characters mixing prose, code and scripts, with ordinary whitespace (Meta's `Tokenizer.encode`
    only re-splits runs of more than 25,000 non-space or space characters, which are absent here)."""
    text = "".join(VARIED_TEXTS[:10]) * 60
    text += Path(meta_tokenizer_module.__file__).read_text(encoding="utf-8") * 3
    assert len(text) > 50_000
    assert "<|begin_of_text|>" in text  # Meta's source names its special tokens
    tok = hf_tokenizer()
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == _meta_encode(text)
    assert tok.decode(ids) == text
    assert tok(text, add_special_tokens=False)["input_ids"] == _meta_encode(text, allowed_special="all")


@HYPOTHESIS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_encode_decode_match_meta_on_random_text(text):
    tok = hf_tokenizer()
    ids = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == _meta_encode(text)
    assert tok.decode(ids) == text


# Characters the split pattern treats specially, drawn densely so that contractions, digit groups,
# whitespace-before-newline and punctuation runs collide often.
_DENSE = st.text(
    alphabet=list(" \t\n\r\u00a0\u3000'sStTlLdDmMrveVE0123456789.,;!?-_(){}[]\"#éжんع😀\u200d"), max_size=60
)


@HYPOTHESIS
@given(_DENSE)
def test_encode_matches_meta_on_dense_pattern_text(text):
    assert hf_tokenizer()(text, add_special_tokens=False)["input_ids"] == _meta_encode(text)


@HYPOTHESIS
@given(st.lists(st.integers(min_value=0, max_value=128255), max_size=40))
def test_decode_matches_meta_on_random_ids(ids):
    """Any id sequence, including ones that cut UTF-8 characters in half, decodes as Meta decodes it."""
    assert hf_tokenizer().decode(ids) == meta_tokenizer().decode(ids)


def test_save_pretrained_reloads_with_plain_autotokenizer(tmp_path):
    tok = hf_tokenizer()
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "auto_map" not in config
    # A fresh interpreter that never imports hf_llama3: stock transformers only, no remote code.
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(tmp_path)!r})\n"
        "msgs = [{'role': 'user', 'content': 'Hi'}]\n"
        "print(json.dumps({'ids': tok('Hello world')['input_ids'], 'pad': tok.pad_token_id, "
        "'chat': tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), "
        "'mods': sorted(m for m in sys.modules if m.startswith('hf_llama3'))}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["mods"] == []
    assert result["ids"] == tok("Hello world")["input_ids"] == [128000, 9906, 1917]
    assert result["pad"] == 128004
    assert result["chat"] == tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(reloaded, PreTrainedTokenizerFast)
    assert reloaded.chat_template == tok.chat_template


def test_loads_from_hf_folder_and_from_user_tokenizer_model(tmp_path):
    tok = hf_tokenizer()
    text = VARIED_TEXTS[5] + VARIED_TEXTS[1]
    tok.save_pretrained(tmp_path / "hf")
    from_folder = load_tokenizer(tmp_path / "hf")
    assert from_folder(text)["input_ids"] == tok(text)["input_ids"]
    # Meta's checkpoint layout: a folder holding tokenizer.model; or the file itself under another name.
    (tmp_path / "meta").mkdir()
    shutil.copy(default_tokenizer_model_path(), tmp_path / "meta" / "tokenizer.model")
    shutil.copy(default_tokenizer_model_path(), tmp_path / "my_tokenizer.model")
    for source in (tmp_path / "meta", tmp_path / "my_tokenizer.model"):
        loaded = load_tokenizer(source, cache_dir=cache_dir())  # same bytes: served from the session cache
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.chat_template == tok.chat_template


def _write_tiktoken_file(path: Path, ranks: dict[bytes, int]) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))


def _small_tiktoken_model(folder: Path) -> tuple[Path, dict[bytes, int]]:
    """A user's own (tiny) tiktoken vocabulary: the 256 bytes plus a few merges."""
    ranks = {bytes([b]): b for b in range(256)}
    for merged in (b"th", b"the", b" t", b" the", b"in", b"ing", b"  ", b"\n\n"):
        ranks[merged] = len(ranks)
    folder.mkdir(parents=True, exist_ok=True)
    _write_tiktoken_file(folder / "tokenizer.model", ranks)
    return folder / "tokenizer.model", ranks


SMALL_TEXT = "the thing in the   morning\n\nbathing 123 é"


def test_user_tiktoken_model_gets_special_tokens_after_its_own_vocabulary(tmp_path):
    """Ids equal tiktoken's own encoder on the user's ranks; the 256 specials follow the vocabulary."""
    model, ranks = _small_tiktoken_model(tmp_path / "user")
    tok = load_tokenizer(model, cache_dir=tmp_path / "cache")
    reference = tiktoken.Encoding(
        name="user",
        pat_str=tokenization_llama3.LLAMA3_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)},
    )
    assert tok(SMALL_TEXT, add_special_tokens=False)["input_ids"] == reference.encode(SMALL_TEXT)
    assert tok.convert_tokens_to_ids("<|begin_of_text|>") == len(ranks)
    assert tok.pad_token_id == len(ranks) + 4
    assert len(tok) == len(ranks) + 256


def test_cache_serves_second_load_and_honours_env(monkeypatch):
    """The session's conversion was cached atomically; a later load reads it instead of converting."""
    hf_tokenizer()
    files = [p for p in cache_dir().rglob("*") if p.is_file()]
    assert files and {p.name for p in files} == {"tokenizer.json"}  # no temp files left behind

    def fail(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(tokenization_llama3, "convert_tiktoken_model", fail)
    monkeypatch.setenv("HF_LLAMA3_CACHE", str(cache_dir()))
    second = load_tokenizer()
    assert second("cache hit")["input_ids"] == hf_tokenizer()("cache hit")["input_ids"]
    assert second.chat_template == hf_tokenizer().chat_template


def test_damaged_cache_is_rebuilt(tmp_path):
    model, _ = _small_tiktoken_model(tmp_path / "user")
    expected = load_tokenizer(model, cache_dir=tmp_path / "cache")(SMALL_TEXT)["input_ids"]
    (cached,) = (tmp_path / "cache").rglob("tokenizer.json")
    cached.write_text('{"truncated": ')
    assert load_tokenizer(model, cache_dir=tmp_path / "cache")(SMALL_TEXT)["input_ids"] == expected
    assert json.loads(cached.read_text())["model"]["type"] == "BPE"


def test_unwritable_cache_still_loads(tmp_path):
    model, _ = _small_tiktoken_model(tmp_path / "user")
    expected = load_tokenizer(model, cache_dir=tmp_path / "cache")(SMALL_TEXT)["input_ids"]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    assert load_tokenizer(model, cache_dir=blocker)(SMALL_TEXT)["input_ids"] == expected


def test_bad_paths_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Tokenizer not found"):
        load_tokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json .* or tokenizer\.model"):
        load_tokenizer(tmp_path)
    garbage = tmp_path / "garbage.model"
    garbage.write_text("this is not base64 and no rank\n")
    with pytest.raises(ValueError, match="not a tiktoken BPE file"):
        load_tokenizer(garbage, cache_dir=tmp_path / "cache")
    empty = tmp_path / "empty.model"
    empty.write_text("")
    with pytest.raises(ValueError, match="holds no BPE ranks"):
        load_tokenizer(empty, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").rglob("*.json")) == []  # nothing half-written


def test_exported_from_package():
    assert hf_llama3.load_tokenizer is load_tokenizer
    assert os.fspath(default_tokenizer_model_path()).endswith(os.path.join("llama3", "tokenizer.model"))
