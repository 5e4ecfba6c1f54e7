"""Tool-use rows [4.3.5] reach the training stages: the SFT rows and DPO pairs ``post-data tools`` writes (calls to
built-in and custom tools, ``ipython`` turns, the declared tools beside ``messages``) pass the stages' row checks
and are tokenized exactly as ``encode_dialog`` renders them with those tools, also when mixed with plain dialogs."""

from __future__ import annotations

import json

from hf_llama3 import encode_dialog
from tests.post_data.test_tools_model import RoundRobinPolicy
from tests.post_training.conftest import tiny_causal_lm, trainer_args
from training.dpo import Llama3DPOConfig, prepare_dpo_rows
from training.post_cli import load_rows
from training.post_data.tools import build_registry
from training.post_data.tools.synth import synthesize
from training.post_rows import dialog_options
from training.sft import Llama3SFTConfig, load_sft_dataset, make_trainer

TOOLS = ["brave_search", "tests.post_data.test_tools_loop:get_weather"]
INDEX = "recipes/tiny/post_training/search_index.jsonl"
SEARCH = '<|python_tag|>brave_search.call(query="population of Paris")<|eom_id|>'
WEATHER = '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>'


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _tool_rows(tmp_path) -> tuple[str, str]:
    """(SFT file, DPO file) from scripted trajectories: a search, then a custom call, then an answer; the worse
    trajectory never answers."""
    registry = build_registry(TOOLS, search_index=INDEX)
    scripts = [[SEARCH, WEATHER, "Paris: 2.1 million people, 21 degrees.<|eot_id|>"], [SEARCH, SEARCH, SEARCH]]
    prompts = [[{"role": "user", "content": "How many people live in Paris, and how warm is it?"}]]
    sft_rows, pairs, report = synthesize(RoundRobinPolicy(scripts), registry, prompts, num_trajectories=2, max_steps=3)
    assert report["sft_rows"] == 1 and report["dpo_pairs"] == 1
    return _write(tmp_path / "tools_sft.jsonl", sft_rows), _write(tmp_path / "tools_dpo.jsonl", pairs)


def test_sft_tokenizes_tool_dialogs_with_their_declared_tools(tmp_path, tokenizer):
    sft_path, _ = _tool_rows(tmp_path)
    plain = _write(
        tmp_path / "plain.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}],
    )
    config = Llama3SFTConfig(
        model_name_or_path="unused",
        dataset_path=sft_path,
        extra_dataset_paths=[plain],
        **trainer_args(tmp_path, packing=False),
    )
    dataset = load_sft_dataset(config)
    trainer = make_trainer(config, tiny_causal_lm(0), tokenizer, dataset)
    expected = {}
    for path in (sft_path, plain):
        for row in load_rows(path):
            encoded = encode_dialog(tokenizer, row["messages"], **dialog_options(row))
            expected[row["messages"][0]["content"]] = (encoded.input_ids, encoded.labels)
    tokenized = trainer.train_dataset
    assert len(tokenized) == 2
    for index, row in enumerate(dataset):
        input_ids, labels = expected[row["messages"][0]["content"]]
        assert tokenized[index]["input_ids"] == input_ids
        assert tokenized[index]["labels"] == labels  # the loss on assistant turns only, tool calls included
    tool_ids, _ = expected["How many people live in Paris, and how warm is it?"]
    text = tokenizer.decode(tool_ids)
    assert "Tools: brave_search" in text and '"name": "get_weather"' in text and "<|eom_id|>" in text


def test_dpo_encodes_tool_pairs_with_their_declared_tools(tmp_path, tokenizer):
    _, dpo_path = _tool_rows(tmp_path)
    config = Llama3DPOConfig(model_name_or_path="unused", dataset_path=dpo_path, **trainer_args(tmp_path))
    rows = load_rows(dpo_path)
    pairs, summary = prepare_dpo_rows(rows, tokenizer, config, dpo_path)
    assert summary["pairs"] == 1
    row = rows[0]
    options = dialog_options(row)
    prompt_ids = encode_dialog(tokenizer, row["prompt"], add_generation_prompt=True, **options).input_ids
    chosen_ids = encode_dialog(tokenizer, row["prompt"] + row["chosen"], **options).input_ids
    assert pairs[0]["prompt_ids"] == prompt_ids
    assert pairs[0]["chosen_ids"] == chosen_ids[len(prompt_ids) :]
    # DPO scores the policy's own tokens: the answer and the calls, never the tool output of the ipython turns.
    mask = pairs[0]["chosen_formatting_mask"]
    scored = tokenizer.decode([t for t, m in zip(pairs[0]["chosen_ids"], mask) if not m])
    assert "21 degrees" in scored and "get_weather" in scored and "brave_search" in scored
    assert "2,102,650" not in scored and "celsius" not in scored
