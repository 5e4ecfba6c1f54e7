"""Reward modelling [4.1.2]: packed ranked rows, the no-margin pairwise loss, accuracy, bad-row reports."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from tests.post_training.conftest import tiny_reward_model
from training.post_rows import find_bad_ranked_rows
from training.reward import (
    PackedRankingCollator,
    pack_ranked_row,
    packed_attention_mask,
    packed_rewards,
    ranking_loss,
)

PROMPT = [128000, 9906, 1070, 11, 1268]
RESPONSES = [[40, 1097, 6555, 128009], [9906, 128009], [3923, 374, 279, 4320, 30, 128009]]


def _neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_pack_ranked_row_layout():
    row = pack_ranked_row([1, 2], [[3, 4], [5], [6, 7, 8]], order=[2, 0, 1])
    assert row["input_ids"] == [1, 2, 6, 7, 8, 3, 4, 5]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 2, 3, 2]
    assert row["segment_ids"] == [0, 0, 1, 1, 1, 2, 2, 3]
    assert row["response_ends"] == [4, 6, 7]
    assert row["response_ranks"] == [2, 0, 1]


def test_packed_mask_sees_prompt_and_own_response_only():
    segments = torch.tensor([[0, 0, 1, 1, 2, -1]])
    visible = packed_attention_mask(segments)[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(visible, expected)


def test_packed_scores_equal_separate_forwards():
    """One forward per prompt gives each response the score of `prompt + response` scored on its own."""
    model = tiny_reward_model(0)
    rows = [pack_ranked_row(PROMPT, RESPONSES, [2, 0, 1]), pack_ranked_row(PROMPT[:2], RESPONSES[:2], [1, 0])]
    batch = PackedRankingCollator(pad_token_id=128004)(rows)
    with torch.no_grad():
        packed = packed_rewards(model, batch)
        alone = [
            [model(input_ids=torch.tensor([p + r])).logits.item() for r in rs]
            for p, rs in ((PROMPT, RESPONSES), (PROMPT[:2], RESPONSES[:2]))
        ]
    torch.testing.assert_close(packed[0], torch.tensor([alone[0][2], alone[0][0], alone[0][1]]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[1, :2], torch.tensor([alone[1][1], alone[1][0]]), rtol=1e-4, atol=1e-5)
    assert packed[1, 2] == 0


def test_ranking_loss_three_responses_by_hand():
    # slots hold ranks [1, 0, 2]: ordered pairs (better, worse) are (s1, s0), (s1, s2), (s0, s2).
    rewards = torch.tensor([[1.0, 0.5, -0.2]])
    loss, correct, pairs = ranking_loss(rewards, torch.tensor([[1, 0, 2]]))
    expected = (_neg_log_sigmoid(0.5 - 1.0) + _neg_log_sigmoid(0.5 + 0.2) + _neg_log_sigmoid(1.0 + 0.2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert (correct.item(), pairs.item()) == (2, 3)


def test_ranking_loss_mixed_two_and_three_responses_by_hand():
    rewards = torch.tensor([[0.3, -0.4, 0.0], [2.0, 1.0, 0.0]])
    ranks = torch.tensor([[1, 0, -1], [0, 2, 1]])
    loss, correct, pairs = ranking_loss(rewards, ranks)
    # row 0: s1 > s0 (one pair); row 1: s0 > s2, s0 > s1, s2 > s1. No margin term anywhere.
    terms = [-0.4 - 0.3, 2.0 - 0.0, 2.0 - 1.0, 0.0 - 1.0]
    assert loss.item() == pytest.approx(sum(_neg_log_sigmoid(t) for t in terms) / 4, rel=1e-6)
    assert (correct.item(), pairs.item()) == (2, 4)


def test_bad_rows_are_reported_with_row_numbers():
    rows = Dataset.from_list(
        [
            {"prompt": "fine", "chosen": "a", "rejected": "b", "edited": None},
            {"prompt": "", "chosen": "a", "rejected": "b", "edited": None},
            {"prompt": "p", "chosen": "  ", "rejected": "b", "edited": "c"},
        ]
    )
    problems = find_bad_ranked_rows(rows)
    assert problems == ["row 1: empty prompt", "row 2: empty chosen"]
    one = Dataset.from_list([{"prompt": "p", "responses": ["only one"]}])
    assert find_bad_ranked_rows(one) == ["row 0: 1 responses (need 2 to 3, ranked best first)"]


def _trainer(tmp_path, tokenizer, rows, **overrides):
    from tests.post_training.conftest import trainer_args
    from training.reward import Llama3RewardConfig, Llama3RewardTrainer

    config = Llama3RewardConfig(**trainer_args(tmp_path, **overrides))
    return Llama3RewardTrainer(
        model=tiny_reward_model(0), args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )


def test_trainer_loss_equals_hand_computed_value(tmp_path, tokenizer):
    from tests.post_training.conftest import PREFERENCE_ROWS
    from training.reward import ranked_responses, tokenize_prompt_and_responses

    trainer = _trainer(tmp_path, tokenizer, PREFERENCE_ROWS)
    # The strength filter keeps "significantly better" and "better" (case-insensitive) [4.1.2]: rows 0, 1, 3.
    assert len(trainer.train_dataset) == 3
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
        terms, correct = [], 0
        for row in (PREFERENCE_ROWS[0], PREFERENCE_ROWS[1], PREFERENCE_ROWS[3]):
            prompt_ids, responses = tokenize_prompt_and_responses(tokenizer, row["prompt"], ranked_responses(row))
            scores = [model(input_ids=torch.tensor([prompt_ids + r])).logits.item() for r in responses]
            for better in range(len(scores)):
                for worse in range(better + 1, len(scores)):
                    terms.append(_neg_log_sigmoid(scores[better] - scores[worse]))
                    correct += scores[better] > scores[worse]
    assert len(terms) == 3 + 1 + 3
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-4)
    assert trainer._metrics["eval"]["accuracy"][-1] == pytest.approx(correct / len(terms))


def test_trainer_trains_and_exports(tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from tests.post_training.conftest import PREFERENCE_ROWS
    from training.post_cli import export_model
    from training.reward import ranked_responses, tokenize_prompt_and_responses

    trainer = _trainer(tmp_path, tokenizer, PREFERENCE_ROWS)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert "score.weight" in changed and any("layers.0" in n for n in changed)
    # Ranking accuracy over the whole eval set, pooled over its ordered pairs (3 + 1 + 3 after the strength filter).
    metrics = trainer.evaluate(eval_dataset=Dataset.from_list(PREFERENCE_ROWS))
    model = trainer.model.eval()
    correct = 0
    with torch.no_grad():
        for row in (PREFERENCE_ROWS[0], PREFERENCE_ROWS[1], PREFERENCE_ROWS[3]):
            prompt_ids, responses = tokenize_prompt_and_responses(tokenizer, row["prompt"], ranked_responses(row))
            scores = [model(input_ids=torch.tensor([prompt_ids + r])).logits.item() for r in responses]
            correct += sum(scores[i] > scores[j] for i in range(len(scores)) for j in range(i + 1, len(scores)))
    assert metrics["eval_accuracy"] == pytest.approx(correct / 7)
    assert math.isfinite(metrics["eval_loss"])
    out = export_model(trainer, tmp_path / "rm")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(reloaded.score.weight, trainer.model.score.weight)


def test_trainer_rejects_bad_rows_and_long_rows(tmp_path, tokenizer):
    rows = [
        {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"},
        {"prompt": "Hi", "chosen": "", "rejected": "Go away"},
    ]
    with pytest.raises(ValueError, match="row 1: empty chosen"):
        _trainer(tmp_path, tokenizer, rows)
    with pytest.raises(ValueError, match="are not preference rows"):
        _trainer(tmp_path, tokenizer, [{"prompt": "Hi", "chosen": "Hello"}])
    long_rows = [{"prompt": "Hi", "chosen": "Hello " * 40, "rejected": "no"}]
    with pytest.raises(ValueError, match=r"row 0: \d+ tokens packed"):
        _trainer(tmp_path, tokenizer, long_rows, max_length=32)
