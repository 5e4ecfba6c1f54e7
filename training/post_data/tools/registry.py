"""The tool registry: built-in and custom tools by name, arguments checked against each tool's JSON schema [4.3.5].

From the paper [4.3.5]: "We implement our core tools as Python objects with different methods. Zero-shot tools can
be implemented as Python functions with descriptions, documentation (i.e., examples for how to use them), and the
model only needs the function's signature and docstring as context to generate the appropriate call. We also
convert function definitions and calls to JSON format, e.g., for web API calls."

A :class:`Tool` is a Python callable with a JSON schema in the shape transformers passes to chat templates
(``{"type": "function", "function": {"name", "description", "parameters"}}``); a callable without a schema gets one
from its type hints and Google-style docstring (``transformers.utils.get_json_schema``). Calling a tool checks the
arguments against the schema first (required keys, unknown keys, JSON types, ``enum``) and raises
:class:`ToolArgumentError`, one line naming the tool and the argument. Built-in tools
(``brave_search``, ``wolfram_alpha``, ``code_interpreter``: :mod:`training.post_data.tools.builtin`) take one string
argument (``query``, or ``code``) and are rendered by the Llama 3.1 format without their schema (the system turn's
``Tools:`` line names them).

Unlike llama-stack's tool runtime (a server with providers), this is an in-process dictionary that the tool-use loop,
the synthetic-dialog step and ``hf-llama3 chat`` share, and the place that knows how to render the tools into the
dialog options of :mod:`hf_llama3.chat_format`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hf_llama3.chat_format import BUILTIN_TOOLS, CODE_INTERPRETER

# JSON-schema type -> the Python types a JSON value of that type decodes to (bool is not an integer here).
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


class ToolError(Exception):
    """A tool call that could not run or failed; the message is what the model reads in the ``ipython`` turn."""


class ToolArgumentError(ToolError, ValueError):
    """A tool call whose arguments do not match the tool's JSON schema."""


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = [expected] if isinstance(expected, str) else list(expected)
    for name in names:
        types = JSON_TYPES.get(name)
        if types is None:
            continue
        if isinstance(value, bool) and name in ("integer", "number"):
            continue
        if isinstance(value, types):
            return True
    return False


def check_schema(name: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``function`` part of a tool definition, checked: name, an ``object`` parameters schema, known types."""
    function = schema.get("function", schema) if isinstance(schema, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ValueError(f"tool {name!r}: the schema must be {{'type': 'function', 'function': {{'name': ...}}}}.")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
        raise ValueError(f"tool {name!r}: 'parameters' must be a JSON schema of type 'object'.")
    properties = parameters.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ValueError(f"tool {name!r}: 'parameters.properties' must map argument names to schemas.")
    for key, spec in properties.items():
        kinds = spec.get("type") if isinstance(spec, Mapping) else None
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if kinds is not None and (not isinstance(kinds, list) or any(k not in JSON_TYPES for k in kinds)):
            raise ValueError(
                f"tool {name!r}: argument {key!r} has type {spec.get('type')!r}; use JSON types {list(JSON_TYPES)}."
            )
    missing = [key for key in parameters.get("required", []) if key not in properties]
    if missing:
        raise ValueError(f"tool {name!r}: required arguments {missing} are not in 'parameters.properties'.")
    return {"name": function["name"], "description": function.get("description", ""), "parameters": dict(parameters)}


def validate_arguments(name: str, parameters: Mapping[str, Any], arguments: Any) -> dict[str, Any]:
    """``arguments`` checked against the ``parameters`` schema; raises :class:`ToolArgumentError` naming the
    tool and the first bad argument (missing, unknown, wrong JSON type or not one of its ``enum``)."""
    if not isinstance(arguments, Mapping):
        raise ToolArgumentError(f"tool {name!r}: arguments must be a JSON object, got {type(arguments).__name__}.")
    properties = parameters.get("properties", {})
    for key in parameters.get("required", []):
        if key not in arguments:
            raise ToolArgumentError(f"tool {name!r}: required argument {key!r} is missing.")
    for key, value in arguments.items():
        if key not in properties:
            if parameters.get("additionalProperties", False) is not False:
                continue
            raise ToolArgumentError(f"tool {name!r}: unknown argument {key!r}; it takes {sorted(properties)}.")
        spec = properties[key] or {}
        expected = spec.get("type")
        if expected is not None and not _type_ok(value, expected):
            raise ToolArgumentError(
                f"tool {name!r}: argument {key!r} must be of type {expected}, got {type(value).__name__} {value!r}."
            )
        if "enum" in spec and value not in spec["enum"]:
            raise ToolArgumentError(f"tool {name!r}: argument {key!r} must be one of {spec['enum']}, got {value!r}.")
    return dict(arguments)


@dataclasses.dataclass
class Tool:
    """A named callable with its JSON schema; ``builtin`` tools are the Llama 3.1 built-in ones."""

    name: str
    function: Callable[..., Any]
    description: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "object", "properties": {}})
    builtin: bool = False

    @classmethod
    def from_callable(cls, function: Callable[..., Any], schema: Mapping[str, Any] | None = None) -> Tool:
        """A custom tool from a callable and its schema; without one, the schema transformers derives from the
        callable's type hints and docstring (``Args:`` section)."""
        name = getattr(function, "__name__", repr(function))
        if schema is None:
            from transformers.utils import get_json_schema

            try:
                schema = get_json_schema(function)
            except (
                Exception
            ) as err:  # transformers raises its own DocstringParsingException / TypeHintParsingException
                raise ValueError(
                    f"tool {name!r}: no JSON schema given and none could be derived ({err}); pass schema=... "
                    "or give the function type hints and a Google-style docstring with an Args section."
                ) from None
        function_schema = check_schema(name, schema)
        return cls(function_schema["name"], function, function_schema["description"], function_schema["parameters"])

    def definition(self) -> dict[str, Any]:
        """The tool as transformers passes it to chat templates (``tools=[...]``)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __call__(self, arguments: Mapping[str, Any]) -> str:
        """Run the tool on validated ``arguments``; the result as the text of an ``ipython`` turn."""
        values = validate_arguments(self.name, self.parameters, arguments)
        result = self.function(**values)
        return result if isinstance(result, str) else _to_text(result)


def _to_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return str(value)


def builtin_tool(name: str, function: Callable[[str], str], description: str) -> Tool:
    """A built-in tool: one string argument, ``code`` for the code interpreter, ``query`` for the others."""
    if name not in BUILTIN_TOOLS:
        raise ValueError(f"tool {name!r} is not a Llama 3.1 built-in tool; built-in tools are {list(BUILTIN_TOOLS)}.")
    key = "code" if name == CODE_INTERPRETER else "query"
    parameters = {"type": "object", "properties": {key: {"type": "string"}}, "required": [key]}
    return Tool(name, function, description, parameters, builtin=True)


def load_callable(spec: str) -> Callable[..., Any]:
    """``package.module:function`` imported and returned (custom tools on the command line and in recipes)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"custom tool {spec!r}: write it as module:function (e.g. my_tools:get_weather).")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"custom tool {spec!r}: cannot import {module_name!r} ({err}); put it on PYTHONPATH."
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"custom tool {spec!r}: {module_name} has no callable {attribute!r}.")
    return function


class ToolRegistry:
    """Tools by name, in the order they were added; renders them into ``hf_llama3.chat_format`` dialog options."""

    def __init__(self, tools: Iterable[Tool] = (), tool_prompt_format: str = "json") -> None:
        self.tools: dict[str, Tool] = {}
        self.tool_prompt_format = tool_prompt_format
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> Tool:
        """Register ``tool``; a second tool with the same name is refused."""
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is registered twice; give each tool its own name.")
        if not tool.builtin and tool.name in BUILTIN_TOOLS:
            raise ValueError(f"custom tool {tool.name!r} takes the name of a built-in tool; rename the function.")
        self.tools[tool.name] = tool
        return tool

    def add_callable(self, function: Callable[..., Any], schema: Mapping[str, Any] | None = None) -> Tool:
        """Register a custom tool from a callable (and its JSON schema, else one derived from it)."""
        return self.add(Tool.from_callable(function, schema))

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __getitem__(self, name: str) -> Tool:
        return self.tools[name]

    @property
    def builtin_names(self) -> list[str]:
        return [name for name, tool in self.tools.items() if tool.builtin]

    @property
    def custom_definitions(self) -> list[dict[str, Any]]:
        return [tool.definition() for tool in self.tools.values() if not tool.builtin]

    def dialog_options(self) -> dict[str, Any]:
        """``builtin_tools``, ``tools`` and ``tool_prompt_format`` for ``render_dialog`` / ``encode_dialog``."""
        return {
            "builtin_tools": self.builtin_names,
            "tools": self.custom_definitions,
            "tool_prompt_format": self.tool_prompt_format,
        }

    def call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Run tool ``name``; raises :class:`ToolError` (unknown tool, bad arguments, or the tool's own failure)."""
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"tool {name!r} is not available; available tools: {list(self.tools)}.")
        try:
            return tool(arguments)
        except ToolError:
            raise
        except Exception as err:  # the tool's own failure is the model's to read, not the loop's to crash on
            raise ToolError(f"tool {name!r} failed: {type(err).__name__}: {err}") from err
