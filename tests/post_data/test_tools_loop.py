"""The tool-use loop [4.3.5] with a scripted policy: a 3-step trajectory, a nested call and parallel calls run the
real tools end to end, and the dialog they leave renders as the model wrote it and as Meta's ChatFormat encodes it."""

from __future__ import annotations

import json
import re

import pytest
from llama_models.datatypes import StopReason
from llama_models.llama3.tool_utils import parse_python_list_for_function_calls

from hf_llama3 import encode_dialog
from hf_llama3.chat_format import END_HEADER, EOT, START_HEADER, render_dialog
from tests.hf_llama3.llama3_reference import hf_tokenizer, meta_chat_format, meta_encode_dialog
from training.post_data.tools import ScriptedPolicy, ToolRegistry, build_registry, run_tool_loop
from training.post_data.tools.loop import parallel_calls, python_list_text

INDEX = "recipes/tiny/post_training/search_index.jsonl"
USER = [{"role": "user", "content": "Double the population of Paris, and check 6 * 7 first."}]


def get_weather(city: str, unit: str = "celsius") -> dict:
    """The weather in a city.

    Args:
        city: the city's name.
        unit: the temperature unit.
    """
    return {"city": city, "temperature": {"Paris": 21, "Oslo": 9}[city], "unit": unit}


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    registry = build_registry(["code_interpreter", "brave_search", "wolfram_alpha"], search_index=INDEX)
    registry.add_callable(get_weather)
    return registry


def turn(role: str, body: str) -> str:
    return f"{START_HEADER}{role}{END_HEADER}\n\n{body}"


def check_rendering(messages: list[dict], replies: list[str], registry: ToolRegistry) -> None:
    """The dialog renders byte for byte as the prompt followed by what the policy wrote and the tool turns, and its
    token ids (Meta's ``chat_format`` tag style) equal Meta's ``ChatFormat`` for the same messages."""
    options = registry.dialog_options()
    prompt_length = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    expected = render_dialog(messages[:prompt_length], add_generation_prompt=True, **options)
    reply = iter(replies)
    for k, message in enumerate(messages[prompt_length:], start=prompt_length):
        if message["role"] == "assistant":
            if k > prompt_length:
                expected += turn("assistant", "")
            expected += next(reply)
        else:
            expected += turn("ipython", message["content"] + EOT)
    assert render_dialog(messages, **options) == expected
    ids = encode_dialog(hf_tokenizer(), messages, python_tag_style="chat_format", **options).input_ids
    assert ids == meta_encode_dialog(messages, python_tag_style="chat_format", **options)


def check_meta_parse(reply: str, message: dict) -> None:
    """Meta's ChatFormat reads the reply as the same call (or the same text)."""
    meta = meta_chat_format().decode_assistant_message_from_content(reply, StopReason.out_of_tokens)
    if message.get("tool_calls"):
        (call,) = meta.tool_calls
        name = call.tool_name if isinstance(call.tool_name, str) else call.tool_name.value
        assert (name, call.arguments) == tuple(message["tool_calls"][0]["function"].values())
    assert meta.stop_reason.value == message.get("stop_reason", "end_of_turn")


def test_three_step_trajectory_runs_the_code_interpreter_search_and_math(registry):
    replies = [
        "<|python_tag|>x = 6 * 7\nprint(x)\nx + 1<|eom_id|>",
        '<|python_tag|>brave_search.call(query="population of Paris")<|eom_id|>',
        '<|python_tag|>wolfram_alpha.call(query="2102650 * 2")<|eom_id|>',
        "6 * 7 = 42, and twice the population of Paris is 4205300.<|eot_id|>",
    ]
    trajectory = run_tool_loop(ScriptedPolicy(replies), USER, registry, max_steps=4)
    assert trajectory.outcome == "answered" and trajectory.steps == 4
    assert [c.name for c in trajectory.calls] == ["code_interpreter", "brave_search", "wolfram_alpha"]
    assert all(c.ok for c in trajectory.calls)
    roles = [m["role"] for m in trajectory.messages]
    assert roles == ["user", "assistant", "ipython", "assistant", "ipython", "assistant", "ipython", "assistant"]
    code, search, math = (m["content"] for m in trajectory.messages if m["role"] == "ipython")
    assert code == "[stdout]\n42\n[/stdout]\n[value]\n43\n[/value]"
    assert json.loads(search)["top_k"][0]["title"] == "Paris" and "2,102,650" in search
    assert json.loads(math)["result"] == "4205300"
    check_rendering(trajectory.messages, replies, registry)
    for reply, message in zip(replies, (m for m in trajectory.messages if m["role"] == "assistant")):
        check_meta_parse(reply, message)


def test_nested_call_uses_the_previous_result(registry):
    def multiply_found_population(dialog: list[dict]) -> str:
        found = json.loads(dialog[-1]["content"])["top_k"][0]["description"]
        population = re.search(r"population of ([\d,]+)", found).group(1).replace(",", "")
        return f'<|python_tag|>wolfram_alpha.call(query="{population} * 2")<|eom_id|>'

    def answer(dialog: list[dict]) -> str:
        return f"Twice the population of Oslo is {json.loads(dialog[-1]['content'])['result']}.<|eot_id|>"

    policy = ScriptedPolicy(
        ['<|python_tag|>brave_search.call(query="Oslo population")<|eom_id|>', multiply_found_population, answer]
    )
    trajectory = run_tool_loop(policy, [{"role": "user", "content": "Twice Oslo's population?"}], registry)
    assert trajectory.outcome == "answered"
    assert trajectory.calls[1].arguments == {"query": "717710 * 2"}
    assert trajectory.answer == "Twice the population of Oslo is 1435420."
    replies = [policy.replies[0], multiply_found_population(trajectory.messages[:3]), answer(trajectory.messages[:5])]
    check_rendering(trajectory.messages, replies, registry)


@pytest.mark.parametrize("style", ["python_list", "function_tags"])
def test_parallel_calls_run_every_call_and_feed_back_one_ipython_turn_each(registry, style):
    calls = [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo", "unit": "celsius"})]
    if style == "python_list":
        body = python_list_text(calls)
        assert body == '[get_weather(city="Paris"), get_weather(city="Oslo", unit="celsius")]'
        assert parse_python_list_for_function_calls(body) == calls  # Meta's reading of the same list
    else:
        body = "".join(f"<function={n}>{json.dumps(a)}</function>" for n, a in calls)
    assert parallel_calls(body) == calls
    replies = [body + "<|eom_id|>", "Paris is warmer (21 against 9).<|eot_id|>"]
    user = [{"role": "user", "content": "Is Paris or Oslo warmer?"}]
    trajectory = run_tool_loop(ScriptedPolicy(replies), user, registry)
    assert trajectory.outcome == "answered" and [c.ok for c in trajectory.calls] == [True, True]
    results = [json.loads(m["content"]) for m in trajectory.messages if m["role"] == "ipython"]
    assert [(r["city"], r["temperature"]) for r in results] == [("Paris", 21), ("Oslo", 9)]
    check_rendering(trajectory.messages, replies, registry)


def test_custom_json_call_and_function_tag_call_render_as_written(registry):
    json_call = '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Oslo"}}<|eom_id|>'
    trajectory = run_tool_loop(ScriptedPolicy([json_call, "It is 9 degrees.<|eot_id|>"]), USER, registry)
    assert trajectory.outcome == "answered" and json.loads(trajectory.messages[2]["content"])["temperature"] == 9
    check_rendering(trajectory.messages, [json_call, "It is 9 degrees.<|eot_id|>"], registry)
    check_meta_parse(json_call, trajectory.messages[1])
    tag_call = '<function=get_weather>{"city": "Paris"}</function><|eot_id|>'
    tag_registry = ToolRegistry(registry.tools.values(), tool_prompt_format="function_tag")
    trajectory = run_tool_loop(ScriptedPolicy([tag_call, "21 degrees.<|eot_id|>"]), USER, tag_registry)
    assert trajectory.outcome == "answered" and trajectory.calls[0].arguments == {"city": "Paris"}
    check_meta_parse(tag_call, trajectory.messages[1])
    check_rendering(trajectory.messages, [tag_call, "21 degrees.<|eot_id|>"], tag_registry)


def test_tool_errors_are_fed_back_and_bad_trajectories_end_with_their_reason(registry):
    replies = ["<|python_tag|>1 / 0<|eom_id|>", '[get_weather(city="Rome")]<|eom_id|>', "Sorry.<|eot_id|>"]
    trajectory = run_tool_loop(ScriptedPolicy(replies), USER, registry)
    assert trajectory.outcome == "answered" and trajectory.tool_errors == 2
    assert trajectory.messages[2]["content"].startswith("[error] ZeroDivisionError: division by zero")
    assert trajectory.messages[4]["content"] == "tool 'get_weather' failed: KeyError: 'Rome'"
    bad_argument = (
        '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"town": "Oslo"}}<|eom_id|>'
    )
    trajectory = run_tool_loop(ScriptedPolicy([bad_argument, "?<|eot_id|>"]), USER, registry)
    assert trajectory.messages[2]["content"] == "tool 'get_weather': required argument 'city' is missing."
    cases = {
        '<|python_tag|>stock_price.call(query="META")<|eom_id|>': ("unparseable_call", "unknown tool 'stock_price'"),
        "Let me look that up.<|eom_id|>": ("unparseable_call", "holds no call"),
        '<|python_tag|>brave_search.call(query="Paris")': ("out_of_tokens", "no stop token"),
    }
    for reply, (outcome, detail) in cases.items():
        trajectory = run_tool_loop(ScriptedPolicy([reply]), USER, registry)
        assert (trajectory.outcome, trajectory.steps) == (outcome, 1) and detail in trajectory.detail
        render_dialog(trajectory.messages, **registry.dialog_options())  # still a valid dialog (a DPO negative)
    looping = ScriptedPolicy(['<|python_tag|>brave_search.call(query="Paris")<|eom_id|>'] * 3)
    trajectory = run_tool_loop(looping, USER, registry, max_steps=2)
    assert (trajectory.outcome, trajectory.steps, len(trajectory.calls)) == ("step_limit", 2, 2)
