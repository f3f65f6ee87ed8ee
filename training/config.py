"""Typed training config (YAML): which zoo model, which data, how to train it.

Paths in a YAML file are relative to that file (as for job configs); command-line
overrides are relative to the working directory. Data, ``out`` and ``run_dir`` may also be
object-store URIs (``s3://bucket/l4s/train``): kept as strings, never turned into paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from landslide_batch.bands import resolve_features
from landslide_batch.config import StrictModel, load_yaml, validate_model
from landslide_batch.models.registry import MODEL_ZOO
from landslide_batch.storage import Location, location, path_or_uri

PATH_FIELDS = ("train_data", "val_data", "out", "run_dir")

#: A local path (``Path``) or an object-store URI (``str``).
PathOrUri = Annotated[Path | str, BeforeValidator(path_or_uri)]


class TrainConfig(StrictModel):
    model: str  # a MODEL_ZOO name: architecture, encoder and default features
    features: str | list[str] | None = None  # override of the zoo's feature set
    train_data: PathOrUri  # L4S folder: img/ + mask/ (or images/ + masks/)
    val_data: PathOrUri
    out: PathOrUri  # the model folder to write
    #: Ray Train storage for checkpoints; a rerun with the same ``out`` and ``run_dir`` resumes.
    run_dir: PathOrUri | None = None

    epochs: int = Field(50, ge=1)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap for smoke runs and timing
    batch_size: int = Field(16, ge=1)  # per worker
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "onecycle"] = "onecycle"
    loss: Literal["bce", "dice", "bce_dice", "focal"] = "bce_dice"
    bce_weight: float = Field(0.5, ge=0, le=1)  # bce_dice = w * BCE + (1 - w) * Dice
    pos_weight: float | None = Field(None, gt=0)  # BCE weight of landslide pixels (class imbalance)
    focal_alpha: float | None = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    augment: bool = True  # random flips and 90-degree rotations
    patience: int | None = Field(10, ge=1)  # epochs without a better validation F1 before stopping
    threshold_bins: int = Field(100, ge=2)  # threshold sweep resolution on the validation split

    num_workers: int = Field(1, ge=1)  # Ray Train workers (DDP processes)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)  # also each worker's torch thread count
    loader_workers: int = Field(0, ge=0)  # DataLoader processes per Ray Train worker
    seed: int = 0

    @field_validator("model")
    @classmethod
    def _zoo(cls, v: str) -> str:
        if v not in MODEL_ZOO:
            raise ValueError(f"unknown model {v!r}; the zoo has {sorted(MODEL_ZOO)}")
        return v

    @field_validator("features")
    @classmethod
    def _features(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v is not None:
            resolve_features(v)
        return v

    @property
    def feature_names(self) -> list[str]:
        return list(resolve_features(self.features or MODEL_ZOO[self.model].features))

    @property
    def storage(self) -> Location:
        """Ray Train storage: ``run_dir``, else ``.train_runs`` next to ``out`` (local: absolute, as Ray requires)."""
        return location(self.run_dir) if self.run_dir is not None else location(self.out).parent / ".train_runs"


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a training YAML; ``overrides`` (CLI flags; ``None`` values ignored) replace its keys."""
    path = Path(path)
    data = load_yaml(path)
    for key in PATH_FIELDS:
        if data.get(key) is not None:
            data[key] = str(location(str(data[key]), base=path.parent))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_model(TrainConfig, data, str(path) + (" with command-line overrides" if overrides else ""))
