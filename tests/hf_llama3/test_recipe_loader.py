"""The shared recipe loader: types by annotation, key paths in one-line errors, bounds, dotted --set, --help listing."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from hf_llama3.recipe_loader import bounds, build, describe, load_recipe, read_yaml


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Inner:
    """Args:
    depth: how deep.
    """

    depth: int = dataclasses.field(default=2, metadata=bounds(min=1))
    ratio: float = dataclasses.field(default=0.5, metadata=bounds("a share", gt=0, max=1))


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: Inner | None = None
    flag: bool = False
    lr: float = 1e-3
    steps: int | None = None
    path: Path = Path("out")
    mode: Literal["a", "b"] = "a"
    color: Color = Color.RED
    pair: tuple[int, int] = (1, 2)
    sizes: list[int] = dataclasses.field(default_factory=list)
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    either: int | str = 0
    section: dict | None = dataclasses.field(default=None, metadata={"schema": Inner})

    RECIPE_CONSTRAINTS: ClassVar[dict] = {"steps": {"min": 1}, "sizes": {"min": 1}}


def _error(values: dict) -> str:
    with pytest.raises(ValueError) as err:
        build(Outer, values, source="r.yaml")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_values_are_checked_and_converted_by_annotation():
    config = build(
        Outer,
        {
            "name": "x",
            "inner": {"depth": 3},
            "maybe": {"ratio": 1},
            "lr": "1e-5",  # YAML 1.1 reads this as a string
            "steps": 5,
            "path": "runs/a",
            "mode": "b",
            "color": "blue",
            "pair": [3, 4],
            "weights": {"web": 1},
            "either": "s",
        },
    )
    assert (config.inner.depth, config.maybe.ratio, config.lr, config.path) == (3, 1, 1e-5, Path("runs/a"))
    assert (config.mode, config.color, config.pair, config.weights, config.either) == (
        "b",
        Color.BLUE,
        (3, 4),
        {"web": 1},
        "s",
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"name": 3}, "r.yaml: name: expected a string, got 3 (int)"),
        ({"name": "x", "flag": 1}, "flag: expected true or false, got 1 (int)"),
        ({"name": "x", "flag": "yes please"}, "flag: expected true or false"),
        ({"name": "x", "inner": {"depth": 1.5}}, "inner.depth: expected an integer, got 1.5"),
        ({"name": "x", "inner": {"depth": 0}}, "inner.depth: must be >= 1, got 0"),
        ({"name": "x", "inner": {"ratio": float("nan")}}, "inner.ratio: must be a finite number"),
        ({"name": "x", "maybe": {"ratio": 0}}, "maybe.ratio: must be > 0, got 0"),
        ({"name": "x", "inner": {"dept": 1}}, "unknown key(s) ['inner.dept']. Valid keys of inner: depth, ratio."),
        ({"name": "x", "steps": 0}, "steps: must be >= 1, got 0"),
        ({"name": "x", "steps": 10**30}, "steps: 1e+30 is beyond the 64-bit integer range"),
        ({"name": "x", "sizes": [1, -2]}, "sizes[1]: must be >= 1, got -2"),
        ({"name": "x", "mode": "c"}, "mode: expected one of ['a', 'b'], got 'c'"),
        ({"name": "x", "color": "green"}, "color: expected one of ['red', 'blue']"),
        ({"name": "x", "pair": [1]}, "pair: expected 2 items, got 1"),
        ({"name": "x", "weights": {"web": "lots"}}, "weights.web: expected a number"),
        ({"name": "x", "either": [1]}, "either: expected int or str, got [1] (list)"),
        ({"name": "x", "lr": None}, "lr: expected a number, got null"),
        ({}, "missing required key(s) ['name'] for Outer"),
        ({"name": "x", "section": {"depth": 0}}, "section.depth: must be >= 1, got 0"),
        (
            {"name": "x", "section": {"deep": 1}},
            "unknown key(s) ['section.deep']. Valid keys of section: depth, ratio.",
        ),
    ],
)
def test_errors_name_the_key_path_in_one_line(values, message):
    assert message in _error(values)


def test_a_schema_checked_mapping_stays_a_dict():
    config = build(Outer, {"name": "x", "section": {"depth": 3}})
    assert config.section == {"depth": 3}
    assert "  section.depth (int, default 2)" in describe(Outer)


def test_yaml_errors_overrides_and_extra_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ninner:\n  depth: [1,\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"r.yaml: YAML syntax error at line 4:1"):
        read_yaml(recipe)
    recipe.write_text("name: x\ninner: {depth: 4}\n", encoding="utf-8")
    config = load_recipe(Outer, recipe, ["inner.ratio=0.25", "maybe.depth=7", "sizes=[1, 2]"], {"flag": True})
    assert (config.inner.depth, config.inner.ratio, config.maybe.depth, config.sizes, config.flag) == (
        4,
        0.25,
        7,
        [1, 2],
        True,
    )
    with pytest.raises(ValueError, match=r"--set name\.first: 'name' is not a section"):
        load_recipe(Outer, recipe, ["name.first=a"])
    with pytest.raises(ValueError, match="--set expects key=value"):
        load_recipe(Outer, recipe, ["inner"])
    with pytest.raises(FileNotFoundError):
        load_recipe(Outer, tmp_path / "missing.yaml")


def test_describe_lists_every_key_with_type_default_help_and_bounds():
    text = describe(Outer)
    assert "  inner.depth (int, default 2)\n      how deep. [>= 1]" in text
    assert "  inner.ratio (float, default 0.5)\n      a share [> 0, <= 1]" in text
    assert "  name (str, default (required))" in text
    assert "  steps (int or null, default None)\n      [>= 1]" in text
