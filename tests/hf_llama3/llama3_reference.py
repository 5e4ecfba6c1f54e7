"""Shared, once-per-session objects for the tokenizer and chat-format tests.

Our tokenizer is converted once per test session into a temporary cache; Meta's `llama_models.llama3`
Tokenizer, ChatFormat and ToolUtils are the ground truth the tests compare against.
"""

from __future__ import annotations

import atexit
import functools
import json
import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import strategies as st
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

    The dialog is translated message by message into Meta's RawMessage/ToolCall objects (``stop_reason``
    passed through as it is, None when absent) and encoded with `ChatFormat.encode_message`, untouched: it is
    what ``python_tag_style="chat_format"`` must reproduce. Without a generation prompt, the assistant header
    that `encode_dialog_prompt` always appends is left out.
    """
    opts = DialogOptions(**options)
    fmt = ToolPromptFormat.function_tag if opts.tool_prompt_format == "function_tag" else ToolPromptFormat.json
    chat = meta_chat_format()
    raw: list[RawMessage] = []
    first_system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    system = system_prompt(first_system, opts)
    if system is not None:
        raw.append(RawMessage(role="system", content=system))
    tools_text = custom_tools_prompt(opts)
    if tools_text is not None:
        raw.append(RawMessage(role="user", content=tools_text))
    for message in messages[1:] if first_system is not None else messages:
        role = "tool" if message["role"] in ("tool", "ipython") else message["role"]
        calls = message.get("tool_calls") or []
        stop = StopReason(message["stop_reason"]) if message.get("stop_reason") is not None else None
        if not calls:
            raw.append(RawMessage(role=role, content=message["content"], stop_reason=stop))
            continue
        function = calls[0]["function"]
        name, arguments = function["name"], function["arguments"]
        builtin = name in opts.builtin_tools and name in BUILTIN_TOOLS
        call = ToolCall(call_id="0", tool_name=BuiltinTool(name) if builtin else name, arguments=arguments)
        raw.append(RawMessage(role="assistant", content="", stop_reason=stop, tool_calls=[call]))
    tokens = [meta_tokenizer().special_tokens["<|begin_of_text|>"]]
    for message in raw:
        tokens += chat.encode_message(message, fmt)[0]
    if add_generation_prompt:
        tokens += chat._encode_header("assistant")
    return tokens


@functools.cache
def prompt_format_examples() -> list[tuple[str, str]]:
    """(input prompt, model response) pairs of Meta's llama_models/llama3_1/prompt_format.md, in order."""
    import llama_models

    md = (Path(llama_models.__file__).parent / "llama3_1" / "prompt_format.md").read_text(encoding="utf-8")
    inputs = re.findall(r"##### Input Prompt Format\n```\n(.*?)\n```", md, re.S)
    responses = re.findall(r"##### Model Response Format\n```\n(.*?)\n```", md, re.S)
    assert len(inputs) == len(responses) == 7, "prompt_format.md changed layout"
    return list(zip(inputs, responses))


def _md_block(text: str, start: str, end: str) -> str:
    begin = text.index(start) + len(start)
    return text[begin : text.index(end, begin)]


@functools.cache
def prompt_format_dialogs() -> dict[int, tuple[list[dict], dict]]:
    """Our (messages, options) for the dialogs of prompt_format.md examples 1-6 (0 is base-model text)."""
    examples = prompt_format_examples()
    gold = {
        "role": "user",
        "content": "Search the web for the latest price of 1oz gold?",
    }
    pi_result = _md_block(examples[4][0], "ipython<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant")
    json_tool = json.loads(_md_block(examples[5][0], "JSON format:\n", "\n\nReturn function calls in JSON format."))
    tag_function = json.loads(_md_block(examples[6][0], "Music site':\n", "\n\nThink very carefully"))
    songs_user = {"role": "user", "content": "Use tools to get latest trending songs"}
    system = {"role": "system", "content": "You are a helpful assistant.\n"}
    dated = {"date_string": "21 September 2024"}
    return {
        1: (
            [
                {"role": "system", "content": "You are a helpful assistant"},
                {"role": "user", "content": "Answer who are you in the form of jeopardy?"},
            ],
            {},
        ),
        2: ([system, gold], {"builtin_tools": ["brave_search", "wolfram_alpha"], **dated}),
        # Example 3 writes the system turn by hand ("Environment: ipython" without a trailing newline).
        3: (
            [
                {"role": "system", "content": "Environment: ipython"},
                {
                    "role": "user",
                    "content": "Write code to check if number is prime, use that to see if the number 7 is prime",
                },
            ],
            {},
        ),
        4: (
            [
                {"role": "user", "content": "What is the 100th decimal of pi?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"function": {"name": "wolfram_alpha", "arguments": {"query": "100th decimal of pi"}}}
                    ],
                },
                {"role": "ipython", "content": pi_result},
            ],
            {"builtin_tools": ["brave_search", "wolfram_alpha"]},
        ),
        5: ([system, songs_user], {"tools": [json_tool], **dated}),
        6: (
            [system, songs_user],
            {"tools": [{"type": "function", "function": tag_function}], "tool_prompt_format": "function_tag", **dated},
        ),
    }


# --- random dialogs for property tests ---
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24)
# Text whose rendering tokenizes like Meta's piecewise encoding: no special-token text, and no leading
# whitespace holding a line break (it would merge with the header's "\n\n"; see chat_format's docstring).
TEMPLATE_TEXT = ANY_TEXT.filter(lambda s: "<|" not in s and not re.match(r"\s*[\r\n]", s))
_ARG_TEXT = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="\"'{}\\"), max_size=12
)
_ARGS = st.dictionaries(
    st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True),
    st.one_of(st.integers(-1000, 1000), st.booleans(), st.none(), _ARG_TEXT),
    max_size=3,
)
_CODE = st.sampled_from(["print(1 + 1)", "import math\nprint(math.pi)", "x = [i * i for i in range(5)]\nx"])


@st.composite
def dialogs(draw, text=ANY_TEXT):
    """A random valid dialog and its options: every role, built-in and custom tools, multi-turn."""
    fmt = draw(st.sampled_from(["json", "function_tag"]))
    builtin = draw(st.lists(st.sampled_from(BUILTIN_TOOLS), unique=True, max_size=3))
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"custom_{i}",
                "description": draw(text),
                "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
            },
        }
        for i in range(draw(st.integers(0, 2)))
    ]
    declared = builtin + [tool["function"]["name"] for tool in tools]
    options = {"tool_prompt_format": fmt, "builtin_tools": builtin, "tools": tools}
    options["date_string"] = draw(st.none() | st.sampled_from(["21 September 2024", "26 Jul 2024"]))
    messages = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    rounds = draw(st.integers(1, 3))
    for r in range(rounds):
        messages.append({"role": "user", "content": draw(text)})
        if declared and draw(st.booleans()):
            name = draw(st.sampled_from(declared))
            if name == "code_interpreter":
                arguments = {"code": draw(_CODE)}
            elif name in BUILTIN_TOOLS:
                arguments = {"query": draw(_ARG_TEXT)}
            else:
                arguments = draw(_ARGS)
            call = {"type": "function", "function": {"name": name, "arguments": arguments}}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            if draw(st.booleans()):
                messages[-1]["stop_reason"] = draw(st.sampled_from(["end_of_turn", "end_of_message"]))
            messages.append({"role": draw(st.sampled_from(["ipython", "tool"])), "content": draw(text)})
        if r < rounds - 1 or draw(st.booleans()):
            answer = {"role": "assistant", "content": draw(text)}
            if draw(st.booleans()):
                answer["stop_reason"] = draw(st.sampled_from(["end_of_turn", "end_of_message"]))
            messages.append(answer)
    options["add_generation_prompt"] = messages[-1]["role"] != "assistant" and draw(st.booleans())
    return messages, options
