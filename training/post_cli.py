"""Shared command-line plumbing for the post-training stages (paper section 4).

Every stage is run as ``hf-llama3 <stage> --config recipe.yaml [--set key=value ...]``: the YAML recipe fills the
stage's config dataclass, ``--set`` overrides single fields (values parsed as YAML, so ``--set beta=0.2`` is a
float and ``--set 'weights=[1, 2]'`` a list), and unknown keys are rejected with the list of valid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

ConfigT = TypeVar("ConfigT")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict; a missing file or a non-mapping document is a user error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist: pass --config with the path of a YAML recipe.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of config keys, got {type(data).__name__}.")
    return data


def build_config(cls: type[ConfigT], values: Mapping[str, Any], source: str = "config") -> ConfigT:
    """Instantiate the dataclass ``cls`` from ``values``, rejecting keys it does not define."""
    names = {field.name for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}. Valid keys: {', '.join(sorted(names))}."
        )
    return cls(**values)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["key=value", ...]`` into a dict, each value parsed as YAML."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser every stage starts from: ``--config`` and repeated ``--set key=value``."""
    parser = argparse.ArgumentParser(prog=f"hf-llama3 {prog}", description=description)
    parser.add_argument("--config", type=Path, help="YAML recipe (see recipes/tiny/ and recipes/llama3-8b/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (value parsed as YAML); repeatable",
    )
    return parser


def load_stage_config(cls: type[ConfigT], args: argparse.Namespace, extra: Mapping[str, Any] | None = None) -> ConfigT:
    """Merge the YAML recipe, stage-specific flags (``extra``, None values skipped) and ``--set`` overrides."""
    values: dict[str, Any] = read_yaml(args.config) if args.config is not None else {}
    values.update({key: value for key, value in (extra or {}).items() if value is not None})
    values.update(parse_overrides(args.overrides))
    return build_config(cls, values, source=str(args.config) if args.config is not None else "command line")
