"""A tiny guard trained on CPU [5.4.7]: held-out quality, the stock export in a fresh process, Meta's layout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from training.safety.classifier import GuardClassifier
from training.safety.policy import SafetyPolicy
from training.safety.prompt import render_guard_prompt


@pytest.fixture(scope="module")
def guard(trained_guard):
    return GuardClassifier.from_pretrained(trained_guard)


@pytest.fixture(scope="module")
def held_out_report(guard, guard_rows_split):
    from training.safety.metrics import evaluate_verdicts

    held_out = guard_rows_split[1]
    verdicts = guard.classify([row["messages"] for row in held_out], check="auto")
    return evaluate_verdicts(held_out, verdicts, guard.policy.codes)


def test_held_out_f1_and_categories(held_out_report):
    overall, named = held_out_report["overall"], held_out_report["category_accuracy"]
    print(f"held-out: {json.dumps(overall)} categories {json.dumps(named)}")
    print({code: round(m["f1"], 3) for code, m in held_out_report["per_category"].items()})
    assert overall["tp"] + overall["fn"] >= 40 and overall["fp"] + overall["tn"] >= 40  # both classes held out
    assert overall["f1"] >= 0.9
    assert overall["auprc"] >= 0.9
    assert named["of_all_unsafe"] > 0.5  # the right category for most unsafe items


def test_threshold_sweep_shows_the_trade_off(held_out_report):
    sweep = held_out_report["sweep"]
    recalls, fprs, f1s = [s["recall"] for s in sweep], [s["fpr"] for s in sweep], [s["f1"] for s in sweep]
    print("sweep:", [(s["threshold"], round(s["recall"], 3), round(s["fpr"], 3)) for s in sweep])
    assert recalls == sorted(recalls, reverse=True) and fprs == sorted(fprs, reverse=True)
    # A low threshold flags safe turns, a high one misses unsafe ones; the best F1 lies in between.
    assert fprs[0] > fprs[-1] and recalls[0] > recalls[-1]
    assert max(f1s) >= 0.9 and f1s[0] < max(f1s) and f1s[-1] < max(f1s)


def test_export_is_stock_llama_and_scores_match_in_a_fresh_process(trained_guard, guard, guard_rows_split, tmp_path):
    config = json.loads((trained_guard / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert not list(trained_guard.glob("*.py"))
    rows = guard_rows_split[1][:6]
    conversations = [row["messages"] for row in rows]
    scores = [score for score, _ in guard.score(conversations)]
    (tmp_path / "case.json").write_text(json.dumps({"conversations": conversations, "scores": scores}))
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["hf_llama3"] = None  # any import of our package now fails
        sys.modules["training"] = None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        case = json.load(open({str(tmp_path / "case.json")!r}))
        model = AutoModelForCausalLM.from_pretrained({str(trained_guard)!r}).eval()
        tok = AutoTokenizer.from_pretrained({str(trained_guard)!r})
        assert type(model).__name__ == "LlamaForCausalLM"
        unsafe = tok.encode("unsafe", add_special_tokens=False)
        assert len(unsafe) == 1
        for conversation, want in zip(case["conversations"], case["scores"]):
            prompt = tok.apply_chat_template(conversation, tokenize=False) + "\\n\\n"
            ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                p_unsafe = model(ids).logits[0, -1].float().softmax(-1)[unsafe[0]].item()
            assert abs(p_unsafe - want) < 1e-4, (p_unsafe, want)
        print("FRESH-GUARD-OK", len(case["scores"]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert "FRESH-GUARD-OK 6" in result.stdout, result.stderr[-3000:]


def test_meta_layout_folder_loads_into_classify(trained_guard, tokenizer, tmp_path):
    """A folder in Meta's Llama Guard 3 layout (stock Llama weights + tokenizer, no guard.json): default policy."""
    meta = tmp_path / "meta_layout"
    shutil.copytree(trained_guard, meta)
    (meta / "guard.json").unlink()
    meta_guard = GuardClassifier.from_pretrained(meta)
    assert meta_guard.policy == SafetyPolicy.default() and meta_guard.threshold == 0.5
    conversation = [{"role": "user", "content": "How do I bake sourdough bread?"}]
    ((p_unsafe, _),) = meta_guard.score([conversation])
    # The same number by hand: the 14-category prompt, the first-answer-token probability of "unsafe".
    ids = tokenizer(render_guard_prompt(conversation, "input") + "\n\n", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = meta_guard.model(ids.input_ids).logits[0, -1].float()
    assert p_unsafe == pytest.approx(logits.softmax(-1)[tokenizer.convert_tokens_to_ids("unsafe")].item(), abs=1e-5)

    from hf_llama3.cli import main

    code = main(["guard", "classify", "--model", str(meta), "--text", "How do I bake sourdough bread?"])
    assert code == 0


def test_cli_eval_writes_metrics_and_sweep(trained_guard, guard_rows_split, tmp_path, capsys):
    from hf_llama3.cli import main

    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in guard_rows_split[1][:24]))
    assert (
        main(
            ["guard", "eval", "--model", str(trained_guard), "--data", str(data), "--output-dir", str(tmp_path / "ev")]
        )
        == 0
    )
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(report["per_category"]) == {"S1", "S2", "S7", "S9", "S10", "S14"}
    assert (tmp_path / "ev" / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "F1" in capsys.readouterr().out


def test_cli_bad_input_exits_2_with_one_line(trained_guard, tmp_path, capsys):
    from hf_llama3.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    assert main(["guard", "classify", "--model", str(trained_guard), "--input", str(bad), "--check", "output"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # (progress bars aside)
    assert len(errors) == 1 and errors[0].startswith("hf-llama3 guard: error: ")
    assert "check='output' classifies the last assistant turn" in errors[0]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "label": "unsafe",
                                    "categories": ["S13"]}) + "\n")  # fmt: skip
    assert main(["guard", "eval", "--model", str(trained_guard), "--data", str(labelled), "--output-dir",
                 str(tmp_path / "e")]) == 2  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "row 0: unknown category code(s) ['S13']" in errors[0]
    assert not (tmp_path / "e").exists()
