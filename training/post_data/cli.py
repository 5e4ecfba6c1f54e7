"""``hf-llama3 post-data <step> --config RECIPE [--set key=value ...]``: the post-training data steps [4.2-4.3].

Each step is a config dataclass loaded by the shared recipe loader (``--help`` lists its keys), a ``run(config)``
that writes its rows and report and returns the report, and a ``summary(report)`` line printed at the end; all are
named here as ``"module:attribute"`` and imported only when the step runs (the steps load models and encoders).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
from typing import Any

from hf_llama3.recipe_loader import load_recipe
from training.post_cli import stage_parser


@dataclasses.dataclass(frozen=True)
class PostDataStep:
    """One step: its config dataclass, run function and summary function (``"module:attribute"``) and its help."""

    config_class: str
    run: str
    summary: str
    description: str


def _step(module: str, config_class: str, run: str, description: str) -> PostDataStep:
    return PostDataStep(f"{module}:{config_class}", f"{module}:{run}", f"{module}:summary", description)


# Later steps add their line here.
STEPS: dict[str, PostDataStep] = {
    "curate": _step(
        "training.post_data.curate",
        "CurateConfig",
        "curate",
        "topic, quality, difficulty tags and semantic dedup of SFT rows [4.2.3]",
    ),
    "long-context": _step(
        "training.post_data.long_context",
        "LongContextConfig",
        "run",
        "synthetic long-context SFT rows (chunk QA, summaries, code reasoning) mixed into SFT [4.3.4]",
    ),
    "code": _step(
        "training.post_data.code_feedback",
        "CodeFeedbackConfig",
        "run",
        "code SFT rows kept only when they pass execution feedback [4.3.1]",
    ),
    "tools": _step(
        "training.post_data.tools.synth",
        "ToolsConfig",
        "run",
        "tool-use dialogs, tools executed: SFT rows + DPO pairs [4.3.5]",
    ),
}


def load_attribute(target: str) -> Any:
    """The attribute a ``"module:attribute"`` string names (the module imported now)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    """The one-line usage naming every step."""
    return f"usage: hf-llama3 post-data {{{','.join(STEPS)}}} --config RECIPE [--set KEY=VALUE ...]"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``hf-llama3 post-data <step>``; exit 2 with the usage line for an unknown step."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STEPS:
        if argv and argv[0] in ("-h", "--help"):
            print(usage() + "\n" + "\n".join(f"  {name:14s} {s.description}" for name, s in STEPS.items()))
            return 0
        named = f"unknown step {argv[0]!r}; " if argv else ""
        print(f"{named}{usage()}", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    step = STEPS[name]
    config_class = load_attribute(step.config_class)
    parser = stage_parser(f"post-data {name}", step.description, config_class)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = load_attribute(step.run)(load_recipe(config_class, args.config, args.overrides))
    print(load_attribute(step.summary)(report))
    return 0
