"""The real Llama 3 tokenizer as a transformers fast tokenizer.

Meta ships the Llama 3 tokenizer in tiktoken's format inside its `llama-models` package
(``llama_models/llama3/tokenizer.model``): 128000 byte-level BPE ranks (100K from tiktoken plus 28K
added for non-English languages [paper 3.2]) followed by 256 special tokens, 128256 ids in all.
[`load_tokenizer`] converts that file with transformers' [`~convert_slow_tokenizer.TikTokenConverter`]
(same split pattern, byte-level alphabet, merges ordered by rank), appends the special tokens in Meta's
order, attaches the Llama 3.1 chat template and caches the resulting ``tokenizer.json`` so later loads
skip the conversion. Everything it builds is a stock [`PreTrainedTokenizerFast`]: ``save_pretrained``
output reloads with plain ``AutoTokenizer.from_pretrained``, no remote code.
"""

from __future__ import annotations

import hashlib
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from .checkpoint_io import atomic_output_file

logger = logging.getLogger(__name__)

# Meta's pre-tokenizer split pattern (llama_models/llama3/tokenizer.py, `Tokenizer.pat_str`): contractions,
# letter runs with one optional leading non-letter, numbers in groups of at most 3 digits, punctuation runs,
# newline runs and whitespace runs.
LLAMA3_SPLIT_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# The named special tokens, in Meta's order; they take ids num_base_tokens + 0, 1, ... (128000 onwards).
NAMED_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message: the model expects a tool result next
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",  # opens a tool call
    "<|image|>",
)
# Meta reserves 256 special ids in all; the unnamed ones continue the reserved_special_token numbering.
NUM_SPECIAL_TOKENS = 256
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + tuple(
    f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(NAMED_SPECIAL_TOKENS))
)

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
# Padding uses the token Meta set aside for it, never EOS (a padded EOS would teach the model to stop).
PAD_TOKEN = "<|finetune_right_pad_id|>"
# Llama 3.1 context length: 128K tokens [paper 3.4.2].
MODEL_MAX_LENGTH = 131072

# Bump when the conversion below changes, so stale cached tokenizer.json files are not reused.
_CONVERSION_VERSION = "1"
_CACHE_ENV = "HF_LLAMA3_CACHE"
_DEFAULT_CACHE_DIR = Path("~/.cache/hf_llama3")


def default_tokenizer_model_path() -> Path:
    """Path of the real Llama 3 ``tokenizer.model`` shipped in Meta's `llama-models` package."""
    try:
        import llama_models.llama3 as meta_llama3
    except ImportError as err:  # pragma: no cover - llama-models is a hard dependency in setup.py
        raise FileNotFoundError(
            "The Llama 3 tokenizer ships in Meta's `llama-models` package; install it with `pip install llama-models`."
        ) from err
    return Path(meta_llama3.__file__).parent / "tokenizer.model"


def load_chat_template() -> str:
    """The Llama 3.1 dialog format as a Jinja chat template (shipped as package data)."""
    return resources.files("hf_llama3").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(_CACHE_ENV) or _DEFAULT_CACHE_DIR).expanduser()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_tiktoken_model(model_path: str | os.PathLike) -> Tokenizer:
    """Convert a tiktoken-format BPE file to a `tokenizers.Tokenizer` with Llama 3's special tokens.

    The special tokens get ids ``len(ranks) + i`` in Meta's order, so the real file gives 128000..128255.
    A post-processor prepends ``<|begin_of_text|>`` when ``add_special_tokens=True`` (as Meta's
    ``Tokenizer.encode(bos=True)`` and Meta's own Hugging Face exports do).
    """
    model_path = Path(model_path)
    converter = TikTokenConverter(
        vocab_file=str(model_path), pattern=LLAMA3_SPLIT_PATTERN, extra_special_tokens=list(SPECIAL_TOKENS)
    )
    try:
        tokenizer = converter.converted()
    except (ValueError, UnicodeError) as err:  # binascii.Error is a ValueError
        raise ValueError(f"{model_path} is not a tiktoken BPE file (lines of `<base64 token> <rank>`): {err}") from err
    num_base_tokens = tokenizer.get_vocab_size(with_added_tokens=False)
    if num_base_tokens == 0:
        raise ValueError(f"{model_path} holds no BPE ranks; expected lines of `<base64 token> <rank>`.")
    expected = {token: num_base_tokens + i for i, token in enumerate(SPECIAL_TOKENS)}
    actual = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    if actual != expected:
        raise ValueError(
            f"{model_path}: the special tokens did not land on ids {num_base_tokens}..{num_base_tokens + 255}; "
            "the file must hold only the base BPE ranks 0..N-1 (tiktoken format), without special tokens."
        )
    bos_id = expected[BOS_TOKEN]
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )
    return tokenizer


def _write_atomically(tokenizer: Tokenizer, target: Path) -> None:
    with atomic_output_file(target) as tmp:
        tokenizer.save(str(tmp))


def _cached_file(model_path: Path, cache_dir: str | os.PathLike | None) -> Path:
    """Where the conversion of ``model_path`` is cached: keyed by the file's bytes and the conversion version."""
    key = f"{_file_digest(model_path)[:24]}-v{_CONVERSION_VERSION}"
    return _cache_root(cache_dir) / "tokenizers" / key / "tokenizer.json"


def _convert_and_cache(model_path: Path, cached_file: Path) -> dict[str, Any]:
    """Convert ``model_path``; the source to build from: the written cache file, or the object if writing fails.

    Building from the file also skips the deep copy transformers makes of a passed tokenizer object.
    """
    logger.info("Converting %s to a fast tokenizer (cached in %s).", model_path, cached_file.parent)
    tokenizer = convert_tiktoken_model(model_path)
    try:
        _write_atomically(tokenizer, cached_file)
    except OSError as err:
        logger.warning(
            "Could not cache the converted tokenizer at %s (%s); it will be converted again.", cached_file, err
        )
        return {"tokenizer_object": tokenizer}
    return {"tokenizer_file": str(cached_file)}


def _wrap(source: dict[str, Any]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        **source,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Right padding: the pad token's very name says so; generation code left-pads itself when needed.
        padding_side="right",
        # Byte-level BPE decodes exactly; the "clean up" pass would drop spaces before punctuation.
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=load_chat_template(),
    )


def _load_hf_folder(folder: Path) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"{folder}: expected a fast (tokenizer.json) tokenizer, got {type(tokenizer).__name__}.")
    if tokenizer.pad_token is None and PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = PAD_TOKEN
    if not tokenizer.chat_template:
        tokenizer.chat_template = load_chat_template()
    return tokenizer


def load_tokenizer(
    path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """Load the Llama 3 tokenizer as a transformers fast tokenizer.

    Args:
        path: ``None`` for the real Llama 3 tokenizer from Meta's `llama-models` package; a tiktoken-format
            ``tokenizer.model`` file (or a folder holding one, as Meta's checkpoints do); or a Hugging Face
            tokenizer folder (with ``tokenizer.json``), which keeps its own chat template when it has one.
        cache_dir: where converted ``tokenizer.json`` files are cached. Default: ``$HF_LLAMA3_CACHE`` or
            ``~/.cache/hf_llama3``.

    Returns:
        A [`PreTrainedTokenizerFast`] with bos ``<|begin_of_text|>``, eos ``<|end_of_text|>``, pad
        ``<|finetune_right_pad_id|>`` and the Llama 3.1 chat template (see `hf_llama3.chat_format`).
    """
    model_path = default_tokenizer_model_path() if path is None else Path(path).expanduser()
    if model_path.is_dir():
        if (model_path / "tokenizer.json").is_file():
            return _load_hf_folder(model_path)
        if not (model_path / "tokenizer.model").is_file():
            raise FileNotFoundError(
                f"{model_path}: no tokenizer.json (Hugging Face folder) or tokenizer.model (tiktoken file) in it."
            )
        model_path = model_path / "tokenizer.model"
    if not model_path.is_file():
        raise FileNotFoundError(
            f"Tokenizer not found at {model_path}: pass a tiktoken `tokenizer.model` file or a Hugging Face "
            "tokenizer folder, or no path for the Llama 3 tokenizer of the `llama-models` package."
        )
    cached_file = _cached_file(model_path, cache_dir)
    if cached_file.is_file():
        try:
            return _wrap({"tokenizer_file": str(cached_file)})
        except Exception as err:  # a damaged cache entry is rebuilt, never trusted
            logger.warning("Ignoring unreadable cached tokenizer %s (%s); converting again.", cached_file, err)
    return _wrap(_convert_and_cache(model_path, cached_file))
