"""Safety data mixed into SFT and DPO at set ratios [5.4.3]."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from training.safety.mix import mix_safety_rows
from training.safety.synthetic import safety_preference_rows, safety_sft_rows


def _base_sft(n: int) -> Dataset:
    return Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(n)
        ]
    )


def test_mix_gives_the_set_shares():
    base = _base_sft(60)
    safety = Dataset.from_list(safety_sft_rows(10, 30, seed=0))
    mixed = mix_safety_rows(base, safety, adversarial_ratio=0.2, borderline_ratio=0.1, seed=0)
    # 60 / 0.7 = 85.7 rows in all: round(0.2 * 85.7) = 17 adversarial (10 available, cycled), 9 borderline.
    texts = [row["messages"][1]["content"] for row in mixed]
    refusals = sum(t.startswith(("I can", "Sorry")) for t in texts)
    helpful = sum(t.startswith("Sure. To ") for t in texts)
    assert (refusals, helpful, len(mixed) - refusals - helpful) == (17, 9, 60)
    assert mixed.column_names == ["messages"]


def test_mix_errors():
    base, safety = _base_sft(4), Dataset.from_list(safety_sft_rows(2, 0))
    with pytest.raises(ValueError, match="must be below 1"):
        mix_safety_rows(base, safety, 0.6, 0.5)
    with pytest.raises(ValueError, match="no 'borderline' rows"):
        mix_safety_rows(base, safety, 0.1, 0.2)
    with pytest.raises(ValueError, match="no 'kind'"):
        mix_safety_rows(base, safety.remove_columns("kind"), 0.1, 0.0)


def test_sft_and_dpo_stages_mix_safety_rows(tmp_path):
    from training.dpo import Llama3DPOConfig
    from training.safety.mix import mix_from_config
    from training.sft import Llama3SFTConfig, load_sft_dataset

    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _base_sft(8).to_list()))
    (tmp_path / "safety_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in safety_sft_rows(4, 4)))
    common = dict(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True)
    config = Llama3SFTConfig(dataset_path=str(tmp_path / "sft.jsonl"), safety_dataset_path=str(tmp_path / "safety_sft.jsonl"),
                             safety_adversarial_ratio=0.25, safety_borderline_ratio=0.25, **common)  # fmt: skip
    assert len(load_sft_dataset(config)) == 16  # 8 base = 50%
    with pytest.raises(ValueError, match="safety_dataset_path is not"):
        Llama3SFTConfig(dataset_path="x.jsonl", safety_adversarial_ratio=0.1, **common)

    prefs = safety_preference_rows(3, 3)
    assert prefs[0]["chosen"][0]["content"].startswith(("I can", "Sorry"))  # adversarial: refusal preferred
    assert prefs[-1]["rejected"][0]["content"].startswith(("I can", "Sorry"))  # borderline: refusal rejected
    (tmp_path / "safety_dpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prefs))
    base = Dataset.from_list(
        [{k: v for k, v in r.items() if k != "kind"} for r in safety_preference_rows(6, 0, seed=5)]
    )
    dpo = Llama3DPOConfig(dataset_path="unused.jsonl", safety_dataset_path=str(tmp_path / "safety_dpo.jsonl"),
                          safety_borderline_ratio=0.5, **common)  # fmt: skip
    mixed = mix_from_config(base, dpo, seed=0)
    assert len(mixed) == 12 and set(mixed.column_names) == {"prompt", "chosen", "rejected"}
