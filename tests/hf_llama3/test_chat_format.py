"""`hf_llama3.chat_format` against Meta's ChatFormat, ToolUtils and prompt_format.md."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_models.datatypes import StopReason
from transformers import GenerationConfig

import hf_llama3
from hf_llama3.chat_format import (
    BUILTIN_TOOLS,
    CHAT_EOS_TOKEN_IDS,
    IGNORE_INDEX,
    DialogError,
    DialogOptions,
    chat_generation_config,
    decode_assistant_message,
    encode_dialog,
    parse_assistant_message,
    parse_tool_call,
    render_dialog,
    stop_token_ids,
    tool_call_text,
)

from .llama3_reference import (
    _ARG_TEXT,
    _ARGS,
    _CODE,
    PYTHON_TAG_ID,
    dialogs,
    hf_tokenizer,
    meta_chat_format,
    meta_encode_dialog,
    meta_tokenizer,
    prompt_format_dialogs,
    prompt_format_examples,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STYLES = ("prompt_format", "chat_format")
# Options under which the template, chat_format and Meta's ChatFormat give the same ids.
META = {"python_tag_style": "chat_format"}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# Dialogs covering every role, system prompts with tools, built-in and custom tool calls (both formats),
# tool results, eom/eot, multi-turn, and text in many scripts.
DIALOGS = {
    "user-only": ([{"role": "user", "content": "Hello!"}], {}),
    "system-user-assistant": (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Answer who are you in the form of jeopardy?"},
            {"role": "assistant", "content": 'Here\'s my response\n\n"What is a helpful assistant?"'},
            {"role": "user", "content": "Ещё раз, по-русски? 日本語でも。"},
        ],
        {},
    ),
    "dated-system": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Date?"}],
        {"date_string": "26 July 2024"},
    ),
    "builtin-search-round-trip": (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Search the web for the latest price of 1oz gold?"},
            {"role": "assistant", "tool_calls": [_call("brave_search", query="latest price of 1oz gold")]},
            {"role": "ipython", "content": '{"price": "2,400 USD"}'},
            {"role": "assistant", "content": "About 2,400 USD per ounce."},
        ],
        {"builtin_tools": ["brave_search", "wolfram_alpha"], "date_string": "21 September 2024"},
    ),
    "code-interpreter": (
        [
            {"role": "user", "content": "Is 7 prime? Use code."},
            {
                "role": "assistant",
                "tool_calls": [_call("code_interpreter", code="print(all(7 % i for i in range(2, 7)))")],
            },
            {"role": "tool", "content": "True"},
            {"role": "assistant", "content": "Yes, 7 is prime. 🎉"},
        ],
        {"builtin_tools": ["code_interpreter"]},
    ),
    "custom-json": (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [_call("get_weather", city="Paris")]},
            {"role": "ipython", "content": '{"temperature_c": 21}'},
            {"role": "assistant", "content": "It is 21°C in Paris."},
        ],
        {"tools": [WEATHER], "date_string": "21 September 2024"},
    ),
    "custom-function-tag": (
        [
            {"role": "user", "content": "Weather in Tokyo?"},
            {"role": "assistant", "tool_calls": [_call("get_weather", city="Tokyo")]},
            {"role": "tool", "content": "晴れ, 25°C"},
            {"role": "assistant", "content": "Sunny, 25°C."},
        ],
        {"tools": [WEATHER], "tool_prompt_format": "function_tag"},
    ),
    "mixed-tools-eom-override": (
        [
            {"role": "user", "content": "Plan:  search, then compute.\n\tOK?"},
            {"role": "assistant", "content": "Searching first.", "stop_reason": "end_of_message"},
            {"role": "ipython", "content": ""},
            {"role": "assistant", "tool_calls": [_call("wolfram_alpha", query="2^64")], "stop_reason": "end_of_turn"},
            {"role": "user", "content": "def f():\n    return 1  # code in a user turn"},
        ],
        {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"], "tools": [WEATHER]},
    ),
}


def _tagged(message, options, style):
    """Whether an assistant message opens with <|python_tag|>: prompt_format.md tags built-in, code and JSON
    calls; Meta's ChatFormat.encode_message tags code-interpreter calls only."""
    calls = message.get("tool_calls") or []
    if not calls:
        return False
    name = calls[0]["function"]["name"]
    if name == "code_interpreter":
        return True
    builtin = name in BUILTIN_TOOLS and name in options.get("builtin_tools", ())
    return style == "prompt_format" and (builtin or options.get("tool_prompt_format", "json") == "json")


def _stop(message, options, style):
    """An assistant turn's stop reason: its own, else end_of_message after a prompt_format-tagged call, else
    end_of_turn (Meta's RawMessage without a stop_reason ends with eot)."""
    waits = style == "prompt_format" and _tagged(message, options, style)
    return message.get("stop_reason") or ("end_of_message" if waits else "end_of_turn")


def _end(message, options, style):
    return {"end_of_message": "<|eom_id|>", "end_of_turn": "<|eot_id|>"}[_stop(message, options, style)]


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_encode_dialog_matches_meta_chat_format(name):
    messages, options = DIALOGS[name]
    options = {**options, **META}
    tok = hf_tokenizer()
    prompts = [False, True] if messages[-1]["role"] != "assistant" else [False]
    for add_generation_prompt in prompts:
        ours = encode_dialog(tok, messages, add_generation_prompt=add_generation_prompt, **options)
        assert ours.input_ids == meta_encode_dialog(messages, add_generation_prompt=add_generation_prompt, **options)
        rendered = render_dialog(messages, add_generation_prompt=add_generation_prompt, **options)
        assert tok.decode(ours.input_ids) == rendered


@pytest.mark.parametrize("name", sorted(DIALOGS))
def test_prompt_format_style_is_meta_chat_format_plus_tags(name):
    """The default style (prompt_format.md) adds <|python_tag|> before built-in and JSON calls to Meta's
    ChatFormat tokens; with the end tokens spelled out, that is the only difference."""
    messages, options = DIALOGS[name]
    stops = [_stop(m, options, "prompt_format") if m["role"] == "assistant" else None for m in messages]
    messages = [{**m, "stop_reason": stop} if stop else m for m, stop in zip(messages, stops)]
    tok = hf_tokenizer()
    ours = encode_dialog(tok, messages, **options).input_ids
    meta = meta_encode_dialog(messages, **options)
    assert encode_dialog(tok, messages, **options, **META).input_ids == meta
    assert [t for t in ours if t != PYTHON_TAG_ID] == [t for t in meta if t != PYTHON_TAG_ID]
    assistants = [m for m in messages if m["role"] == "assistant"]
    assert ours.count(PYTHON_TAG_ID) == sum(_tagged(m, options, "prompt_format") for m in assistants)
    assert meta.count(PYTHON_TAG_ID) == sum(_tagged(m, options, "chat_format") for m in assistants)
    assistant_header = [128006, tok.convert_tokens_to_ids("assistant"), 128007, 271]
    assert all(ours[i - 4 : i] == assistant_header for i, t in enumerate(ours) if t == PYTHON_TAG_ID)


def test_chat_format_style_on_prompt_format_md_example():
    """prompt_format.md example 4 (a wolfram_alpha call): the default renders it verbatim; the chat_format
    style drops the tag and, without a stop_reason, ends the call with eot as Meta's RawMessage does."""
    messages, options = prompt_format_dialogs()[4]
    md = prompt_format_examples()[4][0]
    assert render_dialog(messages, add_generation_prompt=True, **options) == md
    tag_call = '<|python_tag|>wolfram_alpha.call(query="100th decimal of pi")<|eom_id|>'
    assert md.count(tag_call) == 1
    chat = render_dialog(messages, add_generation_prompt=True, **options, **META)
    assert chat == md.replace(tag_call, 'wolfram_alpha.call(query="100th decimal of pi")<|eot_id|>')
    eom = [{**m, "stop_reason": "end_of_message"} if m["role"] == "assistant" else m for m in messages]
    chat_eom = render_dialog(eom, add_generation_prompt=True, **options, **META)
    assert chat_eom == md.replace("<|python_tag|>", "")
    ids = encode_dialog(hf_tokenizer(), eom, add_generation_prompt=True, **options, **META).input_ids
    assert ids == meta_encode_dialog(eom, add_generation_prompt=True, **options)


@PROPERTY
@given(dialogs())
def test_random_dialogs_match_meta_and_masks_cover_exactly(dialog):
    messages, options = dialog
    for style in STYLES:
        _check_masks(messages, {**options, "python_tag_style": style})


def _check_masks(messages, options):
    tok = hf_tokenizer()
    style = options["python_tag_style"]
    encoded = encode_dialog(tok, messages, **options)
    ids, labels, formatting = encoded.input_ids, encoded.labels, encoded.formatting_mask
    if style == "chat_format":
        assert ids == meta_encode_dialog(messages, **options)
    assert len(ids) == len(labels) == len(formatting)

    # Labels: exactly the assistant bodies (python_tag included) and their eot/eom, one span per turn.
    spans, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        if label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    assert all(labels[i] == ids[i] for i in range(len(ids)) if labels[i] != IGNORE_INDEX)
    opts = DialogOptions(**{k: v for k, v in options.items()})
    expected_bodies = []
    for message in messages:
        if message["role"] != "assistant":
            continue
        body = tool_call_text(message["tool_calls"][0], opts)[0] if message.get("tool_calls") else message["content"]
        tag = "<|python_tag|>" if _tagged(message, options, style) else ""
        expected_bodies.append(tag + body + _end(message, options, style))
    # Consecutive assistant turns are separated by a header, so spans never merge.
    assert [tok.decode(ids[a:b]) for a, b in spans] == expected_bodies
    for a, _ in spans:
        assert ids[a - 4 : a] == [128006, tok.convert_tokens_to_ids("assistant"), 128007, 271]

    # Formatting mask: exactly <|begin_of_text|>, every header (start, role tokens, end, "\n\n") and eot/eom.
    expected = {0} | {i for i, t in enumerate(ids) if t in (128008, 128009)}
    for h in (i for i, t in enumerate(ids) if t == 128006):
        end = ids.index(128007, h)
        assert ids[end + 1] == 271 and end - h in (2, 3)  # "ipython" is two tokens, other roles one
        expected |= set(range(h, end + 2))
    assert {i for i, m in enumerate(formatting) if m} == expected
    # DPO scores the assistant bodies without their termination tokens [paper 4.1.4].
    scored = {i for i, m in enumerate(encoded.dpo_loss_mask) if m}
    assert scored == {i for a, b in spans for i in range(a, b - 1)}


@PROPERTY
@given(dialogs())
def test_assistant_turns_decode_back_to_their_messages(dialog):
    messages, options = dialog
    for style in STYLES:
        _check_decode(messages, {**options, "python_tag_style": style})


def _check_decode(messages, options):
    tok = hf_tokenizer()
    encoded = encode_dialog(tok, messages, **options)
    spans, start = [], None
    for i, label in enumerate([*encoded.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        if label == IGNORE_INDEX and start is not None:
            spans.append(encoded.input_ids[start:i])
            start = None
    assistants = [m for m in messages if m["role"] == "assistant"]
    for message, span in zip(assistants, spans, strict=True):
        decoded = decode_assistant_message(tok, span)
        if message.get("tool_calls"):
            assert decoded["tool_calls"] == [message["tool_calls"][0]]
            assert decoded["content"] == ""
        else:
            meta = meta_chat_format().decode_assistant_message(span, StopReason.out_of_tokens)
            assert decoded["content"] == meta.content
            assert decoded["stop_reason"] == meta.stop_reason.value
            assert [c["function"]["name"] for c in decoded["tool_calls"]] == [
                getattr(c.tool_name, "value", c.tool_name) for c in meta.tool_calls
            ]


def _meta_decode(text):
    message = meta_chat_format().decode_assistant_message_from_content(text, StopReason.out_of_tokens)
    calls = [
        {
            "type": "function",
            "function": {"name": getattr(c.tool_name, "value", c.tool_name), "arguments": c.arguments},
        }
        for c in message.tool_calls
    ]
    return {
        "role": "assistant",
        "content": message.content,
        "tool_calls": calls,
        "stop_reason": message.stop_reason.value,
    }


# Strings a model emits (the first is Meta's own ToolUtils unit test), parsed by Meta's ToolUtils via
# ChatFormat.decode_assistant_message_from_content.
TOOL_CALL_TEXTS = [
    '<function=getWeather>{"location":"New York","date":"2023-08-05"}',
    '<function=trending_songs>{"n": 10}</function><|eot_id|>',
    "<function=trending_songs>{'n': 10, 'genre': 'pop'}</function>",
    '<|python_tag|>brave_search.call(query="latest price of 1oz gold")<|eom_id|>',
    'wolfram_alpha.call(query="100th decimal of pi")',
    'I will search: brave_search.call(query="llama 3 paper")',
    '<|python_tag|>{"type": "function", "name": "trending_songs", "parameters": {"n": "10", "genre": "all"}}<|eom_id|>',
    '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    '{"type": "function", "name": "brave_search", "parameters": {"q": "news"}}',
    '<function=brave_search>{"query": "news"}</function>',
    '[get_boiling_point(liquid_name="water", celcius=True)]',
    '[get_weather(city="Paris"), get_weather(city="Rome")]',
    "<|python_tag|>import math\nprint(math.sqrt(2))<|eom_id|>",
    "Just a plain answer.<|eot_id|>",
    '{"foo": 1}',
    "[1, 2, 3]",
    "  padded answer  <|eot_id|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>",
    "cut off mid-sentence",
]


@pytest.mark.parametrize("text", TOOL_CALL_TEXTS, ids=range(len(TOOL_CALL_TEXTS)))
def test_parse_assistant_message_matches_meta_tool_utils(text):
    assert parse_assistant_message(text) == _meta_decode(text)


@pytest.mark.parametrize("index", range(1, 7))
def test_prompt_format_md_responses_parse_like_meta(index):
    _, response = prompt_format_examples()[index]
    ours = parse_assistant_message(response)
    assert ours == _meta_decode(response)
    if index in (2, 3, 5, 6):
        assert ours["tool_calls"], response


@pytest.mark.parametrize("index", [1, 2, 3, 4, 6])
def test_render_dialog_reproduces_prompt_format_md(index):
    messages, options = prompt_format_dialogs()[index]
    assert render_dialog(messages, add_generation_prompt=True, **options) == prompt_format_examples()[index][0]


def test_render_dialog_reproduces_prompt_format_md_json_tools():
    """Example 5 lists the tool as JSON; ours is the same object, indented by json.dumps(indent=4)."""
    messages, options = prompt_format_dialogs()[5]
    md = prompt_format_examples()[5][0]
    ours = render_dialog(messages, add_generation_prompt=True, **options)
    head, tail = "Here is a list of functions in JSON format:\n", "\n\nReturn function calls in JSON format."
    assert ours[: ours.index(head)] == md[: md.index(head)]
    assert ours[ours.index(tail) :] == md[md.index(tail) :]
    assert json.loads(ours[ours.index(head) + len(head) : ours.index(tail)]) == options["tools"][0]


@PROPERTY
@given(
    st.one_of(
        st.builds(lambda q: _call("brave_search", query=q), _ARG_TEXT),
        st.builds(lambda q: _call("wolfram_alpha", query=q), _ARG_TEXT),
        st.builds(lambda c: _call("code_interpreter", code=c), _CODE),
        st.builds(lambda a: {"type": "function", "function": {"name": "get_weather", "arguments": a}}, _ARGS),
    ),
    st.sampled_from(["json", "function_tag"]),
    st.sampled_from(STYLES),
    st.sampled_from(["<|eom_id|>", "<|eot_id|>"]),
)
def test_rendered_tool_calls_parse_back_like_meta(call, fmt, style, end):
    builtin = ["brave_search", "wolfram_alpha", "code_interpreter"]
    options = DialogOptions(tools=[WEATHER], builtin_tools=builtin, tool_prompt_format=fmt, python_tag_style=style)
    body, tagged = tool_call_text(call, options)
    assert tagged == _tagged({"tool_calls": [call]}, {"builtin_tools": builtin, "tool_prompt_format": fmt}, style)
    text = ("<|python_tag|>" if tagged else "") + body + end
    ours = parse_assistant_message(text)
    assert ours["tool_calls"] == [call]
    assert ours == _meta_decode(text)


def test_nested_arguments_parse_where_meta_regex_stops():
    """Meta's non-greedy `{.*?}` cuts nested JSON; ours reads the whole object."""
    text = '<function=book>{"guest": {"name": "Ada", "nights": 2}}</function>'
    assert parse_tool_call(text) == _call("book", guest={"name": "Ada", "nights": 2})
    assert _meta_decode(text)["tool_calls"] == []


BAD_DIALOGS = [
    ([], {}, "dialog is empty"),
    ([{"role": "robot", "content": "hi"}], {}, "unknown role 'robot'"),
    ([{"role": ["user"], "content": "hi"}], {}, r"unknown role '?\['user'\]"),
    ([{"role": "user", "content": None}], {}, "content must be a string"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], {}, "content must be a string"),
    ([{"role": "user", "content": 3}], {}, "content must be a string"),
    (
        [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [_call("get_weather", city="Oslo")]}],
        {"builtin_tools": ["brave_search"]},
        "calls tool 'get_weather', which the dialog does not declare",
    ),
    (
        [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [_call("brave_search", query="q")]}],
        {},
        "calls tool 'brave_search', which the dialog does not declare",
    ),
    (
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "done"}],
        {"add_generation_prompt": True},
        "cannot take a generation prompt",
    ),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "late"}], {}, "system message may only"),
    (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "hm", "tool_calls": [_call("brave_search", query="q")]},
        ],
        {"builtin_tools": ["brave_search"]},
        "carries only the call",
    ),
    (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [_call("brave_search", query="q")] * 2},
        ],
        {"builtin_tools": ["brave_search"]},
        "one tool call per turn",
    ),
    (
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [_call("brave_search", q="wrong key")]},
        ],
        {"builtin_tools": ["brave_search"]},
        "takes one string argument 'query'",
    ),
    (
        [{"role": "user", "content": "x", "tool_calls": [_call("brave_search", query="q")]}],
        {"builtin_tools": ["brave_search"]},
        "only assistant",
    ),
    ([{"role": "assistant", "content": "x", "stop_reason": "done"}], {}, "stop_reason"),
    ([{"role": "user", "content": "x"}], {"builtin_tools": ["calculator"]}, "unknown built-in tool"),
    ([{"role": "user", "content": "x"}], {"tool_prompt_format": "xml"}, "tool_prompt_format"),
    ([{"role": "user", "content": "x"}], {"tools": [{"name": "flat"}]}, r"tools\[0\] must look like"),
    ([{"role": "user", "content": "x"}], {"python_tag_style": "meta"}, "python_tag_style='meta'; use 'prompt_format'"),
]


@pytest.mark.parametrize(("messages", "options", "error"), BAD_DIALOGS, ids=[e for _, _, e in BAD_DIALOGS])
def test_bad_dialogs_raise_clear_errors(messages, options, error):
    with pytest.raises(DialogError, match=error):
        encode_dialog(hf_tokenizer(), messages, **options)
    with pytest.raises(DialogError, match=error):
        render_dialog(messages, **options)


def test_stop_tokens_and_generation_config():
    tok, meta = hf_tokenizer(), meta_tokenizer()
    assert stop_token_ids(tok) == list(CHAT_EOS_TOKEN_IDS) == [128001, 128008, 128009]
    assert set(meta.stop_tokens) == set(CHAT_EOS_TOKEN_IDS)
    for config in (chat_generation_config(), chat_generation_config(tok)):
        assert isinstance(config, GenerationConfig)
        assert config.eos_token_id == [128001, 128008, 128009]
        assert (config.pad_token_id, config.bos_token_id) == (meta.pad_id, meta.bos_id) == (128004, 128000)
        assert (config.temperature, config.top_p, config.do_sample) == (0.6, 0.9, True)
    assert chat_generation_config(do_sample=False).do_sample is False


def test_public_names_exported():
    for name in (
        "encode_dialog",
        "decode_assistant_message",
        "parse_tool_call",
        "chat_generation_config",
        "DialogError",
    ):
        assert getattr(hf_llama3, name) is not None


@PROPERTY
@given(dialogs())
def test_generation_prompt_encoding_is_a_prefix_of_the_answered_dialog(dialog):
    """DPO and rejection sampling split prompt and completion by this prefix property."""
    messages, options = dialog
    if messages[-1]["role"] != "assistant":
        messages = [*messages, {"role": "assistant", "content": "An answer."}]
    tok = hf_tokenizer()
    for style in STYLES:
        options = {**options, "add_generation_prompt": False, "python_tag_style": style}
        prompt = encode_dialog(tok, messages[:-1], **{**options, "add_generation_prompt": True})
        full = encode_dialog(tok, messages, **options)
        cut = len(prompt.input_ids)
        assert full.input_ids[:cut] == prompt.input_ids
        assert full.formatting_mask[:cut] == prompt.formatting_mask
        assert full.labels[cut - 1] == IGNORE_INDEX  # the header's "\n\n" is not trained
        assert full.labels[cut] != IGNORE_INDEX
