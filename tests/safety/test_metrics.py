"""Guard metrics against hand counts and scikit-learn."""

from __future__ import annotations

import random

import pytest

from training.safety.classifier import GuardVerdict
from training.safety.metrics import average_precision, binary_metrics, evaluate_verdicts, plot_sweep, threshold_sweep


def test_binary_metrics_hand_counts():
    truth = [True, True, True, False, False, False, False]
    pred = [True, True, False, True, False, False, False]
    m = binary_metrics(truth, pred)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["fpr"] == pytest.approx(1 / 4)


def test_average_precision_hand_count_and_sklearn():
    # Ranked: pos, neg, pos, neg -> AP = (1/2)*1 + (1/2)*(2/3).
    assert average_precision([True, False, True, False], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([False, False], [0.3, 0.2]) == 0.0
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(0)
    for _ in range(5):
        truth = [rng.random() < 0.4 for _ in range(60)]
        scores = [round(rng.random(), 1) for _ in range(60)]  # ties included
        want = sklearn_metrics.average_precision_score(truth, scores)
        assert average_precision(truth, scores) == pytest.approx(want)


def test_per_category_report_and_sweep(tmp_path):
    rows = [
        {"label": "unsafe", "categories": ["S1"]},
        {"label": "unsafe", "categories": ["S9"]},
        {"label": "unsafe", "categories": ["S1"]},
        {"label": "safe", "categories": []},
        {"label": "safe", "categories": []},
    ]
    verdicts = [
        GuardVerdict(True, 0.9, ["S1"], {"S1": 0.8, "S9": 0.1}),
        GuardVerdict(True, 0.7, ["S1"], {"S1": 0.5, "S9": 0.2}),  # unsafe, wrong category
        GuardVerdict(False, 0.3, [], {"S1": 0.2, "S9": 0.1}),  # missed
        GuardVerdict(True, 0.6, ["S9"], {"S1": 0.1, "S9": 0.5}),  # false positive
        GuardVerdict(False, 0.1, [], {"S1": 0.05, "S9": 0.05}),
    ]
    report = evaluate_verdicts(rows, verdicts, ["S1", "S9"])
    overall = report["overall"]
    assert (overall["tp"], overall["fp"], overall["fn"], overall["tn"]) == (2, 1, 1, 1)
    s1, s9 = report["per_category"]["S1"], report["per_category"]["S9"]
    assert (s1["tp"], s1["fp"], s1["fn"], s1["support"]) == (1, 1, 1, 2)
    assert (s9["tp"], s9["fp"], s9["fn"], s9["support"]) == (0, 1, 1, 1)
    assert s1["fpr"] == pytest.approx(1 / 3)
    assert report["category_accuracy"] == {"right": 1, "of_flagged_unsafe": 0.5, "of_all_unsafe": pytest.approx(1 / 3)}
    sweep = threshold_sweep([r["label"] == "unsafe" for r in rows], [v.score for v in verdicts], [0.2, 0.5, 0.8])
    assert [s["recall"] for s in sweep] == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert [s["fpr"] for s in sweep] == pytest.approx([0.5, 0.5, 0.0])
    png = plot_sweep(sweep, tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
