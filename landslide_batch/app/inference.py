"""Mapping an uploaded patch with one model or an ensemble, through the one ``EnsemblePredictor``
a region job uses (one model is an ensemble of one member), never a copy of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checks.results import result_warnings
from ..checks.units import sample_scene, units_guard
from ..config import EnsembleConfig, EnsembleMember
from ..infer.predictor import EnsemblePredictor
from .model_folders import ModelEntry
from .uploads import Patch

#: A region job's defaults (128 px tiles, 50 % overlap), so a patch maps as it would in a region.
TILE, STRIDE = 128, 64


def load_predictor(*models: Path, tta: bool = False) -> EnsemblePredictor:
    """The models as one equally weighted ensemble, as ``run --model A --model B`` builds it (one
    model: an ensemble of one member): the same inference path as a region job."""
    return EnsemblePredictor(
        EnsembleConfig(members=[EnsembleMember(model=m) for m in models]),
        tile=TILE,
        stride=STRIDE,
        blend="gaussian",
        device="auto",
        tta=tta,
    )


@dataclass
class Prediction:
    models: tuple[ModelEntry, ...]  # one model, or an ensemble's members
    probability: np.ndarray  # float32 (H, W), NaN where the input is invalid
    threshold: float

    @property
    def mask(self) -> np.ndarray:
        """bool (H, W); invalid pixels are never landslide."""
        return np.nan_to_num(self.probability, nan=-1.0) >= self.threshold

    @property
    def label(self) -> str:
        return self.models[0].label if len(self.models) == 1 else f"Ensemble (mean of {len(self.models)} models)"

    @property
    def stem(self) -> str:
        """What its downloads are named after."""
        return self.models[0].path.name if len(self.models) == 1 else "ensemble"

    @property
    def trained(self) -> bool:
        return all(m.card.trained for m in self.models)


def padded_size(n: int, tile: int = TILE, stride: int = STRIDE) -> int:
    """Smallest ``tile + k * stride >= n``: the window sizes the predictor covers exactly."""
    return tile + max(0, -(-(n - tile) // stride)) * stride


def predict(predictor: EnsemblePredictor, models: ModelEntry | Sequence[ModelEntry], patch: Patch) -> Prediction:
    """Reflect-pad the patch up to a size the tile grid covers, predict, crop back.
    ``models``: what ``predictor`` was loaded with (:func:`load_predictor`), in its order."""
    h, w = patch.valid.shape
    pad = (
        (0, padded_size(h, predictor.tile, predictor.stride) - h),
        (0, padded_size(w, predictor.tile, predictor.stride) - w),
    )
    prob, _ = predictor.predict_window(
        np.pad(patch.bands, ((0, 0), *pad), mode="reflect"), np.pad(patch.valid, pad, mode="reflect")
    )
    prob = np.where(patch.valid, prob[:h, :w], np.float32(np.nan)).astype(np.float32)
    return Prediction((models,) if isinstance(models, ModelEntry) else tuple(models), prob, predictor.threshold)


@dataclass(frozen=True)
class _PatchScene:
    """The reads the units guard makes of a scene store, served from a patch in memory."""

    patch: Patch

    @property
    def shape(self) -> tuple[int, int]:
        return self.patch.valid.shape

    @property
    def attrs(self) -> dict:
        return {}  # nothing filled by an ingest rule: the patch is used as uploaded

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        return self.patch.bands[:, y0:y1, x0:x1], self.patch.valid[y0:y1, x0:x1]


def units_warnings(patch: Patch, models: list[ModelEntry], accept: bool) -> list[str]:
    """The CLI's units guard on the patch as uploaded (the page feeds it to the models as it is):
    raises ``UnitsMismatchError`` for a patch in other units than a model's, unless ``accept``
    (then a warning); -> the warnings."""
    _, warnings = units_guard(sample_scene(_PatchScene(patch)), [m.card for m in models], accept)
    return warnings


def result_check(pred: Prediction, patch: Patch) -> list[str]:
    """The CLI's check of a finished map on one prediction: an implausible landslide share."""
    summary = {"valid_pixels": int(patch.valid.sum()), "landslide_pixels": int(pred.mask.sum())}
    return result_warnings({**summary, "threshold": pred.threshold})
