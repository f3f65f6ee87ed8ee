"""Metric functions against confusion counts worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landslide_batch.metrics import Counts, best_threshold, confusion_counts, prob_histograms, scores, sweep

# 3 x 4 example: 3 true positives, 2 false positives, 1 false negative, 6 true negatives.
PRED = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0]], bool)
TRUE = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)


def test_confusion_counts_by_hand():
    assert confusion_counts(PRED, TRUE) == Counts(tp=3, fp=2, fn=1, tn=6)


def test_confusion_counts_torch_matches_numpy_and_respects_valid():
    valid = np.ones_like(PRED)
    valid[2] = False  # drops the false positive at (2, 1) and two true negatives
    expected = Counts(tp=3, fp=1, fn=1, tn=3)
    assert confusion_counts(PRED, TRUE, valid) == expected
    assert confusion_counts(torch.from_numpy(PRED), torch.from_numpy(TRUE), torch.from_numpy(valid)) == expected


def test_scores_by_hand():
    s = scores(Counts(tp=3, fp=2, fn=1, tn=6))
    assert s["precision"] == pytest.approx(3 / 5)
    assert s["recall"] == pytest.approx(3 / 4)
    assert s["f1"] == pytest.approx(6 / 9)  # 2TP / (2TP + FP + FN)
    assert s["iou"] == pytest.approx(3 / 6)  # TP / (TP + FP + FN)


def test_scores_without_positives_are_zero_not_nan():
    assert scores(Counts(tn=10)) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0}


def test_counts_add_up():
    assert Counts(1, 2, 3, 4) + Counts(10, 20, 30, 40) == Counts(11, 22, 33, 44)


def test_sweep_matches_direct_counts_at_every_threshold():
    rng = np.random.default_rng(0)
    prob = rng.random((50, 50)).astype(np.float32)
    prob[0, :5] = [0.0, 1.0, 0.5, 0.25, 0.99]  # bin edges and the top value
    target = rng.random((50, 50)) < prob  # informative probabilities
    prob[1, 0] = np.nan  # no prediction: left out of histograms
    pos, neg = prob_histograms(prob, target, bins=20)
    assert pos.sum() + neg.sum() == prob.size - 1
    thresholds, counts = sweep(pos, neg)
    finite = np.isfinite(prob)
    for t, c in zip(thresholds, counts):
        assert c == confusion_counts(prob >= t, target, finite)


def test_best_threshold_picks_the_separating_threshold():
    prob = np.array([0.05, 0.2, 0.35, 0.4, 0.7, 0.9])
    target = np.array([0, 0, 0, 1, 1, 1], bool)
    t, c = best_threshold(*prob_histograms(prob, target, bins=10))
    assert t == pytest.approx(0.4)  # any t in (0.35, 0.4] separates; on the 0.1 grid that is 0.4
    assert c == Counts(tp=3, fp=0, fn=0, tn=3)
