"""Validated job and ensemble configs, loaded from YAML (paths relative to the YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .ingest.inputs import SceneInputs
from .schema import StrictModel


class EnsembleMember(StrictModel):
    model: Path
    weight: float = Field(1.0, gt=0)


class EnsembleConfig(StrictModel):
    members: list[EnsembleMember] = Field(min_length=1)
    #: Probability threshold for the binary mask; default: members' card thresholds, weighted.
    threshold: float | None = Field(None, ge=0, le=1)

    def decision_threshold(self, member_thresholds: list[float]) -> float:
        """``threshold``, else the members' (tuned) thresholds, weighted like their probabilities."""
        if self.threshold is not None:
            return self.threshold
        weights = [m.weight for m in self.members]
        return sum(w * t for w, t in zip(weights, member_thresholds)) / sum(weights)


class RaySettings(StrictModel):
    address: str | None = None  # None: join a running cluster if RAY_ADDRESS is set, else start locally
    num_actors: int | None = Field(None, ge=1)  # default: one per GPU, else 1
    read_tasks: int = Field(2, ge=1)  # feeding GPU actors; CPU actors read their own blocks


class JobConfig(StrictModel):
    scene: Path
    out: Path
    ensemble: Path | None = None
    models: list[Path] = Field(default_factory=list)
    tile: int = Field(128, ge=16)
    overlap: float = Field(0.5, ge=0, lt=1)
    blend: Literal["mean", "cosine", "gaussian"] = "gaussian"
    block: int = Field(1024, ge=16)
    executor: Literal["local", "ray"] = "local"
    batch_size: int | None = Field(None, ge=1)  # tiles per forward pass; default 16 on CPU, 64 on a GPU
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    #: Blocks read ahead of the model by the local executor (memory: one block window each).
    #: Default: 1 on a GPU, where reading is a large share of a block's time; 0 on CPU, where it
    #: is ~2 % and the second window is the largest part of what memory grows by with the scene.
    prefetch: int | None = Field(None, ge=0, le=4)
    threshold: float | None = Field(None, ge=0, le=1)
    min_area_m2: float = Field(0.0, ge=0)
    min_pixels: int = Field(4, ge=1)
    nodata: float | None = None
    inputs: SceneInputs | None = None  # band files / STAC item / DEM / AOI settings, see docs/inputs.md
    ray: RaySettings = Field(default_factory=RaySettings)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and not (v == "cpu" or v.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], found {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "JobConfig":
        if (self.ensemble is None) == (not self.models):
            raise ValueError("give exactly one of 'ensemble' (an ensemble YAML) or 'models' (model folders)")
        stride = self.stride
        if stride < 1:
            raise ValueError(f"overlap {self.overlap} leaves no stride for tile {self.tile}")
        if self.block % stride:
            raise ValueError(f"block ({self.block}) must be a multiple of the tile stride ({stride} = "
                             f"tile {self.tile} - overlap {self.tile - stride} px)")
        return self

    @property
    def stride(self) -> int:
        return self.tile - int(round(self.tile * self.overlap))


def load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, found {type(data).__name__}")
    return data


def validate_model(cls, data: dict, where: str):
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: invalid {cls.__name__}:\n" + "\n".join(lines)) from None


def rebase_path(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = Path(p).expanduser()
    return p if p.is_absolute() or "://" in str(p) else base / p


def load_ensemble(path: str | Path) -> EnsembleConfig:
    path = Path(path)
    cfg = validate_model(EnsembleConfig, load_yaml(path), str(path))
    for m in cfg.members:
        m.model = rebase_path(path.parent, m.model)
    return cfg


def job_from_dict(data: dict, base: Path = Path("."), where: str = "job") -> JobConfig:
    cfg = validate_model(JobConfig, data, where)
    for field in ("scene", "out", "ensemble"):
        setattr(cfg, field, rebase_path(base, getattr(cfg, field)))
    cfg.models = [rebase_path(base, m) for m in cfg.models]
    if cfg.inputs is not None:
        cfg.inputs = cfg.inputs.rebase(base)
    return cfg


def load_job(path: str | Path, overrides: dict | None = None) -> JobConfig:
    """Load a job YAML; ``overrides`` (e.g. CLI flags, paths relative to the cwd) replace its keys."""
    path = Path(path)
    data = load_yaml(path)
    cfg = job_from_dict(data, path.parent, str(path))
    if overrides:
        merged = cfg.model_dump()
        merged.update({k: v for k, v in overrides.items() if v is not None})
        cfg = validate_model(JobConfig, merged, f"{path} with command-line overrides")
    return cfg


def ensemble_members(cfg: JobConfig) -> EnsembleConfig:
    if cfg.ensemble is not None:
        return load_ensemble(cfg.ensemble)
    return EnsembleConfig(members=[EnsembleMember(model=m) for m in cfg.models])
