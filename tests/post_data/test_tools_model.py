"""Tool use with checkpoints [4.3.5]: the loop on a tiny random model, the ``post-data tools`` step (SFT rows, DPO
pairs and the report from K trajectories per prompt), and ``hf-llama3 chat`` (one ``--message`` and stdin turns)."""

from __future__ import annotations

import io
import json

import pytest
import yaml

from hf_llama3 import encode_dialog
from hf_llama3.chat_format import render_dialog
from tests.post_training.conftest import tiny_causal_lm, tiny_reward_model
from training.post_data.tools import ModelPolicy, build_registry, run_tool_loops
from training.post_data.tools.loop import OUTCOMES
from training.post_data.tools.synth import reward_model_scores, synthesize

INDEX = "recipes/tiny/post_training/search_index.jsonl"
TOOLS = ["code_interpreter", "brave_search", "wolfram_alpha", "tests.post_data.test_tools_loop:get_weather"]


@pytest.fixture(scope="module")
def tokenizer():
    from hf_llama3 import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_causal_lm(0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def registry():
    return build_registry(TOOLS, search_index=INDEX)


class RecordingEngine:
    """Wraps a generation engine and keeps the prompts it was given."""

    def __init__(self, engine):
        self.engine, self.prompts = engine, []

    def generate(self, prompts, indices, settings):
        self.prompts += [list(p) for p in prompts]
        return self.engine.generate(prompts, indices, settings)


def test_loop_runs_on_a_tiny_checkpoint(tokenizer, registry):
    from training.generation.engine import make_engine

    model = tiny_causal_lm(0)
    engine = RecordingEngine(make_engine("prefix_sharing", model))
    policy = ModelPolicy(model, tokenizer, registry, engine=engine, max_new_tokens=6, temperature=1.0, seed=1)
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "Weather in Oslo?"}]]
    trajectories = run_tool_loops(policy, prompts, registry, max_steps=2)
    assert (
        engine.prompts[0]
        == encode_dialog(tokenizer, prompts[0], add_generation_prompt=True, **registry.dialog_options()).input_ids
    )
    assert "Environment: ipython\nTools: brave_search, wolfram_alpha" in tokenizer.decode(engine.prompts[0])
    assert '"name": "get_weather"' in tokenizer.decode(engine.prompts[0])
    for trajectory in trajectories:
        assert trajectory.outcome in OUTCOMES and 1 <= trajectory.steps <= 2
        assert trajectory.messages[1]["role"] == "assistant"
        render_dialog(trajectory.messages, **registry.dialog_options())


class RoundRobinPolicy:
    """Trajectory k of each prompt follows script k (trajectories are told apart by their message lists)."""

    def __init__(self, scripts):
        self.scripts, self.assigned = scripts, {}

    def __call__(self, dialogs):
        out = []
        for dialog in dialogs:
            script = self.scripts[self.assigned.setdefault(id(dialog), len(self.assigned) % len(self.scripts))]
            out.append(script[sum(m["role"] == "assistant" for m in dialog)])
        return out


def test_best_and_worst_trajectories_become_sft_rows_and_dpo_pairs(registry, tokenizer):
    search = '<|python_tag|>brave_search.call(query="population of Paris")<|eom_id|>'
    scripts = [
        [search, "About 2.1 million people.<|eot_id|>"],  # answered, its call succeeded: kept, scores 1
        ["<|python_tag|>1/0<|eom_id|>", "I could not compute it.<|eot_id|>"],  # answered with a tool error
        ["I will look it up.<|eom_id|>"],  # waits for a tool without calling one
        [search, search, search],  # never answers
    ]
    prompts = [[{"role": "user", "content": "How many people live in Paris?"}]] * 2
    sft_rows, pairs, report = synthesize(RoundRobinPolicy(scripts), registry, prompts, num_trajectories=4, max_steps=2)
    assert report["dropped_trajectories"] == {
        "unparseable_call": 2,
        "tool_error": 2,
        "out_of_tokens": 0,
        "step_limit": 2,
    }
    assert report["kept_trajectories"] == 2 and report["sft_rows"] == 2 and report["dpo_pairs"] == 2
    assert report["tool_calls"] == {"brave_search": 6, "code_interpreter": 2}
    assert {d["why"] for d in report["dropped"] if d["trajectory"] == 1} == {"tool_error"}
    row = sft_rows[0]
    assert row["messages"][-1]["content"] == "About 2.1 million people."
    assert row["tool_use"] == {"score": 1.0, "scored_by": "tool_success", "steps": 2, "calls": ["brave_search"]}
    options = {k: row[k] for k in ("builtin_tools", "tools", "tool_prompt_format", "date_string")}
    render_dialog(row["messages"], **options)
    pair = pairs[0]
    assert pair["chosen"] == row["messages"][1:] and pair["tool_use"]["rejected_score"] == 0.0
    assert pair["tool_use"]["rejected_outcome"] in ("unparseable_call", "tool_error", "step_limit")
    render_dialog(pair["prompt"] + pair["rejected"], **options)
    # keep_tool_errors keeps the failed call's trajectory, scored below the clean one: still the clean one is best.
    sft_rows, pairs, report = synthesize(
        RoundRobinPolicy(scripts), registry, prompts[:1], num_trajectories=4, max_steps=2, keep_tool_errors=True
    )
    assert report["kept_trajectories"] == 2 and sft_rows[0]["tool_use"]["score"] == 1.0
    # A reward model scores whole tool dialogs after the prompt.
    from training.post_data.tools.loop import ScriptedPolicy, run_tool_loops

    trajectories = run_tool_loops(ScriptedPolicy(scripts[0]), prompts, registry)
    scores = reward_model_scores(tiny_reward_model(0), tokenizer, trajectories, registry.dialog_options())
    assert len(scores) == 2 and scores[0] == pytest.approx(scores[1], abs=1e-4)


def test_post_data_tools_step_writes_rows_pairs_and_report(tmp_path, model_dir):
    from training.post_data.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": [{"role": "user", "content": "What is 12 times 12?"}]})
        + "\n"
        + json.dumps({"prompt": "Search for the height of the Eiffel Tower."})
        + "\n"
    )
    recipe = tmp_path / "tools.yaml"
    out = tmp_path / "tools.jsonl"
    settings = {
        "prompts_path": str(prompts),
        "output_path": str(out),
        "model_path": str(model_dir),
        "tools": TOOLS,
        "search_index": INDEX,
        "num_trajectories": 2,
        "max_steps": 2,
        "max_new_tokens": 6,
        "temperature": 1.0,
        "device": "cpu",
    }
    recipe.write_text(yaml.safe_dump(settings))
    assert main(["tools", "--config", str(recipe)]) == 0
    report = json.loads((tmp_path / "tools.report.json").read_text())
    assert report["prompts"] == 2 and report["trajectories"] == 4
    assert report["kept_trajectories"] + sum(report["dropped_trajectories"].values()) == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = [json.loads(line) for line in (tmp_path / "tools.dpo.jsonl").read_text().splitlines()]
    assert len(rows) == report["sft_rows"] and len(pairs) == report["dpo_pairs"]
    reward_dir = tmp_path / "reward"
    tiny_reward_model(0).save_pretrained(reward_dir)
    assert main(["tools", "--config", str(recipe), "--set", f"reward_model_path={reward_dir}"]) == 0
    report = json.loads((tmp_path / "tools.report.json").read_text())
    assert report["scored_by"] == f"reward_model:{reward_dir}" and report["trajectories"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [{"role": "assistant", "content": "hi"}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: row 0: field 'prompt' must be a string or messages"):
        main(["tools", "--config", str(recipe), "--set", f"prompts_path={bad}"])


def test_chat_one_message_and_stdin_turns(model_dir, capsys, monkeypatch):
    from hf_llama3.cli import main

    base = ["chat", "--model", str(model_dir), "--tools", ",".join(TOOLS), "--search-index", INDEX]
    base += ["--max-new-tokens", "6", "--max-steps", "2", "--device", "cpu", "--json"]
    assert main([*base, "--message", "What is 2 + 2?"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    turn = json.loads(line)
    assert turn["outcome"] in OUTCOMES and turn["messages"][0]["role"] == "assistant"
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n\nHow are you?\nexit\nnever read\n"))
    assert main(base) == 0
    turns = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(turns) == 2
    assert main(["chat", "--model", str(model_dir), "--tools", "calculator", "--message", "hi"]) == 2
    assert "tool 'calculator': not a built-in tool" in capsys.readouterr().err
    assert main(["chat", "--model", str(model_dir / "missing"), "--message", "hi"]) == 2
    assert "--model: checkpoint folder" in capsys.readouterr().err
