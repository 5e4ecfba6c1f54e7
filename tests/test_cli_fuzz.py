"""CLI fuzz test [issue 12, acceptance]: bad config values give exit 2 and one line naming the key, no traceback.

For every ``hf-llama3`` subcommand that reads a YAML recipe / ``--set``, keys are chosen from its config dataclass by
field type (int, float, bool, str, list; nested sections included) and each gets the bad values of its type: the
wrong type, empty (null), NaN and infinity, a 10**30 int, and a negative number where the field declares a bound.
Every case must be refused while the recipe loads, before any model or data is touched (the suite stays fast).

Every subcommand and sub-subcommand also has its argparse flags fuzzed: each command's real parser is taken from its
own ``--help`` (``print_help`` records the parser instead of printing), and every optional flag with a numeric
``type`` (int, float, or a ``hf_llama3.cli_types`` bound) gets not-a-number text, empty, NaN, infinity, a float for
an int flag and -1 where the type is bounded. argparse converts a flag's value as it consumes it, so the type error
comes before any missing positional or required flag: the fuzz passes only the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from hf_llama3 import cli_types
from hf_llama3.cli import COMMANDS, main
from hf_llama3.recipe_loader import field_meta
from training.post_data.cli import STEPS as POST_DATA_STEPS

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# Subcommands that load a recipe: argv before `--set` (a real recipe, so only the fuzzed key is wrong) and the config
# dataclass the recipe fills. `{tmp}` is a temporary folder.
RECIPE_COMMANDS: dict[str, tuple[list[str], str]] = {
    "curate": (["curate", "--config", str(RECIPES / "data" / "sample.yaml")], "data.config:CurateConfig"),
    "average": (["average", "--config", str(RECIPES / "tiny" / "average.yaml")], "training.averaging:AveragingConfig"),
    "reward": (["reward", "--config", str(RECIPES / "tiny" / "reward.yaml")], "training.reward:Llama3RewardConfig"),
    "rejection-sample": (
        ["rejection-sample", "--config", str(RECIPES / "tiny" / "rejection_sampling.yaml")],
        "training.rejection_sampling:RejectionSamplingConfig",
    ),
    "sft": (["sft", "--config", str(RECIPES / "tiny" / "sft.yaml")], "training.sft:Llama3SFTConfig"),
    "dpo": (["dpo", "--config", str(RECIPES / "tiny" / "dpo.yaml")], "training.dpo:Llama3DPOConfig"),
    "rounds": (["rounds", "--config", str(RECIPES / "tiny" / "rounds.yaml")], "training.rounds:RoundsConfig"),
    "guard": (
        ["guard", "train", "--config", str(RECIPES / "tiny" / "guard.yaml")],
        "training.safety.train:GuardTrainConfig",
    ),
    "pretrain": (
        ["pretrain", "--config", str(RECIPES / "tiny" / "pretrain.yaml")],
        "training.pretrain.config:PretrainRecipe",
    ),
    "nanotron-config": (
        ["nanotron-config", "--config", str(RECIPES / "tiny" / "nanotron.yaml"), "--output", "{tmp}/n.yaml"],
        "training.nanotron.config:NanotronRecipe",
    ),
    "scaling-law": (
        ["scaling-law", "sweep", "--config", str(RECIPES / "tiny" / "isoflops.yaml")],
        "training.isoflops:IsoFLOPsConfig",
    ),
    "post-data": (
        ["post-data", "curate", "--config", str(RECIPES / "tiny" / "curate.yaml")],
        "training.post_data.curate:CurateConfig",
    ),
}
# Subcommands without a recipe (their flags are argparse-typed: fuzzed by test_bad_flag_values_exit_2_with_one_line).
NO_RECIPE = {"convert", "quantize", "demo", "train-quality", "tokenizer", "eval", "vision", "plan", "chat"}

KINDS = (int, float, bool, str, list)
PER_KIND = 3  # keys fuzzed per field type and command: enough to cover sections, few enough to stay fast
HUGE_INT = str(10**30)


def _load(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _scalar(hint: Any) -> tuple[type | None, bool]:
    """``(int|float|bool|str|list, optional)`` for annotations this test fuzzes, ``(None, _)`` for the rest."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = False
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if len(members) != 1:
            return None, optional
        hint = members[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and args[0] in (int, float, str):
        return list, optional
    return (hint if hint in KINDS else None), optional


def typed_keys(cls: type, where: str = "") -> list[tuple[str, type, bool, dict]]:
    """``(dotted key, kind, optional, bounds)`` of every fuzzable field, nested dataclass sections expanded."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path, hint = f"{where}.{f.name}" if where else f.name, hints[f.name]
        sections = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
        schema = f.metadata.get("schema")  # a dict section checked against a dataclass (pretrain's `optimizer:`)
        if sections or isinstance(schema, type):
            rows += typed_keys(sections[0] if sections else schema, path)
            continue
        kind, optional = _scalar(hint)
        if kind is not None:
            rows.append((path, kind, optional, field_meta(cls, f)))
    return rows


def bad_values(kind: type, optional: bool, meta: dict) -> list[str]:
    """The ``--set`` values (YAML text) a field of this kind must refuse."""
    values = {
        int: ["abc", "1.5", "[1]", HUGE_INT, ".nan"],
        float: ["abc", "[1.0]", "true", ".nan", ".inf", "1.0e400"],
        bool: ["maybe", "3", "[true]"],
        str: ["[1, 2]", "{a: 1}"],
        list: ["{a: 1}", "7"],
    }[kind]
    if not optional:
        values.append("")  # empty: null
    lower = [meta[b] for b in ("min", "gt") if meta.get(b) is not None]
    if kind in (int, float) and lower and min(lower) >= 0:
        values.append("-1")
    return values


def fuzz_cases() -> list[tuple[str, str, str]]:
    """``(command, key, value)`` for every command: up to PER_KIND keys of each kind, bounded keys first."""
    cases = []
    for command, (_, target) in sorted(RECIPE_COMMANDS.items()):
        keys = typed_keys(_load(target))
        for kind in KINDS:
            of_kind = [k for k in keys if k[1] is kind]
            of_kind.sort(key=lambda k: (not any(b in k[3] for b in ("min", "gt", "max", "lt")), k[0].count("."), k[0]))
            # Nested keys too, where the config has sections: the deepest one of each kind is kept.
            chosen = of_kind[:PER_KIND]
            nested = [k for k in of_kind if "." in k[0] and k not in chosen]
            chosen += nested[:1]
            for path, _, optional, meta in chosen:
                cases += [(command, path, value) for value in bad_values(kind, optional, meta)]
    return cases


def test_every_command_is_classified():
    """A new subcommand must say whether it reads a recipe (then it is fuzzed here) or not."""
    assert set(COMMANDS) == set(RECIPE_COMMANDS) | NO_RECIPE
    assert not set(RECIPE_COMMANDS) & NO_RECIPE


def _assert_one_line_error(capsys, argv: list[str], key: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"hf-llama3 {argv[0]}: error: "), err
    assert key in lines[0], (key, err)
    return lines[0]


def test_bad_values_for_every_config_key_type_exit_2_with_one_line(tmp_path, capsys):
    """One test walking every case (importing each stage once): hundreds of recipe loads in a few seconds."""
    cases = fuzz_cases()
    assert {command for command, _, _ in cases} == set(RECIPE_COMMANDS)
    for command, key, value in cases:
        prefix = [arg.replace("{tmp}", str(tmp_path)) for arg in RECIPE_COMMANDS[command][0]]
        _assert_one_line_error(capsys, [*prefix, "--set", f"{key}={value}"], key)
    assert not any(tmp_path.iterdir()), "a refused recipe wrote output"


@pytest.mark.parametrize("command", sorted(RECIPE_COMMANDS))
def test_unknown_nested_key_and_yaml_syntax_errors(command, tmp_path, capsys):
    prefix = [arg.replace("{tmp}", str(tmp_path)) for arg in RECIPE_COMMANDS[command][0]]
    _assert_one_line_error(capsys, [*prefix, "--set", "no_such_key=1"], "no_such_key")
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: x\nsizes: [1, 2\nseed: 3\n", encoding="utf-8")
    config_at = prefix.index("--config") + 1
    line = _assert_one_line_error(capsys, [*prefix[:config_at], str(broken), *prefix[config_at + 1 :]], "broken.yaml")
    assert "YAML syntax error at line 3:" in line


def test_pretrain_without_arguments_is_one_line(capsys):
    line = _assert_one_line_error(capsys, ["pretrain"], "sources")
    assert "missing required key(s) ['sources', 'initial']" in line


def test_help_lists_config_keys_with_types_defaults_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "initial.ramp (list[RampPoint], default (required))" in out
    assert "spike.window (int, default 20)" in out and "running mean of gradient norms [>= 1]" in out


# --- argparse flags of every subcommand --------------------------------------------------------------------------

# Commands whose own `--help` is a usage line, not a parser: their sub-subcommands, each with its own parser.
OWN_SUBCOMMANDS = {"guard": ("train", "classify", "eval", "chat-eval"), "post-data": tuple(POST_DATA_STEPS)}
# Flag type -> (number kind, bounded below: -1 refused, bounded above: a value past the bound refused).
NUMERIC_TYPES: dict[Any, tuple[type, bool, bool]] = {
    int: (int, False, False),
    float: (float, False, False),
    cli_types.finite_float: (float, False, False),
    cli_types.positive_float: (float, True, False),
    cli_types.non_negative_float: (float, True, False),
    cli_types.unit_float: (float, True, True),
    cli_types.positive_int: (int, True, False),
    cli_types.non_negative_int: (int, True, False),
}
TEXT_TYPES = {str, Path}  # paths and names: no number to fuzz
# Plain `type=int` flags, kept because every int (negative included) means something. A new plain int flag must be
# listed here with its reason or use a bounded cli_types type; plain `type=float` is never kept (it takes NaN).
UNBOUNDED_FLAGS = {
    ("demo", "--seed"): "a seed may be any int",
    ("guard eval", "--seed"): "a seed may be any int",
    ("vision init", "--seed"): "a seed may be any int",
    ("vision train", "--seed"): "a seed may be any int",
    ("vision make-data", "--seed"): "a seed may be any int",
    ("vision caption-lm", "--seed"): "a seed may be any int",
    ("chat", "--seed"): "a seed may be any int",
}


def _exit_code(argv: list[str]) -> int | str | None:
    """``main``'s status: returned, or raised as SystemExit (argparse's errors and ``--help``)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _parser_of(monkeypatch, argv: list[str]) -> argparse.ArgumentParser | None:
    """The parser ``hf-llama3 *argv --help`` would print (recorded, not printed), or None when it prints no parser."""
    seen: list[argparse.ArgumentParser] = []
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "print_help", lambda self, file=None: seen.append(self))
        _exit_code([*argv, "--help"])
    return seen[0] if seen else None


def command_parsers(monkeypatch, command: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """``(command line, parser)`` of ``command`` and of each of its sub-subcommands (the parser that one really uses)."""
    top = _parser_of(monkeypatch, [command])
    if top is None:
        assert command in OWN_SUBCOMMANDS, f"hf-llama3 {command} --help printed no parser: list its subcommands"
        subcommands = OWN_SUBCOMMANDS[command]
    else:
        actions = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            return [(command, top)]
        subcommands = tuple(dict.fromkeys(actions[0].choices))
    rows = []
    for sub in subcommands:
        parser = _parser_of(monkeypatch, [command, sub])
        assert parser is not None, f"hf-llama3 {command} {sub} --help printed no parser"
        rows.append((f"{command} {sub}", parser))
    return rows


def typed_flags(parser: argparse.ArgumentParser) -> list[tuple[str, Any]]:
    """``(flag, type)`` of every optional flag with a ``type``: the long option string names it."""
    return [(max(a.option_strings, key=len), a.type) for a in parser._actions if a.option_strings and a.type]


def bad_flag_values(flag_type: Any) -> list[str]:
    kind, bounded_below, bounded_above = NUMERIC_TYPES[flag_type]
    values = ["abc", "", "nan", "inf", "-inf"]
    if kind is int:
        values.append("1.5")
        # No int type here has an upper bound, so 10**30 is a valid (if silly) count: it is fed only where bounded.
        if bounded_above:
            values.append(HUGE_INT)
    if bounded_below:
        values.append("-1")
    if bounded_above and kind is float:
        values.append("2")
    return values


def test_every_numeric_flag_is_bounded_or_allowed(monkeypatch, capsys):
    """Every typed flag has a known type; a plain int is allow-listed with a reason; the allow-list is not stale."""
    found, unknown, unbounded = set(), [], []
    for command in sorted(COMMANDS):
        for line, parser in command_parsers(monkeypatch, command):
            for flag, flag_type in typed_flags(parser):
                found.add((line, flag))
                if flag_type in TEXT_TYPES:
                    continue
                if flag_type not in NUMERIC_TYPES:
                    unknown.append((line, flag, flag_type))
                elif flag_type in (int, float) and (line, flag) not in UNBOUNDED_FLAGS:
                    unbounded.append((line, flag, flag_type.__name__))
    capsys.readouterr()
    assert not unknown, f"flag types this fuzz does not know (add them to NUMERIC_TYPES or TEXT_TYPES): {unknown}"
    assert not unbounded, f"plain int/float flags: use a hf_llama3.cli_types bound or allow-list them: {unbounded}"
    assert set(UNBOUNDED_FLAGS) <= found, set(UNBOUNDED_FLAGS) - found
    assert OWN_SUBCOMMANDS["guard"] == tuple(_load("training.safety.cli:SUBCOMMANDS"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_flag_values_exit_2_with_one_line(command, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for line, parser in command_parsers(monkeypatch, command):
        capsys.readouterr()
        for flag, flag_type in typed_flags(parser):
            if flag_type in TEXT_TYPES or flag_type not in NUMERIC_TYPES:
                continue
            for value in bad_flag_values(flag_type):
                argv = [*line.split(), f"{flag}={value}"]
                assert _exit_code(argv) == 2, (argv, capsys.readouterr())
                out, err = capsys.readouterr()
                lines = err.strip().splitlines()
                assert len(lines) == 1 and not out, (argv, out, err)
                assert "Traceback" not in err and lines[0].startswith(f"hf-llama3 {line}: error: "), (argv, err)
                # The flag's own error (argparse names it `argument [-x/]--flag:`), not a missing positional's.
                assert "argument " in lines[0] and f"{flag}: " in lines[0], (argv, err)
    assert not any(tmp_path.iterdir()), f"a refused flag wrote {sorted(p.name for p in tmp_path.iterdir())}"
