"""The Llama Guard 3 prompt format [paper 5.4.7]: render a conversation for input or output classification.

The guard reads one user turn of the Llama 3.1 dialog format that holds, in order (Meta's Llama Guard 3 prompt
format, as its model card, its documentation and the ``meta-llama/Llama-Guard-3-8B`` chat template write it)::

    <|begin_of_text|><|start_header_id|>user<|end_header_id|>

    Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.

    <BEGIN UNSAFE CONTENT CATEGORIES>
    S1: Violent Crimes.
    ...
    <END UNSAFE CONTENT CATEGORIES>

    <BEGIN CONVERSATION>

    User: <first user message, stripped>

    Agent: <assistant reply, stripped>

    <END CONVERSATION>

    Provide your safety assessment for ONLY THE LAST User message in the above conversation:
     - First line must read 'safe' or 'unsafe'.
     - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

``'User'`` (both places) classifies the last user turn (input / prompt classification); ``'Agent'`` classifies the
last assistant turn (output / response classification). The guard answers ``\\n\\nsafe`` or
``\\n\\nunsafe\\nS1,S10`` and ends with ``<|eot_id|>`` (:data:`ANSWER_PREFIX` is the leading ``\\n\\n``).

What the published format leaves open, decided here (the chat template ``guard_chat_template.jinja`` does the same):
- system messages are left out (the guard judges the conversation, not the deployer's instructions);
- an assistant tool call is written as its call text on the ``Agent:`` line: the code of a ``code_interpreter``
  call, ``brave_search.call(query="...")`` for built-in search tools, and the Llama 3.1 JSON call
  ``{"type": "function", "name": ..., "parameters": {...}}`` for custom tools (after the message text, if any, one
  per line);
- a tool result (role ``ipython`` or ``tool``) is a ``Tool:`` line, as Meta's llama-stack guardrail labels turns by
  their role;
- the role of the check comes from ``check`` (``"input"``, ``"output"``, or ``"auto"``: from the last turn), where
  Meta's template infers it from the parity of the message count; for an alternating user/assistant conversation
  both give the same text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.safety.policy import SafetyPolicy

BOS = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
# The guard's answer starts after the assistant header with the header's blank line, then `safe` / `unsafe`.
ANSWER_PREFIX = "\n\n"
SAFE, UNSAFE = "safe", "unsafe"
CHECKS = ("input", "output", "auto")
# Conversation labels of the published format; `Tool` is ours (see the module docstring).
ROLE_LABELS = {"user": "User", "assistant": "Agent", "ipython": "Tool", "tool": "Tool"}
QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")
CODE_INTERPRETER = "code_interpreter"

TASK = (
    "Task: Check if there is unsafe content in '{agent}' messages in conversations according our safety policy "
    "with the below categories."
)
INSTRUCTIONS = (
    "Provide your safety assessment for ONLY THE LAST {agent} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)

CHAT_TEMPLATE_PATH = Path(__file__).with_name("guard_chat_template.jinja")


def guard_chat_template(policy: SafetyPolicy | None = None, with_descriptions: bool = False) -> str:
    """The Jinja chat template that renders :func:`render_guard_prompt`'s text (shipped with exported guards).

    ``policy`` and ``with_descriptions`` become the template's defaults (a guard trained on a subset lists that
    subset); the ``categories``/``with_descriptions``/``check`` template variables override them per call.
    """
    policy = policy or SafetyPolicy.default()
    defaults = (
        "{%- set default_categories = " + json.dumps(policy.to_config(), ensure_ascii=False) + " -%}\n"
        "{%- set default_with_descriptions = " + ("true" if with_descriptions else "false") + " -%}\n"
    )
    return defaults + CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


def _tool_call_text(call: Any, where: str) -> str:
    function = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ValueError(f"{where}: a tool call must look like {{'function': {{'name': str, 'arguments': dict}}}}.")
    name, arguments = function["name"], function.get("arguments", {})
    if not isinstance(arguments, (Mapping, str)):
        raise ValueError(f"{where}: tool call arguments must be a dict or a JSON string, got {arguments!r}.")
    if name == CODE_INTERPRETER or name in QUERY_TOOLS:
        key = "code" if name == CODE_INTERPRETER else "query"
        value = arguments.get(key) if isinstance(arguments, Mapping) else None
        if not isinstance(value, str):
            raise ValueError(f"{where}: built-in tool {name!r} takes one string argument {key!r}, got {arguments!r}.")
        return value if name == CODE_INTERPRETER else f'{name}.call(query="{value}")'
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{{"type": "function", "name": {json.dumps(name, ensure_ascii=False)}, "parameters": {encoded}}}'


def _message_text(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"{where}: content must be a string, got {type(content).__name__}.")
    parts = [content.strip()] if content.strip() else []
    calls = message.get("tool_calls") or []
    if calls and message.get("role") != "assistant":
        raise ValueError(f"{where}: only assistant messages carry tool_calls.")
    parts += [_tool_call_text(call, f"{where} tool call {k}") for k, call in enumerate(calls)]
    if not parts:
        raise ValueError(f"{where}: the message is empty (no content and no tool call); drop it or give it text.")
    return "\n".join(parts)


def conversation_turns(messages: Sequence[Mapping[str, Any]], check: str = "auto") -> tuple[str, list[str]]:
    """Check a conversation for a guard check and return ``(agent_type, ["User: ...", "Agent: ...", ...])``.

    ``agent_type`` is ``"User"`` for ``check="input"`` (the last turn must be a user turn) and ``"Agent"`` for
    ``check="output"`` (the last turn must be an assistant turn); ``"auto"`` takes it from the last turn.
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: use 'input' (last user turn), 'output' (last assistant turn) or 'auto'.")
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            "The conversation is empty: pass a non-empty list of {'role': ..., 'content': ...} messages "
            "ending with the user turn (check='input') or the assistant turn (check='output') to classify."
        )
    lines = []
    last_role = None
    last_index = -1
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: expected a {{'role': ..., 'content': ...}} dict, got {message!r}.")
        role = message.get("role")
        if role == "system":
            continue
        if role not in ROLE_LABELS:
            raise ValueError(f"{where}: unknown role {role!r}; use system, user, assistant, ipython or tool.")
        lines.append(f"{ROLE_LABELS[role]}: {_message_text(message, f'{where} ({role})')}")
        last_role, last_index = role, index
    if last_role is None:
        raise ValueError(
            "The conversation has no user or assistant turn (only system messages): add the turn to classify."
        )
    if messages[-1].get("role") == "system":
        raise ValueError(
            f"The conversation ends with a system message (message {len(messages) - 1}): end it with the turn to "
            "classify."
        )
    if check == "auto":
        if last_role not in ("user", "assistant"):
            raise ValueError(
                f"The conversation ends with a {last_role} turn (message {last_index}); the guard classifies a user "
                "turn (input) or an assistant turn (output): end it with one of those."
            )
        check = "input" if last_role == "user" else "output"
    wanted = "user" if check == "input" else "assistant"
    if last_role != wanted:
        other = "output" if check == "input" else "input"
        raise ValueError(
            f"check={check!r} classifies the last {wanted} turn, but the conversation ends with a {last_role} turn "
            f"(message {last_index}): drop the turns after the {wanted} turn to classify, or use check={other!r}."
        )
    return ("User" if check == "input" else "Agent"), lines


def render_guard_prompt(
    messages: Sequence[Mapping[str, Any]],
    check: str = "auto",
    policy: SafetyPolicy | None = None,
    with_descriptions: bool = False,
) -> str:
    """The Llama Guard 3 prompt for ``messages``, ending with the assistant header (the guard writes the answer).

    Args:
        messages: The conversation (Hugging Face message dicts; assistant ``tool_calls`` allowed).
        check: ``"input"`` to classify the last user turn, ``"output"`` for the last assistant turn, ``"auto"`` to
            take it from the last turn.
        policy: The categories listed (default: Llama Guard 3's 14).
        with_descriptions: List each category's description under its name.
    """
    policy = policy or SafetyPolicy.default()
    agent, lines = conversation_turns(messages, check)
    return (
        f"{BOS}{START_HEADER}user{END_HEADER}\n\n"
        + TASK.format(agent=agent)
        + "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + policy.prompt_block(with_descriptions)
        + "\n<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
        + "".join(line + "\n\n" for line in lines)
        + "<END CONVERSATION>\n\n"
        + INSTRUCTIONS.format(agent=agent)
        + f"{EOT}{START_HEADER}assistant{END_HEADER}"
    )


def format_answer(unsafe: bool, categories: Sequence[str] = (), policy: SafetyPolicy | None = None) -> str:
    """The guard's answer text after the assistant header: ``\\n\\nsafe`` or ``\\n\\nunsafe\\nS1,S10``."""
    if not unsafe:
        if categories:
            raise ValueError(f"A safe answer names no categories, got {list(categories)}.")
        return f"{ANSWER_PREFIX}{SAFE}"
    if not categories:
        raise ValueError("An unsafe answer needs at least one violated category code (e.g. ['S1']).")
    codes = (policy or SafetyPolicy.default()).check_codes(categories, "answer categories")
    return f"{ANSWER_PREFIX}{UNSAFE}\n{','.join(codes)}"


def parse_answer(text: str) -> tuple[bool | None, list[str]]:
    """``(unsafe, category codes)`` from a guard's answer; ``unsafe`` is ``None`` when the first line is neither."""
    import re

    lines = [line.strip() for line in text.replace(EOT, "").strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in (SAFE, UNSAFE):
        return None, []
    if lines[0].lower() == SAFE:
        return False, []
    codes = re.findall(r"S\d+", " ".join(lines[1:]))
    return True, list(dict.fromkeys(codes))
