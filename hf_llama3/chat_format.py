"""The Llama 3.1 dialog format: encoding with loss masks, decoding with tool-call parsing.

A dialog is a list of messages in the Hugging Face shape::

    {"role": "system" | "user" | "assistant" | "ipython" ("tool" is an alias), "content": str,
     # assistant only:
     "tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict | JSON str}}],
     "stop_reason": "end_of_turn" | "end_of_message"}

Each turn is ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{body}<|eot_id|>`` after one
``<|begin_of_text|>`` [paper 4.1.1]. An assistant turn that calls a tool carries only the call: built-in
tools (``brave_search.call(query="...")``, ``wolfram_alpha``, code for ``code_interpreter``) and custom
JSON calls open with ``<|python_tag|>`` and end with ``<|eom_id|>`` (the model waits for the tool's
result, sent back in an ``ipython`` turn); ``<function=name>{...}</function>`` calls end the turn. That is
the layout of Meta's ``llama_models/llama3_1/prompt_format.md`` and the default,
``python_tag_style="prompt_format"``. Meta's reference ``ChatFormat`` (``llama_models/llama3/chat_format.py``)
writes ``<|python_tag|>`` only before code-interpreter calls and ends an assistant turn with ``<|eom_id|>``
only when its ``stop_reason`` says ``end_of_message``; ``python_tag_style="chat_format"`` renders exactly that
(an assistant turn without ``stop_reason`` then ends with ``<|eot_id|>``, as Meta's ``RawMessage`` does), so
the token ids equal ``ChatFormat.encode_dialog_prompt``. Both styles parse back with `parse_tool_call`.

Tools are declared with ``builtin_tools`` (names) and ``tools`` (custom JSON-schema definitions, as
transformers passes them to chat templates). They turn on ``Environment: ipython`` in the system turn,
``Tools: ...`` lists the built-in ones, and custom ones are described in a user turn right after the
system turn, as Meta's tool prompt generators do. ``date_string`` adds the "Cutting Knowledge Date" and
"Today Date" lines.

`encode_dialog` turns a dialog into ``input_ids`` with ``labels`` (assistant bodies and their end tokens
only, for SFT [paper 4.1.3]) and a formatting-token mask (headers and termination tokens, which DPO drops
from its loss [paper 4.1.4]). It encodes each piece of text on its own, as Meta's ``ChatFormat`` does,
and treats special-token text inside messages as plain text. The chat template shipped with the tokenizer
(``chat_template.jinja``, which takes the same options, ``python_tag_style`` included, as template variables)
renders the same string as `render_dialog`; tokenized, it gives the same ids,
except for message text that starts with whitespace holding a line break (tokenizing the rendered string
merges it with the header's ``\\n\\n``) or that contains special-token text.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant", "ipython")
# transformers and OpenAI call tool results "tool"; the Llama 3.1 header says "ipython".
ROLE_ALIASES = {"tool": "ipython"}
# Meta's built-in tools (llama_models.datatypes.BuiltinTool). Code interpreter is switched on by
# "Environment: ipython" alone and never listed on the "Tools:" line.
QUERY_TOOLS = ("brave_search", "wolfram_alpha", "photogen")
CODE_INTERPRETER = "code_interpreter"
BUILTIN_TOOLS = (*QUERY_TOOLS, CODE_INTERPRETER)
TOOL_PROMPT_FORMATS = ("json", "function_tag")
STOP_REASONS = ("end_of_turn", "end_of_message")
# Where <|python_tag|> goes: "prompt_format" (Meta's prompt_format.md: before built-in, code and JSON calls) or
# "chat_format" (Meta's ChatFormat.encode_message: before code-interpreter calls only).
PYTHON_TAG_STYLES = ("prompt_format", "chat_format")
# Pre-training data ends with 2023 [paper 3.1]; Meta's system prompt says "December 2023".
KNOWLEDGE_CUTOFF = "December 2023"

BOS = "<|begin_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"
PYTHON_TAG = "<|python_tag|>"
# Generation stops on any of these (Meta's Tokenizer.stop_tokens plus end_of_text for base models).
STOP_TOKENS = ("<|end_of_text|>", EOM, EOT)
# Ids in the real Llama 3 vocabulary: bos 128000, end_of_text 128001, pad 128004, eom 128008, eot 128009.
BOS_TOKEN_ID = 128000
PAD_TOKEN_ID = 128004
CHAT_EOS_TOKEN_IDS = (128001, 128008, 128009)
IGNORE_INDEX = -100

_FUNCTION_TAG_INSTRUCTIONS = (
    "Think very carefully before calling functions.\n"
    "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
    '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
    "Reminder:\n"
    "- If looking for real time information use relevant functions before falling back to brave_search\n"
    "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
    "- Required parameters MUST be specified\n"
    "- Only call one function at a time\n"
    "- Put the entire function call reply on one line"
)
_JSON_TOOLS_PREAMBLE = (
    "Answer the user's question by making use of the following functions if needed.\n"
    "If none of the function can be used, please say so.\n"
    "Here is a list of functions in JSON format:\n"
)


class DialogError(ValueError):
    """A dialog that the Llama 3.1 format cannot express; the message names the message and the fix."""


@dataclass(frozen=True)
class DialogOptions:
    """How a dialog is rendered: declared tools, tool-call format, date line, generation prompt, tag style."""

    tools: tuple[Mapping[str, Any], ...] = ()
    builtin_tools: tuple[str, ...] = ()
    tool_prompt_format: str = "json"
    date_string: str | None = None
    add_generation_prompt: bool = False
    python_tag_style: str = "prompt_format"

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools", tuple(self.tools or ()))
        object.__setattr__(self, "builtin_tools", tuple(self.builtin_tools or ()))
        unknown = [name for name in self.builtin_tools if name not in BUILTIN_TOOLS]
        if unknown:
            raise DialogError(f"unknown built-in tool(s) {unknown}; Llama 3.1 has {list(BUILTIN_TOOLS)}.")
        if self.tool_prompt_format not in TOOL_PROMPT_FORMATS:
            raise DialogError(
                f"tool_prompt_format={self.tool_prompt_format!r}; use one of {list(TOOL_PROMPT_FORMATS)}."
            )
        if self.python_tag_style not in PYTHON_TAG_STYLES:
            raise DialogError(
                f"python_tag_style={self.python_tag_style!r}; use 'prompt_format' (Meta's prompt_format.md, the "
                "default) or 'chat_format' (Meta's ChatFormat: <|python_tag|> before code-interpreter calls only)."
            )
        for i, tool in enumerate(self.tools):
            function = tool.get("function") if isinstance(tool, Mapping) else None
            if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
                raise DialogError(
                    f"tools[{i}] must look like {{'type': 'function', 'function': {{'name': ..., 'description': "
                    "..., 'parameters': {...}}} (transformers' JSON-schema tool format)."
                )
        if self.date_string is not None and not isinstance(self.date_string, str):
            raise DialogError(f"date_string must be a string such as '26 July 2024', got {self.date_string!r}.")

    @property
    def custom_tool_names(self) -> tuple[str, ...]:
        return tuple(tool["function"]["name"] for tool in self.tools)

    @property
    def declared_tools(self) -> frozenset[str]:
        return frozenset(self.builtin_tools) | frozenset(self.custom_tool_names)


@dataclass(frozen=True)
class Turn:
    """One rendered turn: ``header(role) + [python_tag] + body + end``; assistant turns carry loss."""

    role: str
    body: str
    end: str = EOT
    python_tag: bool = False

    def render(self) -> str:
        tag = PYTHON_TAG if self.python_tag else ""
        return f"{START_HEADER}{self.role}{END_HEADER}\n\n{tag}{self.body}{self.end}"


@dataclass
class EncodedDialog:
    """Token ids of a dialog with its loss masks (all lists have the same length).

    ``labels`` equals ``input_ids`` on assistant bodies (their ``<|python_tag|>`` included) and on their
    ``<|eot_id|>``/``<|eom_id|>``, and ``-100`` elsewhere. ``formatting_mask`` is 1 on
    ``<|begin_of_text|>``, every header (``<|start_header_id|>``, role, ``<|end_header_id|>``, ``\\n\\n``)
    and every ``<|eot_id|>``/``<|eom_id|>``.
    """

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    formatting_mask: list[int] = field(default_factory=list)

    @property
    def dpo_loss_mask(self) -> list[int]:
        """1 on the assistant tokens DPO scores: labelled and not formatting (eot/eom dropped) [paper 4.1.4]."""
        return [int(label != IGNORE_INDEX and not fmt) for label, fmt in zip(self.labels, self.formatting_mask)]

    def extend(self, ids: Sequence[int], *, trainable: bool, formatting: bool) -> None:
        self.input_ids.extend(ids)
        self.labels.extend(ids if trainable else [IGNORE_INDEX] * len(ids))
        self.formatting_mask.extend([int(formatting)] * len(ids))


def system_prompt(system_message: str | None, options: DialogOptions) -> str | None:
    """The system turn's text, or None when the dialog has no system turn.

    Layout of Meta's system prompt generators: ``Environment: ipython`` when any tool is declared, then
    ``Tools: <built-ins>`` (or a blank line when only custom tools are declared), then the date lines,
    then the user's system message after a blank line.
    """
    text = ""
    if options.builtin_tools or options.tools:
        text += "Environment: ipython\n"
        listed = [name for name in options.builtin_tools if name != CODE_INTERPRETER]
        if listed:
            text += "Tools: " + ", ".join(listed) + "\n"
        elif options.tools:
            text += "\n"
    if options.date_string is not None:
        text += f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {options.date_string}"
        if system_message:
            text += "\n\n"
    if system_message:
        text += system_message
    if not text and system_message is None:
        return None
    return text


def custom_tools_prompt(options: DialogOptions) -> str | None:
    """The user turn that describes custom tools (Meta puts it right after the system turn), or None."""
    if not options.tools:
        return None
    functions = [tool["function"] for tool in options.tools]
    if options.tool_prompt_format == "json":
        listing = "\n".join(json.dumps(tool, indent=4, ensure_ascii=False) for tool in options.tools)
        return f"{_JSON_TOOLS_PREAMBLE}{listing}\n\nReturn function calls in JSON format."
    blocks = [
        f"Use the function '{fn['name']}' to '{fn.get('description') or ''}':\n{json.dumps(fn, ensure_ascii=False)}"
        for fn in functions
    ]
    return (
        "You have access to the following functions:\n\n" + "\n\n".join(blocks) + "\n\n" + _FUNCTION_TAG_INSTRUCTIONS
    )


def _arguments(call: Mapping[str, Any], where: str) -> tuple[str, dict[str, Any] | str]:
    function = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise DialogError(f"{where}: a tool call must be {{'function': {{'name': str, 'arguments': dict}}}}.")
    arguments = function.get("arguments", {})
    if not isinstance(arguments, (Mapping, str)):
        raise DialogError(f"{where}: tool call arguments must be a dict or a JSON string, got {arguments!r}.")
    return function["name"], dict(arguments) if isinstance(arguments, Mapping) else arguments


def tool_call_text(call: Mapping[str, Any], options: DialogOptions, where: str = "tool call") -> tuple[str, bool]:
    """The text of one assistant tool call and whether it opens with ``<|python_tag|>``.

    With ``python_tag_style="prompt_format"`` built-in, code and JSON calls open with the tag; with
    ``"chat_format"`` only code-interpreter calls do, as in Meta's ``ChatFormat.encode_message``.
    """
    name, arguments = _arguments(call, where)
    if name not in options.declared_tools:
        raise DialogError(
            f"{where}: calls tool {name!r}, which the dialog does not declare; declared: "
            f"{sorted(options.declared_tools)}. Pass it in builtin_tools={list(BUILTIN_TOOLS)} or tools=[...]."
        )
    if name in options.builtin_tools:
        key = "code" if name == CODE_INTERPRETER else "query"
        value = arguments.get(key) if isinstance(arguments, dict) else None
        if not isinstance(value, str):
            raise DialogError(f"{where}: built-in tool {name!r} takes one string argument {key!r}.")
        if name == CODE_INTERPRETER:
            return value, True
        return f'{name}.call(query="{value}")', options.python_tag_style == "prompt_format"
    encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    if options.tool_prompt_format == "function_tag":
        return f"<function={name}>{encoded}</function>", False
    tagged = options.python_tag_style == "prompt_format"
    return f'{{"type": "function", "name": {json.dumps(name, ensure_ascii=False)}, "parameters": {encoded}}}', tagged


def dialog_turns(messages: Sequence[Mapping[str, Any]], options: DialogOptions) -> list[Turn]:
    """Validate a dialog and lay it out as turns (system and custom-tools turns included)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise DialogError("the dialog is empty: pass a non-empty list of {'role': ..., 'content': ...} messages.")
    turns: list[Turn] = []
    system_message = None
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, Mapping):
            raise DialogError(f"{where} must be a dict with 'role' and 'content', got {type(message).__name__}.")
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise DialogError(
                f"{where} has unknown role {message.get('role')!r}; Llama 3.1 roles are {list(ROLES)} (or 'tool')."
            )
        content = message.get("content")
        calls = message.get("tool_calls") or []
        if calls and role != "assistant":
            raise DialogError(f"{where}: only assistant messages can carry tool_calls (role is {role!r}).")
        if role == "assistant" and calls:
            if content not in (None, ""):
                raise DialogError(
                    f"{where}: an assistant turn that calls a tool carries only the call; empty content."
                )
            if len(calls) != 1:
                raise DialogError(f"{where}: Llama 3.1 makes one tool call per turn, got {len(calls)}.")
        elif not isinstance(content, str):
            raise DialogError(
                f"{where} ({role}): content must be a string, got {type(content).__name__}; Llama 3.1 is text only."
            )
        if role == "system":
            if i != 0:
                raise DialogError(f"{where}: a system message may only come first.")
            system_message = content
            continue
        if role != "assistant":
            if message.get("stop_reason") is not None:
                raise DialogError(f"{where}: only assistant messages have a stop_reason.")
            turns.append(Turn(role, content))
            continue
        python_tag, body = False, content
        if calls:
            body, python_tag = tool_call_text(calls[0], options, f"{where} tool_calls[0]")
        stop_reason = message.get("stop_reason")
        if stop_reason is None:  # absent (or None, as datasets fills missing keys)
            # prompt_format.md: a tagged call waits for its result; Meta's ChatFormat: eom only when asked for.
            waits = python_tag and options.python_tag_style == "prompt_format"
            stop_reason = "end_of_message" if waits else "end_of_turn"
        if stop_reason not in STOP_REASONS:
            raise DialogError(f"{where}: stop_reason={stop_reason!r}; use one of {list(STOP_REASONS)}.")
        turns.append(Turn(role, body, EOM if stop_reason == "end_of_message" else EOT, python_tag))
    if options.add_generation_prompt and turns and turns[-1].role == "assistant":
        raise DialogError(
            "the last message is an assistant turn, which cannot take a generation prompt; "
            "end the dialog with a user or ipython message, or pass add_generation_prompt=False."
        )
    head = []
    system_text = system_prompt(system_message, options)
    if system_text is not None:
        head.append(Turn("system", system_text))
    tools_text = custom_tools_prompt(options)
    if tools_text is not None:
        head.append(Turn("user", tools_text))
    return head + turns


def render_dialog(messages: Sequence[Mapping[str, Any]], **options: Any) -> str:
    """The dialog as one string; equal to the tokenizer's chat template output (``tokenize=False``)."""
    opts = DialogOptions(**options)
    text = BOS + "".join(turn.render() for turn in dialog_turns(messages, opts))
    if opts.add_generation_prompt:
        text += f"{START_HEADER}assistant{END_HEADER}\n\n"
    return text


def _text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    if not text:
        return []
    # Special-token text inside a message stays text, as in Meta's ChatFormat (no prompt injection).
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _header_ids(tokenizer: PreTrainedTokenizerBase, role: str) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids([START_HEADER])
    ids += _text_ids(tokenizer, role) + tokenizer.convert_tokens_to_ids([END_HEADER]) + _text_ids(tokenizer, "\n\n")
    return ids


def encode_dialog(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    builtin_tools: Sequence[str] | None = None,
    tool_prompt_format: str = "json",
    date_string: str | None = None,
    add_generation_prompt: bool = False,
    python_tag_style: str = "prompt_format",
) -> EncodedDialog:
    """Encode a dialog into ``input_ids``, assistant-only ``labels`` and the formatting-token mask.

    Args:
        tokenizer: the Llama 3 tokenizer (`hf_llama3.load_tokenizer`).
        messages: the dialog (see the module docstring for the message shape).
        tools: custom tools in transformers' JSON-schema format.
        builtin_tools: any of ``brave_search``, ``wolfram_alpha``, ``photogen``, ``code_interpreter``.
        tool_prompt_format: ``"json"`` (custom calls as JSON after ``<|python_tag|>``) or ``"function_tag"``.
        date_string: today's date for the system prompt (e.g. ``"26 July 2024"``); None leaves the lines out.
        add_generation_prompt: end with an open assistant header for the model to complete.
        python_tag_style: ``"prompt_format"`` (Meta's prompt_format.md) or ``"chat_format"`` (token ids equal to
            Meta's ``ChatFormat.encode_dialog_prompt``); see the module docstring.

    Raises:
        DialogError: empty dialog, unknown role, non-string content, undeclared tool, bad tool call, a
            generation prompt after an assistant turn, or an unknown ``python_tag_style``.
    """
    options = DialogOptions(
        tools or (), builtin_tools or (), tool_prompt_format, date_string, add_generation_prompt, python_tag_style
    )
    eom_id, eot_id, tag_id, bos_id = tokenizer.convert_tokens_to_ids([EOM, EOT, PYTHON_TAG, BOS])
    encoded = EncodedDialog()
    encoded.extend([bos_id], trainable=False, formatting=True)
    for turn in dialog_turns(messages, options):
        trainable = turn.role == "assistant"
        encoded.extend(_header_ids(tokenizer, turn.role), trainable=False, formatting=True)
        body = ([tag_id] if turn.python_tag else []) + _text_ids(tokenizer, turn.body)
        encoded.extend(body, trainable=trainable, formatting=False)
        encoded.extend([eom_id if turn.end == EOM else eot_id], trainable=trainable, formatting=True)
    if add_generation_prompt:
        encoded.extend(_header_ids(tokenizer, "assistant"), trainable=False, formatting=True)
    return encoded


# Meta's tool-call shapes (llama_models/llama3/tool_utils.py): `<function=name>{json}` (closing tag optional),
# a JSON object with "name" and "parameters", a Python list of keyword-argument calls, `tool.call(query="...")`.
_FUNCTION_TAG = re.compile(r"<function=(?P<name>[^}]+?)>")
_BUILTIN_CALL = re.compile(r'\b(?P<name>\w+)\.call\(query="(?P<query>[^"]*)"\)')


def _function_tag_call(text: str) -> tuple[str, dict[str, Any]] | None:
    match = _FUNCTION_TAG.search(text)
    if match is None:
        return None
    start = text.find("{", match.end())
    if start != match.end():
        return None
    try:
        arguments, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError:
        try:  # models sometimes write Python-style quotes: {'n': 10}
            end = text.index("}", start) + 1
            arguments = json.loads(text[start:end].replace("'", '"'))
        except (ValueError, json.JSONDecodeError):
            return None
    return (match.group("name"), arguments) if isinstance(arguments, dict) else None


def _json_call(text: str) -> tuple[str, dict[str, Any]] | None:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not ("name" in parsed or parsed.get("type") == "function"):
        return None
    arguments = parsed.get("parameters", parsed.get("arguments", {}))
    return (parsed["name"], arguments) if isinstance(parsed.get("name"), str) else None


def _python_list_call(text: str) -> tuple[str, dict[str, Any]] | None:
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr) or not isinstance(tree.body[0].value, ast.List):
        return None
    calls = tree.body[0].value.elts
    valid = calls and all(
        isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and not c.args and all(k.arg for k in c.keywords)
        for c in calls
    )
    if not valid:
        return None
    try:  # only the first call: Llama 3.1 makes one call per turn
        return calls[0].func.id, {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}
    except ValueError:
        return None


def parse_tool_call(text: str, python_tag: bool = False) -> dict[str, Any] | None:
    """Parse the tool call in an assistant body, or None when the body is a plain answer.

    Tries, in Meta's order: custom calls (``<function=name>{...}</function>``, a JSON object with ``name``
    and ``parameters``, ``[name(key=value)]``), then built-in ``tool.call(query="...")``; a body that
    opened with ``<|python_tag|>`` and matches none of them is code for the code interpreter.
    Returns ``{"type": "function", "function": {"name": ..., "arguments": {...}}}``.
    """
    found = _function_tag_call(text) or _json_call(text) or _python_list_call(text)
    if found is not None:
        name, arguments = found
        if name in BUILTIN_TOOLS and arguments:  # a built-in tool called in the custom format
            arguments = {"query": next(iter(arguments.values()))}
    elif (match := _BUILTIN_CALL.search(text)) is not None:
        name, arguments = match.group("name"), {"query": match.group("query")}
    elif python_tag:
        name, arguments = CODE_INTERPRETER, {"code": text}
    else:
        return None
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def parse_assistant_message(text: str) -> dict[str, Any]:
    """Turn generated assistant text (special tokens kept) into a message with its tool call parsed.

    The result has ``role``, ``content`` (empty when a tool is called), ``tool_calls`` and ``stop_reason``
    (``end_of_turn``, ``end_of_message``, or ``out_of_tokens`` when no stop token ends the text).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected the generated text as a string, got {type(text).__name__}.")
    body = text.strip(" ")
    header = f"{START_HEADER}assistant{END_HEADER}\n\n"
    body = body.removeprefix(header)
    python_tag = body.startswith(PYTHON_TAG)
    body = body.removeprefix(PYTHON_TAG)
    stop_reason = "out_of_tokens"
    for token, reason in ((EOT, "end_of_turn"), (EOM, "end_of_message"), ("<|end_of_text|>", "end_of_turn")):
        if body.endswith(token):
            body, stop_reason = body[: -len(token)], reason
            break
    call = parse_tool_call(body, python_tag)
    return {
        "role": "assistant",
        "content": "" if call else body,
        "tool_calls": [call] if call else [],
        "stop_reason": stop_reason,
    }


def decode_assistant_message(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> dict[str, Any]:
    """Decode generated assistant token ids into a message (see `parse_assistant_message`)."""
    return parse_assistant_message(tokenizer.decode(list(token_ids), skip_special_tokens=False))


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end generation: ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``."""
    return tokenizer.convert_tokens_to_ids(list(STOP_TOKENS))


def chat_generation_config(tokenizer: PreTrainedTokenizerBase | None = None, **overrides: Any) -> GenerationConfig:
    """Generation defaults for an exported chat model.

    Stops on end_of_text, eom and eot, pads with ``<|finetune_right_pad_id|>``, and samples with Meta's
    reference defaults (temperature 0.6, top-p 0.9; ``llama_models/llama3/generation.py``). With a tokenizer,
    ids come from its vocabulary; without, from the real Llama 3 vocabulary.
    """
    if tokenizer is not None:
        eos = stop_token_ids(tokenizer)
        bos, pad = tokenizer.convert_tokens_to_ids([BOS, "<|finetune_right_pad_id|>"])
    else:
        eos, bos, pad = list(CHAT_EOS_TOKEN_IDS), BOS_TOKEN_ID, PAD_TOKEN_ID
    defaults = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    defaults |= {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    return GenerationConfig(**(defaults | overrides))
