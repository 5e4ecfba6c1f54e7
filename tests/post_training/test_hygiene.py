"""Preference hygiene [4.2.1] with planted rows: weak preference, identical and near-identical pairs, 3-way ranked
rows fed to DPO, the formatting mask on every row format; each rule counted in the stage's summary."""

from __future__ import annotations

import pytest
from datasets import Dataset

from tests.post_training.conftest import tiny_causal_lm, trainer_args
from training.dpo import Llama3DPOConfig, Llama3DPOTrainer, prepare_dpo_rows
from training.post_rows import are_similar
from training.reward import Llama3RewardConfig, prepare_reward_rows

USER = [{"role": "user", "content": "Name a planet."}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _dpo_config(tmp_path, **overrides) -> Llama3DPOConfig:
    return Llama3DPOConfig(**trainer_args(tmp_path, **overrides))


def test_similarity_rule():
    assert are_similar("Mars.", "  mars. ")  # identical once case and white space are normalised
    assert are_similar("The answer is Mars, the red planet.", "The answer is Mars, the red planet!")
    assert not are_similar("Mars.", "Venus.")
    assert not are_similar("The answer is Mars, the red planet.", "The answer is Mars, the red planet!", ratio=1.0)


def test_dpo_drops_weak_and_similar_pairs_and_counts_them(tmp_path, tokenizer):
    rows = [
        {"prompt": USER, "chosen": _assistant("Mars."), "rejected": _assistant("A banana."), "strength": "better"},
        # weak preference [4.2.1]
        {
            "prompt": USER,
            "chosen": _assistant("Venus."),
            "rejected": _assistant("Nope."),
            "strength": "slightly better",
        },
        # identical pair (what temperature-0 rejection sampling writes)
        {"prompt": USER, "chosen": _assistant("Jupiter."), "rejected": _assistant("jupiter. "), "strength": None},
        # nearly identical: one character apart
        {
            "prompt": USER,
            "chosen": _assistant("Saturn is the planet with the famous rings."),
            "rejected": _assistant("Saturn is the planet with the famous rings!"),
            "strength": "significantly better",
        },
        # unrated (a reward-model-ranked pair): kept
        {"prompt": USER, "chosen": _assistant("Neptune."), "rejected": _assistant("Pluto."), "strength": None},
    ]
    trainer = Llama3DPOTrainer(
        model=tiny_causal_lm(0),
        args=_dpo_config(tmp_path),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    summary = trainer.data_summary["train"]
    assert summary["rows_read"] == 5
    assert summary["dropped_weak_preference"] == 1
    assert summary["dropped_similar_rows"] == 2 and summary["dropped_similar_responses"] == 2
    assert summary["unrated"] == 2
    assert summary["rows_kept"] == summary["pairs"] == 2 == len(trainer.train_dataset)
    chosen = [tokenizer.decode(r["chosen_ids"]) for r in trainer.train_dataset]
    assert chosen == ["Mars.<|eot_id|>", "Neptune.<|eot_id|>"]


def test_dpo_turns_ranked_rows_into_ordered_pairs(tmp_path, tokenizer):
    rows = [
        {"prompt": USER, "edited": "Mars, the red planet.", "chosen": "Mars.", "rejected": "A banana."},
        {"prompt": USER, "edited": None, "chosen": "Venus.", "rejected": "Nope."},
        # the reward model's other layout: responses ranked best first
    ]
    pairs, summary = prepare_dpo_rows(Dataset.from_list(rows), tokenizer, _dpo_config(tmp_path), "planted")
    decoded = [(tokenizer.decode(p["chosen_ids"][:-1]), tokenizer.decode(p["rejected_ids"][:-1])) for p in pairs]
    assert decoded == [
        ("Mars, the red planet.", "Mars."),
        ("Mars, the red planet.", "A banana."),
        ("Mars.", "A banana."),
        ("Venus.", "Nope."),
    ]
    assert summary["ranked_rows"] == 1 and summary["pairs"] == 4
    listed = Dataset.from_list([{"prompt": USER, "responses": ["Mars.", "Venus?", "A banana."]}])
    pairs, summary = prepare_dpo_rows(listed, tokenizer, _dpo_config(tmp_path), "planted")
    assert len(pairs) == 3 and summary["ranked_rows"] == 1


def test_formatting_mask_on_plain_text_rows(tmp_path, tokenizer):
    """Plain-text rows are masked too: their one formatting token is the closing EOS [4.1.4]."""
    rows = [{"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Rome."}]
    trainer = Llama3DPOTrainer(
        model=tiny_causal_lm(0),
        args=_dpo_config(tmp_path),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    assert row["chosen_formatting_mask"][-1] == 1 and sum(row["chosen_formatting_mask"]) == 1
    batch = trainer.data_collator([row])
    kept = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    assert kept == row["chosen_ids"][:-1] and row["chosen_ids"][-1] == tokenizer.eos_token_id


def test_rows_the_mask_cannot_handle_are_refused(tmp_path, tokenizer):
    config = _dpo_config(tmp_path)
    tokenized = Dataset.from_list([{"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5, 6]}])
    with pytest.raises(ValueError, match=r"cannot be masked.*mask_formatting_tokens: false"):
        prepare_dpo_rows(tokenized, tokenizer, config, "planted.jsonl")
    mixed = Dataset.from_list([{"prompt": "Hi", "chosen": _assistant("Hello"), "rejected": _assistant("Go")}])
    with pytest.raises(ValueError, match=r"planted\.jsonl: .*row 0: chosen is a message list but the prompt is plain"):
        prepare_dpo_rows(mixed, tokenizer, config, "planted.jsonl")


def test_reward_drops_similar_responses_and_weak_rows(tmp_path, tokenizer):
    rows = [
        # edited ~ chosen: the chosen copy is dropped, the row keeps edited > rejected
        {"prompt": USER, "edited": "Mars.", "chosen": "mars.", "rejected": "A banana.", "strength": "better"},
        {"prompt": USER, "edited": None, "chosen": "Venus.", "rejected": "Nope.", "strength": "slightly better"},
        {"prompt": USER, "edited": None, "chosen": "Earth.", "rejected": "Earth.", "strength": "better"},
    ]
    config = Llama3RewardConfig(**trainer_args(tmp_path))
    packed, summary = prepare_reward_rows(Dataset.from_list(rows), tokenizer, config, "planted")
    assert summary == {
        "rows_read": 3,
        "dropped_weak_preference": 1,
        "unrated": 0,
        "dropped_similar_responses": 2,
        "dropped_similar_rows": 1,
        "rows_kept": 1,
    }
    assert len(packed) == 1 and sorted(packed[0]["response_ranks"]) == [0, 1]


def test_rounds_dpo_keeps_the_strength_column(tmp_path, tokenizer):
    """A round's annotation file reaches DPO whole: its weak pair is dropped and counted in the export's summary."""
    import json

    from training.rounds import RoundsConfig, RoundsRunner

    base, sft_final = tmp_path / "base", tmp_path / "rounds" / "round_0" / "sft" / "final"
    for folder in (base, sft_final):
        tiny_causal_lm(0).save_pretrained(folder)
    tokenizer.save_pretrained(sft_final)
    rows = [
        {"prompt": USER, "chosen": _assistant("Mars."), "rejected": _assistant("A banana."), "strength": "better"},
        {
            "prompt": USER,
            "chosen": _assistant("Venus."),
            "rejected": _assistant("Nope."),
            "strength": "slightly better",
        },
    ]
    preferences = tmp_path / "rounds" / "round_0" / "preferences" / "preferences.jsonl"
    preferences.parent.mkdir(parents=True)
    preferences.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RoundsConfig(
        base_model=str(base),
        prompts_path=str(preferences),
        preference_path=str(preferences),
        output_dir=str(tmp_path / "rounds"),
        dpo=trainer_args(tmp_path, max_steps=1),
    )
    out = tmp_path / "rounds" / "round_0" / "dpo_seed0"
    RoundsRunner(config).train_dpo(0, out, seed=0)
    summary = json.loads((out / "final" / "data_summary.json").read_text())[str(preferences)]
    assert summary["dropped_weak_preference"] == 1 and summary["pairs"] == 1
