"""``hf-llama3 chat``: talk to a checkpoint, with multi-step tool use [4.3.5].

    hf-llama3 chat --model demo_output/tiny-model --tools code_interpreter,brave_search,wolfram_alpha \\
        --search-index recipes/tiny/post_training/search_index.jsonl
    hf-llama3 chat --model PATH --tools wolfram_alpha,my_tools:get_weather --message "Is it warm in Oslo?"

Each user turn runs the tool-use loop of :mod:`training.post_data.tools.loop`: the model writes a call, the tool runs
(the code interpreter in the sandbox, search over a local index or Brave, math on SymPy or Wolfram Alpha, custom
``module:function`` tools with a schema from their type hints and docstring), the result goes back as an ``ipython``
turn, until the model answers with ``<|eot_id|>`` or ``--max-steps`` is reached. Calls and results are printed as
they are fed back. ``--message`` runs one turn and exits; otherwise turns are read from stdin until ``exit`` or EOF.
Unlike transformers' ``chat`` command, the dialog is the Llama 3.1 tool format and the tools really run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from hf_llama3.cli_errors import CLIError
from hf_llama3.cli_types import non_negative_float, positive_int, unit_float


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-llama3 chat`` flags."""
    parser = argparse.ArgumentParser(prog="hf-llama3 chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (ours or a stock HF Llama)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's, else Llama 3's)")
    parser.add_argument(
        "--tools",
        default="",
        help="comma-separated: code_interpreter, brave_search, wolfram_alpha and module:function custom tools",
    )
    parser.add_argument("--search-index", default=None, help="JSON-lines {title, url, text} for brave_search")
    parser.add_argument("--search-backend", choices=("local", "brave"), default="local")
    parser.add_argument("--math-backend", choices=("sympy", "wolfram"), default="sympy")
    parser.add_argument("--tool-prompt-format", choices=("json", "function_tag"), default="json")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--date", default=None, help='"Today Date" of the system turn, e.g. "26 July 2024"')
    parser.add_argument("--message", default=None, help="run this one user turn and exit (non-interactive)")
    parser.add_argument("--max-steps", type=positive_int, default=6, help="assistant messages per user turn")
    parser.add_argument("--max-new-tokens", type=positive_int, default=512)
    parser.add_argument("--temperature", type=non_negative_float, default=0.6, help="0: greedy")
    parser.add_argument("--top-p", type=unit_float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print each turn's new messages as one JSON line")
    return parser


def print_turn(trajectory: Any, out: TextIO, as_json: bool = False) -> None:
    """The messages a user turn added: calls, ``ipython`` results, the answer, or why the loop stopped."""
    if as_json:
        payload = {"messages": trajectory.completion, "outcome": trajectory.outcome, "detail": trajectory.detail}
        out.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    for message in trajectory.completion:
        if message["role"] == "ipython":
            out.write(f"[ipython] {message['content']}\n")
        elif message.get("tool_calls"):
            function = message["tool_calls"][0]["function"]
            out.write(f"[tool call] {function['name']} {json.dumps(function['arguments'], ensure_ascii=False)}\n")
        elif trajectory.outcome == "answered" and message is trajectory.messages[-1]:
            out.write(f"assistant: {message['content']}\n")
        else:
            out.write(f"[assistant] {message['content']}\n")
    if trajectory.outcome != "answered":
        out.write(f"[stopped: {trajectory.outcome}] {trajectory.detail}\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-llama3 chat``."""
    from training.generation.engine import resolve_device
    from training.post_cli import check_model_path
    from training.post_data.curate import load_causal_lm
    from training.post_data.tools.builtin import build_registry
    from training.post_data.tools.loop import ModelPolicy, run_tool_loop

    args = build_parser().parse_args(argv)
    if args.max_steps < 1:
        raise CLIError(f"--max-steps must be at least 1, got {args.max_steps}.")
    check_model_path(args.model, "--model")
    registry = build_registry(
        args.tools.split(","),
        search_index=args.search_index,
        search_backend=args.search_backend,
        math_backend=args.math_backend,
        tool_prompt_format=args.tool_prompt_format,
    )
    model, tokenizer = load_causal_lm(args.model, args.tokenizer, str(resolve_device(args.device)))
    policy = ModelPolicy(
        model.eval(),
        tokenizer,
        registry,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        date_string=args.date,
        backend="auto",
    )
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    turns = [args.message] if args.message is not None else None
    interactive = turns is None and sys.stdin.isatty()
    while True:
        if turns is not None:
            if not turns:
                return 0
            text = turns.pop(0)
        else:
            if interactive:
                sys.stdout.write("user: ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line or line.strip() in ("exit", "quit"):
                return 0
            text = line.rstrip("\n")
            if not text.strip():
                continue
        history.append({"role": "user", "content": text})
        trajectory = run_tool_loop(policy, history, registry, args.max_steps)
        print_turn(trajectory, sys.stdout, args.json)
        history = trajectory.messages
