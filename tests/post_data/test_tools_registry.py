"""Tool registry [4.3.5]: custom-tool schemas and argument errors, the local search index, the SymPy math engine,
and the swappable API clients (constructed only: no test calls a network service)."""

from __future__ import annotations

import json

import pytest

from training.post_data.tools import Tool, ToolArgumentError, ToolError, ToolRegistry, build_registry
from training.post_data.tools.builtin import WolframAlphaClient
from training.post_data.tools.math_engine import MathQueryError, answer
from training.post_data.tools.registry import check_schema, load_callable, validate_arguments
from training.post_data.tools.search import BraveSearchClient, LocalSearchIndex

BOOK = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a table.",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string"},
                "people": {"type": "integer"},
                "time": {"type": "string", "enum": ["18:00", "20:00"]},
                "vegan": {"type": "boolean"},
                "budget": {"type": ["number", "null"]},
            },
            "required": ["restaurant", "people"],
        },
    },
}


def book_table(restaurant: str, people: int, time: str = "20:00", vegan: bool = False, budget=None) -> str:
    return f"booked {restaurant} for {people} at {time}"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"people": 2}, "tool 'book_table': required argument 'restaurant' is missing."),
        ({"restaurant": "Chez L", "people": "two"}, "tool 'book_table': argument 'people' must be of type integer"),
        ({"restaurant": "Chez L", "people": True}, "argument 'people' must be of type integer, got bool True."),
        ({"restaurant": "Chez L", "people": 2.5}, "argument 'people' must be of type integer, got float 2.5."),
        ({"restaurant": "Chez L", "people": 2, "time": "19:00"}, "argument 'time' must be one of ['18:00', '20:00']"),
        ({"restaurant": "Chez L", "people": 2, "table": 4}, "unknown argument 'table'; it takes ['budget', 'people'"),
        (
            {"restaurant": "Chez L", "people": 2, "budget": "high"},
            "argument 'budget' must be of type ['number', 'null']",
        ),
        (["Chez L", 2], "tool 'book_table': arguments must be a JSON object, got list."),
    ],
)
def test_custom_tool_arguments_are_checked_against_the_schema(arguments, message):
    tool = Tool.from_callable(book_table, BOOK)
    with pytest.raises(ToolArgumentError) as err:
        tool(arguments)
    text = str(err.value)
    assert text.startswith("tool 'book_table': ") and message in text and "\n" not in text


def test_valid_custom_call_runs_and_registry_wraps_failures():
    registry = ToolRegistry([Tool.from_callable(book_table, BOOK)])
    assert registry.call("book_table", {"restaurant": "Chez L", "people": 2, "budget": None}) == (
        "booked Chez L for 2 at 20:00"
    )
    assert validate_arguments("f", {"properties": {"n": {"type": "number"}}}, {"n": 3}) == {"n": 3}
    with pytest.raises(ToolError, match=r"^tool 'missing' is not available; available tools: \['book_table'\]"):
        registry.call("missing", {})

    def broken(x: int) -> int:
        """Divide.

        Args:
            x: a number.
        """
        return 1 // x

    registry.add_callable(broken)
    assert registry.tools["broken"].parameters["required"] == ["x"]  # schema derived from hints and docstring
    with pytest.raises(ToolError, match=r"^tool 'broken' failed: ZeroDivisionError"):
        registry.call("broken", {"x": 0})
    assert registry.dialog_options()["tools"][1]["function"]["name"] == "broken"


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"name": "f"}, None),
        ({"function": {"description": "no name"}}, r"tool 'f': the schema must be"),
        ({"function": {"name": "f", "parameters": {"type": "array"}}}, r"'parameters' must be a JSON schema of type"),
        (
            {"function": {"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": "int"}}}}},
            r"tool 'f': argument 'n' has type 'int'; use JSON types",
        ),
        (
            {"function": {"name": "f", "parameters": {"type": "object", "properties": {}, "required": ["n"]}}},
            r"tool 'f': required arguments \['n'\] are not in 'parameters.properties'",
        ),
    ],
)
def test_malformed_schemas_are_refused_naming_the_tool(schema, message):
    if message is None:
        assert check_schema("f", schema)["name"] == "f"
        return
    with pytest.raises(ValueError, match=message):
        check_schema("f", schema)


def test_registration_errors():
    def undocumented(x):
        return x

    with pytest.raises(ValueError, match=r"^tool 'undocumented': no JSON schema given and none could be derived"):
        Tool.from_callable(undocumented)
    registry = ToolRegistry([Tool.from_callable(book_table, BOOK)])
    with pytest.raises(ValueError, match="tool 'book_table' is registered twice"):
        registry.add(Tool.from_callable(book_table, BOOK))
    with pytest.raises(ValueError, match="custom tool 'brave_search' takes the name of a built-in tool"):
        registry.add(Tool(name="brave_search", function=len))
    with pytest.raises(ValueError, match="write it as module:function"):
        load_callable("json.dumps")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        load_callable("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="json has no callable 'nope'"):
        load_callable("json:nope")
    with pytest.raises(ValueError, match="tool 'calculator': not a built-in tool"):
        build_registry(["calculator"])
    with pytest.raises(ValueError, match="brave_search: no search index"):
        build_registry(["brave_search"])
    assert build_registry(["tests.post_data.test_tools_loop:get_weather"]).custom_definitions[0]["function"][
        "parameters"
    ]["required"] == ["city"]


def test_local_search_ranks_by_bm25(tmp_path):
    index = LocalSearchIndex.from_jsonl("recipes/tiny/post_training/search_index.jsonl")
    assert [r["title"] for r in index.search("how tall is the Eiffel Tower in Paris", 2)] == ["Eiffel Tower", "Paris"]
    assert index.search("zzzz qqqq", 3) == []
    bad = tmp_path / "index.jsonl"
    bad.write_text('{"title": "a", "text": "ok"}\n{"title": "b"}\n')
    with pytest.raises(ValueError, match=r"index.jsonl: row 1: field 'text' must be"):
        LocalSearchIndex.from_jsonl(bad)


def test_api_clients_take_their_keys_from_the_environment(monkeypatch):
    monkeypatch.delenv("BRAVE_SEARCH_API_KEY", raising=False)
    monkeypatch.delenv("WOLFRAM_ALPHA_API_KEY", raising=False)
    with pytest.raises(ValueError, match="brave_search: no API key; set BRAVE_SEARCH_API_KEY"):
        BraveSearchClient()
    with pytest.raises(ValueError, match="wolfram_alpha: no API key; set WOLFRAM_ALPHA_API_KEY"):
        WolframAlphaClient()
    monkeypatch.setenv("BRAVE_SEARCH_API_KEY", "k1")
    monkeypatch.setenv("WOLFRAM_ALPHA_API_KEY", "k2")
    assert BraveSearchClient().api_key == "k1" and WolframAlphaClient().api_key == "k2"
    registry = build_registry(["brave_search", "wolfram_alpha"], search_backend="brave", math_backend="wolfram")
    assert registry.builtin_names == ["brave_search", "wolfram_alpha"]


@pytest.mark.parametrize(
    ("query", "result"),
    [
        ("solve x^2 - 4 = 0", "x = -2, x = 2"),
        ("solve 2y + 3 = 11 for y", "y = 4"),
        ("integrate sin(x)^2 dx from 0 to pi", "pi/2"),
        ("integrate x*exp(x) dx", "(x - 1)*exp(x) + constant"),
        ("derivative of x^3 + 2x", "3*x**2 + 2"),
        ("limit sin(x)/x as x -> 0", "1"),
        ("factor x^2 + 5x + 6", "(x + 2)*(x + 3)"),
        ("What is 12 times 12?", "144"),
        ("1/3 + 1/6", "1/2"),
    ],
)
def test_math_engine_answers(query, result):
    assert answer(query)["result"] == result


@pytest.mark.parametrize("query", ['__import__("os").system("ls")', "open(x)", "x.real", "[1, 2]", ""])
def test_math_engine_refuses_anything_but_math(query):
    with pytest.raises(MathQueryError):
        answer(query)


def test_math_tool_runs_in_the_sandbox_and_reports_bad_queries():
    registry = build_registry(["wolfram_alpha"])
    assert json.loads(registry.call("wolfram_alpha", {"query": "solve x^2 = 9"}))["result"] == "x = -3, x = 3"
    with pytest.raises(ToolError, match="unknown names"):
        registry.call("wolfram_alpha", {"query": "open(x)"})
    with pytest.raises(ToolArgumentError, match="tool 'wolfram_alpha': required argument 'query' is missing"):
        registry.call("wolfram_alpha", {"q": "1+1"})
