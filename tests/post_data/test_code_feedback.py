"""The ``code`` step [4.3.1]: execution feedback keeps exactly the correct solutions and says why the rest failed.

A scripted model (a stand-in with known-correct and known-wrong code) drives the loop; every solution and test
runs in the sandbox. One run goes through the CLI step with a tiny checkpoint (content quality not asserted).
"""

from __future__ import annotations

import json

import pytest
import yaml

from training.post_data.code_checks import failing_line, lint_errors, ruff_command, static_failure
from training.post_data.code_feedback import CodeFeedbackConfig, execution_feedback, read_problems
from training.post_data.code_model import Attempt, CodeProblem, code_blocks
from training.post_data.sandbox import SandboxLimits

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(2, 3) == 5\n\n\ndef test_negative():\n    assert add(-1, 1) == 0\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"


class ScriptedModel:
    """A stand-in for the model: per problem, the first solution, its tests, and the revisions in order (the last
    one repeats)."""

    name = "scripted"

    def __init__(self, script: dict[str, dict]) -> None:
        self.script = script
        self.feedback: dict[str, list[str]] = {}

    def solve(self, problems):
        return [self.script[p.id]["solution"] for p in problems]

    def write_tests(self, problems, solutions):
        return [self.script[p.id].get("tests", ADD_TESTS) for p in problems]

    def revise(self, problems, attempts, feedback):
        revised = []
        for problem, attempt, text in zip(problems, attempts, feedback):
            seen = self.feedback.setdefault(problem.id, [])
            seen.append(text)
            revisions = self.script[problem.id].get("revisions", [attempt.solution])
            revised.append(Attempt(revisions[min(len(seen), len(revisions)) - 1], attempt.tests))
        return revised


def config(tmp_path, **overrides) -> CodeFeedbackConfig:
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=4, memory_bytes=256 * 2**20)
    settings = {"problems_path": "p", "output_path": str(tmp_path / "out.jsonl"), "model_path": "m"}
    return CodeFeedbackConfig(**{**settings, "sandbox": limits, "max_revisions": 1, **overrides})


def test_the_loop_keeps_exactly_the_correct_solutions_and_says_why_the_others_failed(tmp_path):
    problems = {
        "correct": CodeProblem("correct", "Add two numbers.", tests="assert add(10, 5) == 15"),
        "wrong": CodeProblem("wrong", "Add two numbers."),
        "syntax": CodeProblem("syntax", "Add two numbers."),
        "undefined": CodeProblem("undefined", "Add two numbers."),
        "endless": CodeProblem("endless", "Add two numbers."),
        "snooping": CodeProblem("snooping", "Add two numbers."),
        "fixed": CodeProblem("fixed", "Add two numbers."),
        "own_tests_only": CodeProblem("own_tests_only", "Add two numbers.", tests="assert add(10, 5) == 15"),
        "no_tests": CodeProblem("no_tests", "Add two numbers."),
        "crashing": CodeProblem("crashing", "Add two numbers."),
        "rust": CodeProblem("rust", "Add two numbers.", language="rust"),
    }
    script = {
        "correct": {"solution": ADD},
        "wrong": {"solution": WRONG_ADD},
        "syntax": {"solution": "def add(a, b)\n    return a + b\n"},
        "undefined": {
            "solution": "def add(a, b):\n    if a is None:\n        return missing_helper(b)\n    return a + b\n"
        },
        "endless": {"solution": "def add(a, b):\n    while True:\n        pass\n"},
        "snooping": {"solution": "def add(a, b):\n    open('/etc/passwd').read()\n    return a + b\n"},
        "fixed": {"solution": WRONG_ADD, "revisions": [ADD]},
        # the model's own tests are as wrong as its solution; the reference tests catch it
        "own_tests_only": {"solution": "def add(a, b):\n    return a * b + 1\n", "tests": "assert add(2, 3) == 7\n"},
        "no_tests": {"solution": ADD, "tests": "add(1, 2)\n"},
        "crashing": {"solution": "def add(a, b):\n    return {}[a]\n"},
    }
    model = ScriptedModel(script)
    rows, report = execution_feedback(list(problems.values()), model, config(tmp_path))

    assert [row["code_feedback"]["problem"] for row in rows] == ["correct", "fixed"]
    assert {k["problem"]: k["revisions"] for k in report["kept"]} == {"correct": 0, "fixed": 1}
    assert report["self_corrected"] == 1 and report["rows_kept"] == 2 and report["problems"] == len(problems)
    fixed = rows[1]
    assert fixed["messages"][1]["content"] == f"```python\n{ADD.strip()}\n```"
    assert fixed["messages"][0] == {"role": "user", "content": "Add two numbers."}
    dropped = {d["problem"]: d for d in report["dropped"]}
    reasons = {name: d["reason"] for name, d in dropped.items()}
    assert reasons == {
        "wrong": "test_failure",
        "syntax": "parse_error",
        "undefined": "lint_error" if ruff_command() else "runtime_error",
        "endless": "timeout",
        "snooping": "forbidden",
        "own_tests_only": "reference_test_failure",
        "no_tests": "no_tests",
        "crashing": "runtime_error",
        "rust": "unsupported_language",
    }
    # the failing assertion and where it is
    assert dropped["wrong"]["detail"] == "AssertionError at test_solution.py:1: assert add(2, 3) == 5"
    assert dropped["own_tests_only"]["detail"].endswith("test_reference.py:1: assert add(10, 5) == 15")
    assert "/etc/passwd" in dropped["snooping"]["detail"]
    assert dropped["crashing"]["detail"].startswith("KeyError: 2 at solution.py:2:")
    assert dropped["syntax"]["detail"].startswith("solution.py:1:")
    # each failure was revised once with the checker's feedback (stdout, stderr, return code), then dropped
    assert [h["revision"] for h in dropped["wrong"]["history"]] == [0, 1]
    assert "return code: 1" in model.feedback["wrong"][0] and "assert add(2, 3) == 5" in model.feedback["wrong"][0]
    assert "rust" not in model.feedback and report["dropped_reasons"]["test_failure"] == 1


def test_no_revisions_means_the_first_failure_drops(tmp_path):
    model = ScriptedModel({"fixed": {"solution": WRONG_ADD, "revisions": [ADD]}})
    rows, report = execution_feedback([CodeProblem("fixed", "Add.")], model, config(tmp_path, max_revisions=0))
    assert rows == [] and report["dropped"][0]["reason"] == "test_failure" and model.feedback == {}


@pytest.mark.skipif(ruff_command() is None, reason="ruff is not installed")
def test_the_linter_finds_undefined_names_in_solutions_and_tests():
    assert lint_errors("def f():\n    return g()\n", "solution.py", ["F82"]) == [
        "solution.py:2:12: F821 Undefined name `g`"
    ]
    # names the solution defines are in the tests' scope; undefined ones are not
    assert static_failure(ADD, "assert add(1, 2) == 3\n", ["F82"]) is None
    failure = static_failure(ADD, "\nassert plus(1, 2) == 3\n", ["F82"])
    assert failure is not None and failure.reason == "lint_error" and "test_solution.py:2:" in failure.detail


def test_failing_line_is_the_innermost_frame():
    stderr = (
        'Traceback (most recent call last):\n  File "<cell>", line 4, in <module>\n    x()\n'
        '  File "test_solution.py", line 7, in test_it\n    assert add(1, 2) == 4\nAssertionError\n'
    )
    assert failing_line(stderr) == "test_solution.py:7: assert add(1, 2) == 4"


def test_code_blocks_are_taken_from_the_reply():
    reply = "Here:\n```python\ndef f():\n    return 1\n```\nand tests\n```\nassert f() == 1\n```"
    assert code_blocks(reply) == ["def f():\n    return 1", "assert f() == 1"]
    assert code_blocks("x = 1") == ["x = 1"] and code_blocks("  ") == []


def test_problems_are_read_and_bad_rows_refused(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "Add.", "tests": "assert add(1, 1) == 2"}) + "\n")
    (problem,) = read_problems(str(path))
    assert (problem.id, problem.language, problem.tests) == ("a", "python", "assert add(1, 1) == 2")
    path.write_text(json.dumps({"prompt": "Add."}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"problems.jsonl: row 1: field 'prompt'"):
        read_problems(str(path))
    path.write_text(
        json.dumps({"id": "a", "prompt": "Add."}) + "\n" + json.dumps({"id": "a", "prompt": "Sub."}) + "\n"
    )
    with pytest.raises(ValueError, match=r"row 1: field 'id' 'a' repeats row 0"):
        read_problems(str(path))


def test_the_config_requires_its_paths_and_the_tiny_recipe_builds():
    from pathlib import Path

    from hf_llama3.recipe_loader import describe, load_recipe

    with pytest.raises(ValueError, match="problems_path is not set"):
        CodeFeedbackConfig(output_path="o", model_path="m")
    root = Path(__file__).resolve().parents[2]
    loaded = load_recipe(CodeFeedbackConfig, root / "recipes" / "tiny" / "code.yaml")
    assert isinstance(loaded.sandbox, SandboxLimits) and len(read_problems(str(root / loaded.problems_path))) >= 4
    assert "max_revisions" in describe(CodeFeedbackConfig) and "sandbox.cpu_seconds" in describe(CodeFeedbackConfig)


def test_the_step_runs_with_a_tiny_checkpoint(tmp_path):
    from hf_llama3 import load_tokenizer
    from tests.post_training.conftest import tiny_causal_lm
    from training.post_data.cli import STEPS, main
    from training.post_data.curate import report_path

    assert STEPS["code"].run == "training.post_data.code_feedback:run"
    model_dir = tmp_path / "model"
    tiny_causal_lm(0).save_pretrained(model_dir)
    load_tokenizer().save_pretrained(model_dir)
    problems = tmp_path / "problems.jsonl"
    rows = [{"id": "add", "prompt": "Write add(a, b).", "tests": "assert add(1, 2) == 3"}, {"prompt": "Write f()."}]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "code.jsonl"
    recipe = tmp_path / "code.yaml"
    settings = {
        "problems_path": str(problems), "output_path": str(out), "model_path": str(model_dir),
        "max_revisions": 1, "max_new_tokens": 8, "device": "cpu", "sandbox": {"cpu_seconds": 2, "wall_seconds": 5},
    }  # fmt: skip
    recipe.write_text(yaml.safe_dump(settings))
    assert main(["code", "--config", str(recipe)]) == 0
    report = json.loads(report_path(out).read_text())
    assert report["problems"] == 2 and report["model"] == str(model_dir)
    assert report["rows_kept"] + len(report["dropped"]) == 2
    assert all(d["reason"] and d["history"] for d in report["dropped"])
    assert len(out.read_text().splitlines()) == report["rows_kept"]
