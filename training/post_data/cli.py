"""``hf-llama3 post-data <step> --config RECIPE [--set key=value ...]``: the post-training data steps [4.2-4.3].

Each step is a module of ``training.post_data`` with ``add_arguments(parser)`` (its extra flags and ``--help``
epilog) and ``main(args) -> int``; it is imported only when it runs (the steps load models and encoders).
"""

from __future__ import annotations

import importlib
import logging
import sys

from training.post_cli import stage_parser

# step -> (module, one-line description). Later steps add their line here.
STEPS: dict[str, tuple[str, str]] = {
    "curate": ("training.post_data.curate", "topic, quality, difficulty tags and semantic dedup of SFT rows [4.2.3]"),
    "long-context": (
        "training.post_data.long_context",
        "synthetic long-context SFT rows (chunk QA, summaries, code reasoning) mixed into SFT [4.3.4]",
    ),
    "code": ("training.post_data.code_feedback", "code SFT rows kept only when they pass execution feedback [4.3.1]"),
    "tools": ("training.post_data.tools.synth", "tool-use dialogs, tools executed: SFT rows + DPO pairs [4.3.5]"),
}


def usage() -> str:
    """The one-line usage naming every step."""
    return f"usage: hf-llama3 post-data {{{','.join(STEPS)}}} --config RECIPE [--set KEY=VALUE ...]"


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``hf-llama3 post-data <step>``; exit 2 with the usage line for an unknown step."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in STEPS:
        if argv and argv[0] in ("-h", "--help"):
            print(usage() + "\n" + "\n".join(f"  {name:14s} {text}" for name, (_, text) in STEPS.items()))
            return 0
        named = f"unknown step {argv[0]!r}; " if argv else ""
        print(f"{named}{usage()}", file=sys.stderr)
        return 2
    step, rest = argv[0], argv[1:]
    module_name, description = STEPS[step]
    module = importlib.import_module(module_name)
    parser = stage_parser(f"post-data {step}", description)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    if args.config is None:
        parser.error("--config is required (see recipes/tiny/ for the tiny recipes)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return module.main(args)
