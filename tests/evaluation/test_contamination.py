"""Contamination by 8-gram overlap [5.1]: planted overlaps are found, clean examples are not flagged."""

from __future__ import annotations

import random

import numpy as np
import pytest

from evaluation.contamination import (
    ContaminationConfig,
    find_contamination,
    iter_training_data,
    read_jsonl_field,
    split_scores,
)


def brute_force_scores(eval_ids, train_ids, n):
    """Independent reference: plain Python sets of n-gram tuples, token coverage per example."""
    train_grams = {tuple(seq[i : i + n]) for seq in train_ids for i in range(len(seq) - n + 1)}
    scores = []
    for ids in eval_ids:
        covered = [False] * len(ids)
        for i in range(len(ids) - n + 1):
            if tuple(ids[i : i + n]) in train_grams:
                covered[i : i + n] = [True] * n
        scores.append(sum(covered) / len(ids))
    return scores


def test_planted_humaneval_prompts_are_found(encode, reference_docs, humaneval_prompts):
    rng = random.Random(0)
    planted = set(rng.sample(range(40), 8))
    shards = list(reference_docs)
    for i in planted:  # bury each leaked problem inside an ordinary document
        host = rng.randrange(len(shards))
        shards.insert(host, shards[host] + "\n\n" + humaneval_prompts[i] + "\n\n" + shards[(host + 1) % len(shards)])
    # HumanEval prompts share boilerplate (rolling_max and remove_duplicates both read
    # "(numbers: List[int]) -> List[int]: ... list of integers"), so an unplanted sibling of a planted
    # problem reaches about half coverage: the reason the paper tunes the threshold per benchmark [5.1].
    config = ContaminationConfig(n=8, threshold=0.75)
    report = find_contamination(humaneval_prompts[:40], iter(shards), config, tokenize=encode)
    assert set(report.contaminated_indices) == planted
    for example in report.examples:
        if example.index in planted:
            assert example.score > 0.95  # BPE merges across the splice can change a token at the edges
        else:
            assert example.score < 0.6
    assert report.training_sequences == len(shards)


def test_partial_overlap_scores_the_covered_fraction(encode, reference_docs, humaneval_prompts):
    prompt_ids = encode(humaneval_prompts[0])
    leaked = prompt_ids[10:30]  # 20 tokens of the prompt appear in training, split across two documents
    shards = [encode(doc) for doc in reference_docs[:50]] + [prompt_ids[:5] + encode(" unrelated prose here")]
    shards.append(encode("Some text before. ") + leaked + encode(" and some after."))
    report = find_contamination([prompt_ids], shards, ContaminationConfig(n=8, threshold=0.9))
    assert report.examples[0].score == pytest.approx(20 / len(prompt_ids))
    assert report.examples[0].matched_ngrams == 20 - 8 + 1
    assert report.contaminated_indices == []


@pytest.mark.parametrize("n", [1, 4, 8, 13])
def test_matches_brute_force_reference(encode, reference_docs, n):
    rng = random.Random(n)
    train = [encode(doc) for doc in reference_docs[:80]]
    eval_ids = []
    for _ in range(30):  # eval examples: spliced pieces of training docs and of unseen docs
        a, b = rng.choice(train), encode(rng.choice(reference_docs[80:]))
        i, j = rng.randrange(max(1, len(a) - 30)), rng.randrange(max(1, len(b) - 30))
        eval_ids.append(a[i : i + rng.randrange(5, 30)] + b[j : j + 20])
    report = find_contamination(eval_ids, train, ContaminationConfig(n=n))
    expected = brute_force_scores(eval_ids, train, n)
    assert [e.score for e in report.examples] == pytest.approx(expected)
    assert report.training_tokens == sum(map(len, train))


def test_split_scores_separates_clean_and_contaminated(encode, reference_docs, humaneval_prompts):
    shards = [*reference_docs, humaneval_prompts[1], humaneval_prompts[3]]
    report = find_contamination(humaneval_prompts[:6], shards, tokenize=encode)
    assert report.contaminated_indices == [1, 3]
    split = split_scores(report, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    assert split == {
        "all": 0.5,
        "clean": 0.25,
        "contaminated": 1.0,
        "num_clean": 4,
        "num_contaminated": 2,
        "delta": 0.75,
    }
    with pytest.raises(ValueError, match="one score per example"):
        split_scores(report, [1.0])


def test_bad_input_has_clear_errors(encode, reference_docs, tmp_path):
    train = [encode(d) for d in reference_docs[:5]]
    with pytest.raises(ValueError, match="evaluation set is empty"):
        find_contamination([], train)
    with pytest.raises(ValueError, match="training data is empty"):
        find_contamination([encode(reference_docs[6])], iter([]))
    # Token ids from a different vocabulary: no id in common with the evaluation set.
    foreign = [list(np.asarray(ids) + 128256) for ids in train]
    with pytest.raises(ValueError, match="different vocabularies"):
        find_contamination([encode(reference_docs[6])], foreign)
    with pytest.raises(ValueError, match="pass `tokenize`"):
        find_contamination(["some text"], train)
    with pytest.raises(ValueError, match="shorter than n=8"):
        find_contamination([[1, 2, 3]], train)
    with pytest.raises(ValueError, match="negative token ids"):
        find_contamination([[-100] * 10], train)
    with pytest.raises(ValueError, match="threshold"):
        ContaminationConfig(threshold=0.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: none of the fields"):
        list(read_jsonl_field(bad))


def test_reads_the_data_pipelines_packed_shards(tokenizer, reference_docs, humaneval_prompts, tmp_path):
    from data.mix import MixConfig
    from data.shards import ShardConfig, write_shards

    texts = [*reference_docs[:60], humaneval_prompts[4]]
    write_shards(
        texts,
        ["general"] * len(texts),
        tokenizer,
        tmp_path / "shards",
        MixConfig(weights={"general": 1.0}),
        ShardConfig(seq_len=256, sequences_per_shard=8, datatrove_export=False),
    )
    report = find_contamination(
        humaneval_prompts[:8],
        iter_training_data([tmp_path / "shards"]),
        tokenize=lambda t: tokenizer.encode(t, add_special_tokens=False),
    )
    # Packing may cut the planted prompt across two sequences: the n-grams on the cut are lost, the rest found.
    assert report.contaminated_indices == [4]
    assert report.examples[4].score > 0.8
    with pytest.raises(FileNotFoundError, match="neither a shard folder"):
        list(iter_training_data([tmp_path / "nothing"]))
