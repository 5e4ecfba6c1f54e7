"""The tool-use loop: the model calls tools, reads their results in ``ipython`` turns, and answers [4.3.5].

From the paper [4.3.5]: "If a query requires multiple tool calls, the model can write a step-by-step plan, call the
tools in sequence, and do reasoning after each tool call"; its zero-shot data covers single, nested and parallel
function calls. One step of a trajectory is one generated assistant message:

- it is parsed with :func:`hf_llama3.chat_format.parse_assistant_message` (``<|python_tag|>`` code or
  ``brave_search.call(query="...")`` ending with ``<|eom_id|>``, a JSON call, ``<function=name>{...}</function>``);
- each call runs through the :class:`~training.post_data.tools.registry.ToolRegistry` and its result (or the
  tool's error) comes back as one ``ipython`` turn per call, and the model is asked again;
- a message without a call that ends with ``<|eot_id|>`` is the answer and ends the trajectory.

Parallel calls: Llama 3.1's dialog carries one call per assistant turn (Meta's ``ToolUtils`` parses only the first
of a list), so several independent calls in one message, written as a Python list ``[f(a=1), g(b="x")]`` (Meta's
``python_list`` format) or as several ``<function=...>`` tags, are all executed, one ``ipython`` turn each, and the
message is kept as the text the model wrote (less a leading ``<|python_tag|>``). Nested calls (a call that needs a previous result) are consecutive
steps: the later call is written after the earlier result is in the dialog.

A trajectory ends ``answered``, or is stopped with the reason the synthetic-data step reports: ``unparseable_call``
(the message waits for a tool with ``<|eom_id|>`` but holds no call it can run, or names an unknown tool),
``out_of_tokens`` (no stop token) or ``step_limit``. Tool errors do not stop it (the model may recover); they are
counted. Trajectories advance in lockstep so a model policy generates one batch per step for all of them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from hf_llama3.chat_format import END_HEADER, EOM, EOT, PYTHON_TAG, START_HEADER, parse_assistant_message
from training.post_data.tools.registry import ToolError, ToolRegistry

OUTCOMES = ("answered", "unparseable_call", "out_of_tokens", "step_limit")
_FUNCTION_TAGS = re.compile(r"<function=(?P<name>[^>]+?)>(?P<args>\{.*?\})</function>", re.S)


class Policy(Protocol):
    """Anything that writes the next assistant message (special tokens kept) for each dialog of a batch."""

    def __call__(self, dialogs: Sequence[list[dict[str, Any]]]) -> list[str]: ...


@dataclasses.dataclass
class ToolCallRecord:
    """One executed call: the tool, its arguments, whether it succeeded, and the ``ipython`` text it produced."""

    name: str
    arguments: dict[str, Any]
    ok: bool
    output: str
    step: int


@dataclasses.dataclass
class Trajectory:
    """A dialog being extended by the loop; ``messages[:prompt_length]`` is the prompt."""

    messages: list[dict[str, Any]]
    prompt_length: int
    outcome: str | None = None
    detail: str = ""
    steps: int = 0
    calls: list[ToolCallRecord] = dataclasses.field(default_factory=list)

    @property
    def completion(self) -> list[dict[str, Any]]:
        """The messages the loop added (assistant and ``ipython`` turns)."""
        return self.messages[self.prompt_length :]

    @property
    def tool_errors(self) -> int:
        return sum(not call.ok for call in self.calls)

    @property
    def answer(self) -> str | None:
        """The final answer's text when the trajectory was answered."""
        return self.messages[-1]["content"] if self.outcome == "answered" else None


def _strip(text: str) -> tuple[str, bool]:
    """The assistant body without header, ``<|python_tag|>`` and stop token; and whether the tag opened it."""
    body = text.strip(" ").removeprefix(f"{START_HEADER}assistant{END_HEADER}\n\n")
    tagged = body.startswith(PYTHON_TAG)
    body = body.removeprefix(PYTHON_TAG)
    for token in (EOT, EOM, "<|end_of_text|>"):
        if body.endswith(token):
            return body[: -len(token)], tagged
    return body, tagged


def parallel_calls(body: str) -> list[tuple[str, dict[str, Any]]]:
    """The calls of a message that holds two or more: ``[f(a=1), g(b=2)]`` or several ``<function=...>`` tags;
    an empty list for one call or none (those are :func:`parse_assistant_message`'s)."""
    tags = list(_FUNCTION_TAGS.finditer(body))
    if len(tags) >= 2:
        calls = []
        for match in tags:
            try:
                arguments = json.loads(match.group("args"))
            except json.JSONDecodeError:
                return []
            if not isinstance(arguments, dict):
                return []
            calls.append((match.group("name"), arguments))
        return calls
    try:
        tree = ast.parse(body.strip())
    except SyntaxError:
        return []
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr) or not isinstance(tree.body[0].value, ast.List):
        return []
    elements = tree.body[0].value.elts
    if len(elements) < 2:
        return []
    calls = []
    for element in elements:
        if not (isinstance(element, ast.Call) and isinstance(element.func, ast.Name) and not element.args):
            return []
        try:
            calls.append((element.func.id, {k.arg: ast.literal_eval(k.value) for k in element.keywords}))
        except ValueError:
            return []
    return calls


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_format_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"a tool-call argument must be JSON-like, got {type(value).__name__}.")


def python_list_text(calls: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Several calls as one Python list, ``[f(a=1), g(b="x")]`` (what a policy writes for parallel calls)."""
    return (
        "[" + ", ".join(f"{n}({', '.join(f'{k}={_format_value(v)}' for k, v in a.items())})" for n, a in calls) + "]"
    )


def _text_message(body: str, stop_reason: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": body}
    if stop_reason in ("end_of_turn", "end_of_message"):
        message["stop_reason"] = stop_reason
    return message


def _run_calls(trajectory: Trajectory, registry: ToolRegistry, calls: Sequence[tuple[str, dict]]) -> None:
    for name, arguments in calls:
        try:
            output, ok = registry.call(name, arguments), True
        except ToolError as err:
            output, ok = str(err), False
        trajectory.calls.append(ToolCallRecord(name, dict(arguments), ok, output, trajectory.steps))
        trajectory.messages.append({"role": "ipython", "content": output})


def advance(trajectory: Trajectory, text: str, registry: ToolRegistry) -> None:
    """Add one generated assistant message to ``trajectory``, run its calls, or end it with its outcome."""
    trajectory.steps += 1
    message = parse_assistant_message(text)
    body, _ = _strip(text)
    stop_reason = message["stop_reason"]
    if stop_reason == "out_of_tokens":  # a cut-off call is not run: its arguments may be cut too
        trajectory.messages.append(_text_message(body, None))
        trajectory.outcome, trajectory.detail = "out_of_tokens", "no stop token before max_new_tokens"
        return
    several = parallel_calls(body)
    if several:
        unknown = [name for name, _ in several if name not in registry]
        trajectory.messages.append(_text_message(body, stop_reason))
        if unknown:
            trajectory.outcome, trajectory.detail = "unparseable_call", f"calls unknown tools {unknown}"
            return
        _run_calls(trajectory, registry, several)
        return
    if message["tool_calls"]:
        function = message["tool_calls"][0]["function"]
        if function["name"] not in registry:
            trajectory.messages.append(_text_message(body, stop_reason))
            trajectory.outcome, trajectory.detail = "unparseable_call", f"calls unknown tool {function['name']!r}"
            return
        if not isinstance(function["arguments"], dict):
            trajectory.messages.append(_text_message(body, stop_reason))
            trajectory.outcome, trajectory.detail = "unparseable_call", "the call's arguments are not a JSON object"
            return
        trajectory.messages.append(message)
        _run_calls(trajectory, registry, [(function["name"], function["arguments"])])
        return
    trajectory.messages.append(_text_message(message["content"], stop_reason))
    if stop_reason == "end_of_turn":
        trajectory.outcome = "answered"
    else:
        trajectory.outcome, trajectory.detail = "unparseable_call", "waits for a tool (<|eom_id|>) but holds no call"


def run_tool_loops(
    policy: Policy, prompts: Sequence[Sequence[Mapping[str, Any]]], registry: ToolRegistry, max_steps: int = 4
) -> list[Trajectory]:
    """Run one trajectory per prompt, all in lockstep (one policy batch per step), for at most ``max_steps``
    assistant messages each; unfinished ones end as ``step_limit``."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    trajectories = [Trajectory([dict(m) for m in prompt], len(prompt)) for prompt in prompts]
    for _ in range(max_steps):
        active = [t for t in trajectories if t.outcome is None]
        if not active:
            break
        replies = policy([t.messages for t in active])
        if len(replies) != len(active):
            raise ValueError(f"the policy returned {len(replies)} messages for {len(active)} dialogs.")
        for trajectory, text in zip(active, replies):
            advance(trajectory, text, registry)
    for trajectory in trajectories:
        if trajectory.outcome is None:
            trajectory.outcome, trajectory.detail = "step_limit", f"still calling tools after {max_steps} steps"
    return trajectories


def run_tool_loop(
    policy: Policy, messages: Sequence[Mapping[str, Any]], registry: ToolRegistry, max_steps: int = 4
) -> Trajectory:
    """One trajectory (see :func:`run_tool_loops`)."""
    return run_tool_loops(policy, [messages], registry, max_steps)[0]


class ScriptedPolicy:
    """A stand-in for the model: reply ``k`` of the script is the ``k``-th assistant message after the prompt,
    as text, or a callable of the dialog so far (to write a call from an earlier result: nested calls)."""

    def __init__(self, replies: Sequence[str | Callable[[list[dict[str, Any]]], str]], prompt_length: int = 1):
        self.replies = list(replies)
        self.prompt_length = prompt_length

    def __call__(self, dialogs: Sequence[list[dict[str, Any]]]) -> list[str]:
        out = []
        for dialog in dialogs:
            k = sum(m.get("role") == "assistant" for m in dialog[self.prompt_length :])
            if k >= len(self.replies):
                raise ValueError(f"the scripted policy has {len(self.replies)} replies; step {k + 1} was asked for.")
            reply = self.replies[k]
            out.append(reply(dialog) if callable(reply) else reply)
        return out


class ModelPolicy:
    """A causal LM writing each next assistant message through a generation engine (``training.generation``).

    Each call encodes the dialogs with the registry's tools (``hf_llama3.encode_dialog`` with the generation
    prompt), samples one continuation each, and decodes it with its special tokens. The engine is seeded per
    prompt index; every dialog of every call gets a new index, so reruns with the same seed repeat.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        registry: ToolRegistry,
        *,
        engine: Any = None,
        max_new_tokens: int = 256,
        temperature: float = 0.6,
        top_p: float = 0.9,
        seed: int = 0,
        date_string: str | None = None,
        backend: str = "auto",
        max_batch_tokens: int = 65536,
    ) -> None:
        from hf_llama3.chat_format import stop_token_ids
        from training.generation.engine import SamplingSettings, make_engine

        self.tokenizer = tokenizer
        self.options = registry.dialog_options() | {"date_string": date_string}
        self.engine = engine or make_engine(backend, model, max_batch_tokens=max_batch_tokens)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.settings = SamplingSettings(
            1, max_new_tokens, temperature, top_p, seed, tuple(stop_token_ids(tokenizer)), pad
        )
        self.next_index = 0

    def prompt_ids(self, dialog: Sequence[Mapping[str, Any]]) -> list[int]:
        """The dialog's token ids ending with the assistant header."""
        from hf_llama3 import encode_dialog

        return encode_dialog(self.tokenizer, list(dialog), add_generation_prompt=True, **self.options).input_ids

    def __call__(self, dialogs: Sequence[list[dict[str, Any]]]) -> list[str]:
        prompts = [self.prompt_ids(dialog) for dialog in dialogs]
        indices = list(range(self.next_index, self.next_index + len(prompts)))
        self.next_index += len(prompts)
        samples = self.engine.generate(prompts, indices, self.settings)
        return [self.tokenizer.decode(list(s[0]), skip_special_tokens=False) for s in samples]
