"""Pixel-wise precision, recall, F1 and IoU of the landslide class on a labelled L4S split.

Every model (and the ensemble) runs through ``EnsemblePredictor.predict_window``, the
inference code the pipeline uses, at its card's tuned threshold. Patches are laid side by
side into one window tiled exactly by patch-sized tiles (stride = tile, plain-mean blending),
so each tile is one patch, predictions are batched, and the map is that patch's prediction.
Confusion counts and probability histograms are accumulated over the split; predictions
are never stored.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from landslide_batch.config import EnsembleConfig, EnsembleMember, load_ensemble
from landslide_batch.errors import ConfigError, InputError
from landslide_batch.infer.predictor import EnsemblePredictor
from landslide_batch.metrics import Counts, confusion_counts, prob_histograms, scores, sweep
from landslide_batch.storage import location

from .dataset import find_pairs, read_pair

log = logging.getLogger(__name__)
BINS = 200  # PR-curve resolution


@dataclass
class Evaluation:
    name: str
    predictor: EnsemblePredictor
    counts: Counts = Counts()
    pos: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def row(self) -> dict:
        return {
            "model": self.name,
            "threshold": round(self.predictor.threshold, 4),
            **{k: round(v, 4) for k, v in scores(self.counts).items()},
            "tp": self.counts.tp,
            "fp": self.counts.fp,
            "fn": self.counts.fn,
            "tn": self.counts.tn,
        }


def _model_id(model: Path | str) -> str:
    """A model folder's identity: its resolved local path, or its URI."""
    return str(model.resolve()) if isinstance(model, Path) else model


def _targets(models: Sequence[Path], ensemble: Path | None) -> list[tuple[str, EnsembleConfig]]:
    """(name, config) for each model, each ensemble member not already listed, and the ensemble."""
    members = [EnsembleMember(model=Path(m)) for m in models]
    ens = load_ensemble(ensemble) if ensemble is not None else None
    if ens is not None:
        listed = {_model_id(m.model) for m in members}
        members += [EnsembleMember(model=m.model) for m in ens.members if _model_id(m.model) not in listed]
    if not members:
        raise ConfigError("give at least one --model or an --ensemble")
    names = [location(m.model).name for m in members]
    if len(set(names)) < len(names):
        names = [str(m.model) for m in members]
    targets = [(n, EnsembleConfig(members=[m])) for n, m in zip(names, members)]
    if ensemble is not None and ens is not None:
        targets.append((f"ensemble ({ensemble.name})", ens))
    elif len(members) > 1:
        targets.append(("ensemble (equal weights)", EnsembleConfig(members=members)))
    return targets


def evaluate(
    data: str | Path,
    models: Sequence[Path] = (),
    ensemble: Path | None = None,
    *,
    batch_size: int = 16,
    device: str = "auto",
    tta: bool = False,
) -> list[Evaluation]:
    """Score each model and the ensemble; with ``tta`` each also with test-time augmentation
    (a second row, ``NAME +TTA``), so its effect is read off side by side."""
    pairs = find_pairs(data)
    first, _ = read_pair(pairs[0])
    size = first.shape[1]
    evals = [
        Evaluation(
            name + (" +TTA" if aug else ""),
            EnsemblePredictor(cfg, tile=size, stride=size, blend="mean", batch_size=batch_size, device=device, tta=aug),
        )
        for name, cfg in _targets(models, ensemble)
        for aug in ((False, True) if tta else (False,))
    ]
    log.info("evaluating %d model(s) on %d patches of %s", len(evals), len(pairs), data)
    for start in range(0, len(pairs), batch_size):
        group = [read_pair(p) for p in pairs[start : start + batch_size]]
        for (bands, _), p in zip(group, pairs[start:]):
            if bands.shape[1:] != (size, size):
                raise InputError(
                    f"{p.image}: patch is {bands.shape[1]}x{bands.shape[2]}, expected {size}x{size} "
                    "like the first patch of the split"
                )
        window = np.concatenate([b for b, _ in group], axis=2)  # (14, S, k * S)
        labels = np.concatenate([m for _, m in group], axis=1)
        valid = np.ones(labels.shape, bool)
        for ev in evals:
            prob, _ = ev.predictor.predict_window(window, valid)
            ev.counts += confusion_counts(prob >= ev.predictor.threshold, labels)
            pos, neg = prob_histograms(prob, labels, BINS)
            ev.pos += pos
            ev.neg += neg
    return evals


def markdown_table(rows: list[dict]) -> str:
    cols = ["model", "threshold", "precision", "recall", "f1", "iou"]
    head = ["model", "threshold", "precision", "recall", "F1", "IoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    lines += [
        "| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |" for r in rows
    ]
    return "\n".join(lines)


def write_reports(evals: list[Evaluation], out: Path, data: str | Path, pr_curve: bool) -> list[Path]:
    """``metrics.md`` + ``metrics.csv`` (and ``pr_curve.png``) in ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [ev.row() for ev in evals]
    md, cs = out / "metrics.md", out / "metrics.csv"
    md.write_text(f"# Landslide class, pixel-wise, on `{data}`\n\n{markdown_table(rows)}\n")
    with open(cs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    written = [md, cs]
    if pr_curve:
        written.append(plot_pr_curve(evals, out / "pr_curve.png"))
    return written


def plot_pr_curve(evals: list[Evaluation], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for ev in evals:
        _, counts = sweep(ev.pos, ev.neg)
        s = [scores(c) for c in counts if c.tp + c.fp > 0]
        (line,) = ax.plot([x["recall"] for x in s], [x["precision"] for x in s], label=ev.name)
        op = scores(ev.counts)
        ax.plot(op["recall"], op["precision"], "o", color=line.get_color())
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Landslide class, pixel-wise (dots: tuned thresholds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
