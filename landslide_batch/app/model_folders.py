"""Model folders the page offers: found under the folder the server was started with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..models.card import CARD_FILE, WEIGHTS_FILE, ModelCard, read_card
from ..storage.contained import lies_inside
from . import MODELS_ENV


def default_models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV, "models"))


@dataclass
class ModelEntry:
    path: Path
    card: ModelCard
    #: Modification times of card and weights: a changed folder must not hit a stale cache.
    stamp: tuple[int, int]

    @property
    def label(self) -> str:
        return self.path.name if self.path.name == self.card.name else f"{self.path.name} ({self.card.name})"


def find_models(root: Path) -> tuple[list[ModelEntry], list[str]]:
    """Model folders (a ``card.json`` inside) in ``root`` and up to two levels below.

    -> (models, problems): a folder with an unreadable card is reported, not fatal, so one
    broken folder does not hide the others.
    """
    models, problems = [], []
    cards = [root / CARD_FILE, *root.glob(f"*/{CARD_FILE}"), *root.glob(f"*/*/{CARD_FILE}")]
    for card_path in sorted(p for p in cards if p.is_file()):
        folder = card_path.parent
        weights = folder / WEIGHTS_FILE
        if not all(lies_inside(root, p) for p in (card_path, weights)):  # symlinked out of ``root``
            problems.append(f"{folder.relative_to(root)}: links outside the models folder; not offered")
            continue
        try:
            card = read_card(folder)
        except ModelError as exc:
            problems.append(str(exc))
            continue
        stamp = (card_path.stat().st_mtime_ns, weights.stat().st_mtime_ns if weights.exists() else 0)
        models.append(ModelEntry(folder, card, stamp))
    return models, problems
