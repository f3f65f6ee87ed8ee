"""``landslide-batch reproduce``: train the reference zoo with the study's settings, score it, write its table.

1. Data: a labelled L4S folder (``fetch-data l4s`` output, or any ``train/`` + optional ``val/``).
   When no labelled validation split exists (Landslide4Sense released masks for its training
   split only), the training split is divided 80/20 with seed 42, as the study did
   (``train_val_split: 0.8``, ``seed: 42``), by symbolic links: no patch is copied.
2. Every config in ``configs/train/`` is trained with the study's settings (``STUDY_SETTINGS``)
   on top of its YAML.
3. Each model, their equally weighted ensemble and (given ``--imported``) the study's published
   models imported with ``import-model --all`` are scored on the validation split with
   ``evaluate`` (the inference path of ``run``), and written as ``table.md`` / ``table.csv``:
   the study's Table 2 layout (precision, recall, F1, IoU per model) plus the ensemble row and
   the published models' rows.

``--quick`` runs the same path on a CPU in minutes: two small models, one epoch, on the
project's shared sample of real patches (or ``--data``).
"""

from __future__ import annotations

import csv
import logging
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from landslide_batch.errors import ConfigError, InputError
from landslide_batch.models.card import read_card

from .config import load_train_config
from .dataset import Pair, find_pairs
from .evaluate import evaluate
from .train import train

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "train"
#: The project's shared sample of real labelled patches (``--quick``'s default data).
SAMPLE = ROOT.parent / "shared" / "data" / "landslide4sense" / "labelled"
QUICK_MODELS = ("unet_mobilenet_v2", "unet_plain")
VAL_FRACTION, SPLIT_SEED = 0.2, 42

#: The study's training (src/*_model.py and its app's config): Adam (AdamW with no decay) at
#: 1e-3, batch 16, 100 epochs, no early stopping, loss 0.5 * BCE(weight 5) + 0.5 * Dice, i.e.
#: BCE : Dice = 5 : 1. Not reproduced: its StepLR(30, 0.1) (cosine is the nearest schedule
#: here) and its raw, unnormalised inputs (here normalised with the training split's statistics).
STUDY_SETTINGS: dict[str, Any] = {
    "epochs": 100,
    "patience": None,
    "batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "schedule": "cosine",
    "loss": "bce_dice",
    "bce_weight": 5 / 6,
    "seed": SPLIT_SEED,
}
QUICK_SETTINGS: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 8,
    "num_workers": 1,
    "cpus_per_worker": 1,
    "loader_workers": 0,
    "use_gpu": False,
}
#: F1 the study reports (DESIGN.md); other models: see the study's Table 2.
STUDY_F1 = {"unet_resnet34": 0.747, "unet_plain": 0.701}


def split_by_links(
    pairs: Sequence[Pair], dest: Path, fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED
) -> tuple[Path, Path]:
    """``dest/train`` + ``dest/val`` of symbolic links to ``pairs`` (a seeded shuffle, ``fraction`` to val)."""
    if len(pairs) < 2:
        raise InputError(f"need at least 2 labelled patches to split into train and val, found {len(pairs)}")
    shutil.rmtree(dest, ignore_errors=True)  # links of an earlier run (the patches they point to stay)
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(order)))
    for split, chosen in (("val", order[:n_val]), ("train", order[n_val:])):
        for sub, attr in (("img", "image"), ("mask", "mask")):
            (dest / split / sub).mkdir(parents=True, exist_ok=True)
            for p in chosen:
                src = Path(getattr(p, attr)).resolve()
                (dest / split / sub / src.name).symlink_to(src)
    return dest / "train", dest / "val"


def _splits(data: Path, work: Path) -> tuple[Path, Path, str]:
    """(train, val, what val is): ``data/train`` + ``data/val`` when both are labelled, else a split
    of ``data/train`` (or of ``data`` itself when it is a split folder)."""
    train_dir = data / "train" if (data / "train").is_dir() else data
    if (data / "val" / "mask").is_dir() or (data / "val" / "masks").is_dir():
        return train_dir, data / "val", f"`{data / 'val'}`"
    train_dir, val_dir = split_by_links(find_pairs(train_dir), work / "split")
    return (
        train_dir,
        val_dir,
        f"{len(find_pairs(val_dir))} patches of `{data}` "
        f"({VAL_FRACTION:.0%}, seed {SPLIT_SEED}; the other {len(find_pairs(train_dir))} trained on)",
    )


def _models(configs: Path, quick: bool, only: Sequence[str]) -> list[Path]:
    found = sorted(configs.glob("*.yaml"))
    if not found:
        raise ConfigError(f"no training configs (*.yaml) in {configs}")
    names = list(only) or (list(QUICK_MODELS) if quick else [])
    if names:
        by_name = {p.stem: p for p in found}
        if missing := [n for n in names if n not in by_name]:
            raise ConfigError(f"no config for {missing} in {configs}; found {sorted(by_name)}")
        return [by_name[n] for n in names]
    return found


def reproduce(
    out: str | Path,
    data: str | Path | None = None,
    *,
    quick: bool = False,
    imported: Path | None = None,
    configs: Path = CONFIGS,
    models: Sequence[str] = (),
    use_gpu: bool = False,
    device: str = "auto",
    tta: bool = False,
) -> list[dict]:
    """Train, evaluate, and write ``out/table.md`` + ``out/table.csv``; -> the table's rows."""
    out = Path(out)
    data = Path(data) if data is not None else (SAMPLE if quick else None)
    if data is None or not data.is_dir():
        raise InputError(
            f"labelled Landslide4Sense data not found at {data}; fetch it with "
            "`landslide-batch fetch-data l4s --out DIR` and pass --data DIR"
        )
    settings = {**STUDY_SETTINGS, **(QUICK_SETTINGS if quick else {"use_gpu": use_gpu})}
    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        train_dir, val_dir, val_text = _splits(data, Path(tmp) if quick else out)
        trained = []
        for config in _models(configs, quick, models):
            folder = out / "models" / config.stem
            trained.append(folder)
            if not quick and (folder / "card.json").is_file():  # a rerun continues with the next model
                log.info("%s is trained already; delete it to train it again", folder)
                continue
            cfg = load_train_config(
                config,
                {
                    **settings,
                    "train_data": str(train_dir),
                    "val_data": str(val_dir),
                    "out": str(folder),
                    "run_dir": str((out / "train_runs").resolve()),
                },
            )
            log.info("training %s (%s)", cfg.model, config)
            train(cfg, overwrite=quick)  # a full run resumes an interrupted model from its checkpoint
        rows = [_row(ev.row(), "trained here", trained) for ev in evaluate(val_dir, trained, device=device, tta=tta)]
        if imported is not None:
            rows += [
                _row(ev.row(), "published", _imported_models(imported))
                for ev in evaluate(
                    val_dir, _imported_models(imported), _imported_ensemble(imported), device=device, tta=tta
                )
            ]
        write_table(rows, out, val_text, quick)
    return rows


def _imported_models(folder: Path) -> list[Path]:
    found = sorted(p.parent for p in Path(folder).glob("*/card.json"))
    if not found:
        raise InputError(
            f"{folder}: no model folders (*/card.json); import them with `landslide-batch import-model --all --out DIR`"
        )
    return found


def _imported_ensemble(folder: Path) -> Path | None:
    return p if (p := Path(folder) / "ensemble.yaml").is_file() else None


def _row(scores: dict, source: str, folders: Sequence[Path]) -> dict:
    """A table row: the evaluation's scores + where the model came from and what it is."""
    card = next((read_card(f) for f in folders if f.name == scores["model"].removesuffix(" +TTA")), None)
    return {
        "model": scores["model"],
        "source": source,
        "arch": card.arch if card else "ensemble",
        "encoder": (card.encoder or "-") if card else "-",
        **{k: scores[k] for k in ("threshold", "precision", "recall", "f1", "iou")},
        "study_f1": STUDY_F1.get(scores["model"], ""),
    }


def write_table(rows: list[dict], out: Path, val_text: str, quick: bool) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    head = ["model", "source", "arch", "encoder", "threshold", "precision", "recall", "f1", "iou", "study_f1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [
        "| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in head) + " |" for r in rows
    ]
    note = (
        "QUICK RUN: one epoch on a handful of patches; the numbers test the machinery, not the models.\n\n"
        if quick
        else ""
    )
    md = out / "table.md"
    md.write_text(
        f"# Landslide class, pixel-wise, on the validation split: {val_text}\n\n{note}"
        + "\n".join(lines)
        + "\n\nstudy_f1: the F1 the study reports for that model, where known. "
        "Published models may have been trained on patches of this validation split.\n"
    )
    cs = out / "table.csv"
    with open(cs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=head)
        w.writeheader()
        w.writerows(rows)
    return md, cs
