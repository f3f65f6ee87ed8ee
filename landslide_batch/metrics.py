"""Pixel-wise metrics of the landslide class: confusion counts and the scores derived from them.

Pure functions on numpy arrays or torch tensors. Callers accumulate *counts* (or probability
histograms, for threshold sweeps and PR curves) over a whole split and derive scores at the
end, so no split's predictions are ever held in memory at once and scores are exact
pixel-wise totals, not means of per-patch scores.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Counts:
    """Confusion counts of the positive (landslide) class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _as_bool(a: Any) -> Any:
    return a.astype(bool) if isinstance(a, np.ndarray) else a.bool()


def confusion_counts(pred: Any, target: Any, valid: Any = None) -> Counts:
    """Counts of binary ``pred`` against binary ``target`` (same shape), over ``valid`` pixels only."""
    pred, target = _as_bool(pred), _as_bool(target)
    if valid is not None:
        valid = _as_bool(valid)
        pred, target = pred[valid], target[valid]
    return Counts(
        int((pred & target).sum()),
        int((pred & ~target).sum()),
        int((~pred & target).sum()),
        int((~pred & ~target).sum()),
    )


def _ratio(num: float, den: float) -> float:
    # An empty denominator means nothing to get wrong in that direction: score it 0, not NaN,
    # so tables stay numeric; callers see the counts beside it.
    return float(num) / den if den else 0.0


def scores(c: Counts) -> dict[str, float]:
    """Precision, recall, F1 and IoU of the positive class from confusion counts."""
    return {
        "precision": _ratio(c.tp, c.tp + c.fp),
        "recall": _ratio(c.tp, c.tp + c.fn),
        "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
        "iou": _ratio(c.tp, c.tp + c.fp + c.fn),
    }


def prob_histograms(prob: Any, target: Any, bins: int = 100, valid: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Histograms (``bins`` equal bins over [0, 1]) of probabilities at positive and at negative pixels.

    Bin ``i`` holds probabilities in ``[i / bins, (i + 1) / bins)`` (1.0 in the last bin), so a
    pixel is predicted positive at threshold ``i / bins`` (rule ``prob >= threshold``) exactly when
    it lies in bin ``i`` or above. NaN probabilities (no prediction) are left out.
    """
    if not isinstance(prob, np.ndarray):
        prob, target = prob.detach().float().cpu().numpy(), target.detach().cpu().numpy()
        valid = None if valid is None else valid.detach().cpu().numpy()
    keep = np.isfinite(prob) if valid is None else np.isfinite(prob) & valid.astype(bool)
    idx = np.clip((prob[keep] * bins).astype(np.int64), 0, bins - 1)
    pos = target[keep].astype(bool)
    return (
        np.bincount(idx[pos], minlength=bins).astype(np.int64),
        np.bincount(idx[~pos], minlength=bins).astype(np.int64),
    )


def sweep(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[np.ndarray, list[Counts]]:
    """Thresholds ``i / bins`` and the confusion counts at each (rule ``prob >= threshold``)."""
    bins = len(pos_hist)
    tp = np.cumsum(pos_hist[::-1])[::-1]  # positives at or above bin i
    fp = np.cumsum(neg_hist[::-1])[::-1]
    p, n = int(pos_hist.sum()), int(neg_hist.sum())
    counts = [Counts(int(a), int(b), p - int(a), n - int(b)) for a, b in zip(tp, fp)]
    return np.arange(bins) / bins, counts


def best_threshold(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[float, Counts]:
    """The threshold maximising F1 (ties: the lowest such threshold) and its counts."""
    thresholds, counts = sweep(pos_hist, neg_hist)
    f1 = [scores(c)["f1"] for c in counts]
    i = int(np.argmax(f1))
    return float(thresholds[i]), counts[i]
