"""Shared, once-per-session objects for the tokenizer and chat-format tests.

Our tokenizer is converted once per test session into a temporary cache; Meta's `llama_models.llama3`
Tokenizer, ChatFormat and ToolUtils are the ground truth the tests compare against.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from llama_models.datatypes import BuiltinTool, RawMessage, StopReason, ToolCall, ToolPromptFormat
from llama_models.llama3.chat_format import ChatFormat
from llama_models.llama3.tokenizer import Tokenizer

from hf_llama3.chat_format import BUILTIN_TOOLS, DialogOptions, custom_tools_prompt, system_prompt
from hf_llama3.tokenization_llama3 import default_tokenizer_model_path, load_tokenizer

PYTHON_TAG_ID = 128010


@functools.cache
def cache_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="hf_llama3_tok_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def hf_tokenizer():
    return load_tokenizer(cache_dir=cache_dir())


@functools.cache
def meta_tokenizer() -> Tokenizer:
    return Tokenizer(default_tokenizer_model_path())


@functools.cache
def meta_chat_format() -> ChatFormat:
    return ChatFormat(meta_tokenizer())


def meta_encode_dialog(messages, *, add_generation_prompt=False, **options) -> list[int]:
    """Meta's ChatFormat tokens for one of our dialogs.

    The dialog is translated message by message into Meta's RawMessage/ToolCall objects and encoded with
    `ChatFormat.encode_message`. Meta writes ``<|python_tag|>`` only before code-interpreter calls, while
    its prompt_format.md (which we follow) opens built-in and JSON calls with it too: the tag is inserted
    after the header for those. Without a generation prompt, the assistant header that
    `encode_dialog_prompt` always appends is left out.
    """
    opts = DialogOptions(**options)
    fmt = ToolPromptFormat.function_tag if opts.tool_prompt_format == "function_tag" else ToolPromptFormat.json
    chat = meta_chat_format()
    raw: list[tuple[RawMessage, bool]] = []
    first_system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    system = system_prompt(first_system, opts)
    if system is not None:
        raw.append((RawMessage(role="system", content=system), False))
    tools_text = custom_tools_prompt(opts)
    if tools_text is not None:
        raw.append((RawMessage(role="user", content=tools_text), False))
    for message in messages[1:] if first_system is not None else messages:
        role = "tool" if message["role"] in ("tool", "ipython") else message["role"]
        calls = message.get("tool_calls") or []
        if not calls:
            stop = StopReason(message.get("stop_reason", "end_of_turn"))
            raw.append((RawMessage(role=role, content=message["content"], stop_reason=stop), False))
            continue
        function = calls[0]["function"]
        name, arguments = function["name"], function["arguments"]
        builtin = name in opts.builtin_tools and name in BUILTIN_TOOLS
        tool_name = BuiltinTool(name) if builtin else name
        tagged = builtin or opts.tool_prompt_format == "json"
        default_stop = "end_of_message" if tagged else "end_of_turn"
        stop = StopReason(message.get("stop_reason", default_stop))
        call = ToolCall(call_id="0", tool_name=tool_name, arguments=arguments)
        raw.append((RawMessage(role="assistant", content="", stop_reason=stop, tool_calls=[call]), tagged))
    tokens = [meta_tokenizer().special_tokens["<|begin_of_text|>"]]
    for message, tagged in raw:
        ids, _ = chat.encode_message(message, fmt)
        header = len(chat._encode_header(message.role))
        if tagged and ids[header] != PYTHON_TAG_ID:
            ids = [*ids[:header], PYTHON_TAG_ID, *ids[header:]]
        tokens += ids
    if add_generation_prompt:
        tokens += chat._encode_header("assistant")
    return tokens
