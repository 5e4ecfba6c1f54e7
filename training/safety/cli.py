"""``hf-llama3 guard {train,classify,eval,chat-eval}``: the Llama Guard 3-style classifier [paper 5.4.7].

    hf-llama3 guard train --model CKPT --synthetic 400 --categories S1 S2 S7 S9 S10 S14 --output-dir guard_run
    hf-llama3 guard train --config recipes/tiny/guard.yaml --set max_steps=100
    hf-llama3 guard classify --model guard_run/final --input chats.jsonl --check output --output verdicts.jsonl
    hf-llama3 guard eval --model guard_run/final --data heldout.jsonl --output-dir guard_eval
    hf-llama3 guard chat-eval --chat-model CHAT --guard guard_run/final --data safety_prompts.jsonl --output-dir vr

Bad input (a conversation ending with the wrong role for the check, an unknown category code, an empty conversation,
a malformed row) stops the command with a one-line error (exit status 2, through ``hf_llama3.cli``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hf_llama3.cli_types import positive_int, unit_float

logger = logging.getLogger(__name__)


def _write_json(path: Path, data: Any) -> None:
    from hf_llama3.checkpoint_io import atomic_output_file

    with atomic_output_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    from hf_llama3.checkpoint_io import atomic_output_file

    with atomic_output_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _read_rows(path: str) -> list[dict[str, Any]]:
    from training.post_cli import load_rows

    return [dict(row) for row in load_rows(path)]


def _train(argv: list[str]) -> int:
    from hf_llama3.recipe_loader import describe
    from training.post_cli import load_stage_config
    from training.safety.train import GuardTrainConfig, train_guard

    parser = argparse.ArgumentParser(
        prog="hf-llama3 guard train",
        description="Fine-tune a checkpoint into a guard.",
        epilog=describe(GuardTrainConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML recipe (GuardTrainConfig keys, TRL SFTConfig included)")
    parser.add_argument("--model", dest="model_name_or_path", help="checkpoint to fine-tune (ours or stock Llama)")
    parser.add_argument("--data", dest="dataset_path", help="labelled rows: messages, label, categories[, check]")
    parser.add_argument(
        "--synthetic", dest="synthetic_rows", type=positive_int, help="build this many synthetic rows instead"
    )
    parser.add_argument("--categories", nargs="+", help="policy subset, e.g. S1 S9 S14 (default: all 14)")
    parser.add_argument("--output-dir", dest="output_dir", help="run folder; the guard is written to <dir>/final")
    parser.add_argument("--max-steps", dest="max_steps", type=positive_int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    extra = {k: getattr(args, k) for k in ("model_name_or_path", "dataset_path", "synthetic_rows", "categories",
                                            "output_dir", "max_steps")}  # fmt: skip
    config = load_stage_config(GuardTrainConfig, args, extra)
    print(f"wrote guard to {train_guard(config)}")
    return 0


def _load_guard(path: str, threshold: float | None):
    from training.safety.classifier import GuardClassifier

    return GuardClassifier.from_pretrained(path, threshold=threshold)


def _classify(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hf-llama3 guard classify", description="Classify conversations.")
    parser.add_argument("--model", required=True, help="guard folder (ours, or Meta's Llama Guard 3 layout)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="rows with 'messages' (json/jsonl/parquet)")
    source.add_argument("--text", help="one user message to classify (input check)")
    parser.add_argument("--check", default="auto", choices=["input", "output", "auto"])
    parser.add_argument("--threshold", type=unit_float, help="P(unsafe) threshold (default: the guard's)")
    parser.add_argument("--output", help="write verdicts as jsonl here (default: print them)")
    args = parser.parse_args(argv)
    guard = _load_guard(args.model, args.threshold)
    if args.text is not None:
        conversations = [[{"role": "user", "content": args.text}]]
    else:
        rows = _read_rows(args.input)
        missing = [i for i, row in enumerate(rows) if not row.get("messages")]
        if missing:
            raise ValueError(f"{args.input}: row(s) {missing[:10]} have no 'messages' (the conversation to classify).")
        conversations = [row["messages"] for row in rows]
    verdicts = [v.to_dict() for v in guard.classify(conversations, check=args.check)]
    if args.output:
        _write_jsonl(Path(args.output), verdicts)
        flagged = sum(v["unsafe"] for v in verdicts)
        print(f"{flagged} of {len(verdicts)} unsafe; verdicts in {args.output}")
    else:
        for verdict in verdicts:
            categories = ",".join(verdict["categories"])
            print(f"{'unsafe' if verdict['unsafe'] else 'safe'}\t{verdict['score']:.4f}\t{categories}")
    return 0


def _eval(argv: list[str]) -> int:
    from training.safety.metrics import evaluate_verdicts, plot_sweep

    parser = argparse.ArgumentParser(prog="hf-llama3 guard eval", description="Precision/recall/F1/AUPRC/FPR.")
    parser.add_argument("--model", required=True, help="guard folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="labelled rows: messages, label, categories[, check]")
    source.add_argument("--synthetic", type=positive_int, help="evaluate on this many synthetic rows (seed --seed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=unit_float, help="decision threshold (default: the guard's)")
    parser.add_argument("--output-dir", required=True, help="metrics.json and sweep.png go here")
    args = parser.parse_args(argv)
    guard = _load_guard(args.model, args.threshold)
    if args.data:
        rows = _read_rows(args.data)
    else:
        from training.safety.synthetic import guard_rows

        rows = guard_rows(args.synthetic, seed=args.seed)
    from training.safety.train import check_labelled_row

    checks = [check_labelled_row(row, i, guard.policy)[2] for i, row in enumerate(rows)]
    verdicts = []
    for check in sorted(set(checks)):
        index = [i for i, c in enumerate(checks) if c == check]
        verdicts += list(zip(index, guard.classify([rows[i]["messages"] for i in index], check=check)))
    verdicts = [v for _, v in sorted(verdicts, key=lambda pair: pair[0])]
    report = evaluate_verdicts(rows, verdicts, guard.policy.codes)
    report["threshold"] = guard.threshold
    out = Path(args.output_dir)
    _write_json(out / "metrics.json", report)
    plot_sweep(report["sweep"], out / "sweep.png")
    overall = report["overall"]
    print(
        f"precision {overall['precision']:.3f} recall {overall['recall']:.3f} F1 {overall['f1']:.3f} "
        f"AUPRC {overall['auprc']:.3f} FPR {overall['fpr']:.3f} "
        f"category accuracy {report['category_accuracy']['of_all_unsafe']:.3f} -> {out}"
    )
    return 0


def _chat_eval(argv: list[str]) -> int:
    from transformers import AutoModelForCausalLM

    import hf_llama3  # noqa: F401
    from training.post_cli import StageInputs, load_stage_tokenizer
    from training.safety.chat_eval import evaluate_chat_model
    from training.safety.filter import SafetyFilter

    parser = argparse.ArgumentParser(prog="hf-llama3 guard chat-eval", description="VR and FRR of a chat model.")
    parser.add_argument("--chat-model", required=True, help="the chat model to evaluate")
    parser.add_argument("--guard", required=True, help="guard folder used as the judge")
    parser.add_argument("--data", required=True, help="rows: kind (adversarial|borderline) and prompt")
    parser.add_argument("--system-filter", action="store_true", help="run the chat model behind the guard filter")
    parser.add_argument("--max-new-tokens", type=positive_int, default=128)
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)
    judge = SafetyFilter.from_pretrained(args.guard)
    system_filter = SafetyFilter.from_pretrained(args.guard) if args.system_filter else None
    tokenizer = load_stage_tokenizer(StageInputs(model_name_or_path=args.chat_model))
    model = AutoModelForCausalLM.from_pretrained(args.chat_model).eval()
    report = evaluate_chat_model(
        model, tokenizer, _read_rows(args.data), judge, system_filter, args.max_new_tokens, do_sample=False
    )
    _write_json(Path(args.output_dir) / "chat_safety.json", report)
    print(
        f"violation rate {report['violation_rate']:.3f} ({report['violations']}/{report['adversarial']}), "
        f"false refusal rate {report['false_refusal_rate']:.3f} ({report['false_refusals']}/{report['borderline']})"
    )
    return 0


SUBCOMMANDS = {"train": _train, "classify": _classify, "eval": _eval, "chat-eval": _chat_eval}


def main(argv: list[str] | None = None) -> int:
    """``hf-llama3 guard <train|classify|eval|chat-eval> ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: hf-llama3 guard {{{','.join(SUBCOMMANDS)}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return SUBCOMMANDS[argv[0]](argv[1:])
