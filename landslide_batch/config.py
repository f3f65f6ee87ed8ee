"""Validated job and ensemble configs, loaded from YAML (paths relative to the YAML file)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .ingest.inputs import SceneInputs
from .models.ensemble_config import EnsembleConfig, EnsembleMember
from .plan.limits import MAX_PIXELS
from .schema import PathOrUri, StrictModel
from .storage import is_uri, location, path_or_uri


class RaySettings(StrictModel):
    """Where a Ray job runs and what each predictor actor asks of the cluster. Resources are
    settings, not observations: an actor asks for its GPUs whether or not a GPU node exists yet,
    so an autoscaler sees the demand and adds one.

    The job's ``device`` on Ray: ``cuda`` -> GPU actors (``gpus_per_actor`` each); ``cpu`` -> CPU
    actors; ``auto`` -> GPU actors if ``gpus_per_actor`` is set or the cluster has a GPU when
    the job starts, else CPU actors. An autoscaling cluster whose GPU nodes are not up yet
    has no GPU at that moment: jobs for it say ``device: cuda``."""

    address: str | None = None  # None: join a running cluster if RAY_ADDRESS is set, else start locally
    #: Seconds to wait for the head at ``address`` to accept a connection (infer/ray_connect.py).
    connect_timeout_s: float = Field(30.0, gt=0, le=600, allow_inf_nan=False)
    #: Default: GPU actors, one per GPU in the cluster at the start (at least 1); CPU actors, 1.
    #: ``auto``: the actors follow the work, min(work, ``max_actors``), where the work is a scene
    #: job's stripes (its block rows, or columns) and a region job's scenes x the blocks of its
    #: grid (its AOI), counted before any scene is read (scenes from a STAC search: not known
    #: yet, so ``max_actors``). An autoscaling cluster then grows to that many GPU nodes for a
    #: large region and back to zero after it (the actors end with the job).
    #: Actors that never fit the cluster only leave their resource demand behind: their stripes
    #: go to the actors that run.
    num_actors: Annotated[int, Field(ge=1)] | Literal["auto"] | None = None
    #: The most actors ``num_actors: auto`` asks for: the GPU nodes a job may grow the cluster to.
    max_actors: int = Field(8, ge=1)
    #: GPUs each GPU actor reserves (default 1: actors never share a GPU); a fraction (0.5, 0.25)
    #: lets that many actors share one GPU.
    gpus_per_actor: float | None = Field(None, gt=0)
    #: CPUs each actor reserves; default: GPU actors 1, CPU actors a node's CPUs / num_actors.
    #: CPU actors run as many torch threads (unless ``threads`` is set).
    cpus_per_actor: float | None = Field(None, gt=0)
    #: Blocks read ahead of each actor by Ray tasks; default 2 for GPU actors, 0 for CPU actors
    #: (they read their own blocks: there reading is ~2 % of a block).
    read_tasks: int | None = Field(None, ge=0)

    @field_validator("gpus_per_actor")
    @classmethod
    def _whole_gpus_above_one(cls, v: float | None) -> float | None:
        if v is not None and v > 1 and v != int(v):
            raise ValueError(f"gpus_per_actor above 1 must be a whole number (Ray's rule), found {v}")
        return v


class StacSearch(StrictModel):
    """``stac_search:`` of a region job."""

    url: str  # the STAC API's root (its landing page), e.g. https://earth-search.aws.element84.com/v1
    collections: list[str] = Field(min_length=1)  # e.g. [sentinel-2-l2a]
    datetime: str | None = None  # RFC 3339 instant or interval, e.g. 2015-04-25/2015-06-30
    max_cloud_cover: float | None = Field(None, ge=0, le=100)  # eo:cloud_cover, percent
    max_items: int = Field(50, ge=1)
    #: A DEM collection on the same API (e.g. ``cop-dem-glo-30``): its tiles over each scene's
    #: footprint are that scene's ``inputs.dem``, mosaicked at ingest.
    dem_collection: str | None = None


def _as_list(v):
    """``scenes:`` may be one string (a glob or a STAC ItemCollection file) or a list."""
    return [v] if isinstance(v, (str, Path)) else v


class MapSettings(StrictModel):
    """What a map is made of, the same for a scene job and a region job: the models, the pixel
    size, how the grid is cut into tiles and blocks and blended, the inputs' settings, and the
    products' threshold, minimum object and format. (``resolved.map_identity`` hashes those that
    change the map.)"""

    ensemble: PathOrUri | None = None
    models: list[PathOrUri] = Field(default_factory=list)
    #: Pixel size (m) the models work at: every scene must have it (a region's grid has it).
    resolution: float = Field(10.0, gt=0, allow_inf_nan=False)
    tile: int = Field(128, ge=16)
    overlap: float = Field(0.5, ge=0, lt=1, allow_inf_nan=False)
    blend: Literal["mean", "cosine", "gaussian"] = "gaussian"
    block: int = Field(1024, ge=16)
    #: Test-time augmentation: every tile also predicted flipped and rotated by 90-degree steps
    #: (8 views), probabilities averaged; 8x the model work.
    tta: bool = False
    threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    min_area_m2: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_pixels: int = Field(4, ge=1)
    polygon_format: Literal["gpkg", "parquet", "fgb"] = "gpkg"  # GeoPackage, GeoParquet or FlatGeobuf
    nodata: float | None = None
    inputs: SceneInputs | None = None  # band files / STAC item / DEM / AOI settings, see docs/inputs.md
    #: Map a scene whose values are off by orders of magnitude from the models' training data
    #: (checks/units.py refuses it otherwise); recorded as a warning in run.json.
    accept_units_mismatch: bool = False

    @property
    def stride(self) -> int:
        return self.tile - int(round(self.tile * self.overlap))


class ExecutionSettings(StrictModel):
    """Where and how fast a job runs, the same for a scene job and a region job: none of it
    changes the map but the device's arithmetic (cpu / cuda), which the job's identity records."""

    executor: Literal["local", "ray"] = "local"
    batch_size: int | None = Field(None, ge=1)  # tiles per forward pass; default 16 on CPU, 64 on a GPU
    device: str = "auto"
    #: torch CPU threads: set by the CLI for a local job, by each Ray CPU actor for its own; the
    #: Python API leaves them to the caller (``torch.set_num_threads``).
    threads: int | None = Field(None, ge=1)
    #: Blocks read ahead of the model by the local executor (memory: one block window each).
    #: Default: 1 on a GPU, where reading is a large share of a block's time; 0 on CPU, where it
    #: is ~2 % and the second window is the largest part of what memory grows by with the scene.
    prefetch: int | None = Field(None, ge=0, le=4)
    #: Largest grid (height x width px) a job may have: a larger one is refused before anything
    #: runs (plan/limits.py), so a continent-sized AOI fails at once with the figure.
    max_pixels: int = Field(MAX_PIXELS, ge=1)
    ray: RaySettings = Field(default_factory=RaySettings)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and not (v == "cpu" or v.startswith("cuda")):
            raise ValueError(f"device must be auto, cpu or cuda[:N], found {v!r}")
        return v


class JobConfig(MapSettings, ExecutionSettings):
    """A scene job (``scene``) or a region job (``scenes`` / ``stac_search`` with ``aoi``): what
    it maps and where its map goes, with the map and execution settings both kinds share."""

    scene: PathOrUri | None = None  # one scene; or `scenes` + `aoi` for a region job
    #: A region job (README, "Region jobs"): scenes (paths / URIs, local globs, STAC
    #: ItemCollection files) mapped one by one and merged onto one grid covering ``aoi``.
    scenes: Annotated[list[str] | None, BeforeValidator(_as_list)] = None
    aoi: PathOrUri | None = None  # the region: a vector file (GeoJSON, GeoPackage...) in any CRS
    crs: str | None = None  # the region grid's CRS; default: the UTM zone of the AOI's centroid
    #: ``module:function`` signing STAC asset hrefs of a region's items (e.g. Planetary Computer's
    #: ``planetary_computer:sign``); default: hrefs are used as they are.
    href_signer: str | None = None
    #: A region's scenes from a STAC API search over the AOI (with or besides ``scenes``).
    stac_search: StacSearch | None = None
    #: Pre-event reference of a region job (README, "Event maps"): scenes in the forms of
    #: ``scenes``, mapped once by the same ensemble into ``OUT/pre_event``; the mask and polygons
    #: then follow ``new_probability``.
    pre_scenes: Annotated[list[str] | None, BeforeValidator(_as_list)] = None
    #: ``auto``: the pre-event scene is picked from ``stac_search``'s API in the ``pre_event_days``
    #: before ``event_date`` (region/pre_event.py has the rule); instead of ``pre_scenes``.
    pre_event: Literal["auto"] | None = None
    pre_event_days: int = Field(120, ge=1)
    #: The event's date: pre-event scenes must be dated before it, post-event scenes on or after.
    event_date: date | None = None
    #: ``new_probability`` weighs by the NDVI loss since the pre-event map; false leaves it out.
    change_ndvi: bool = True
    out: PathOrUri

    @field_validator("out")
    @classmethod
    def _out(cls, v: Path | str) -> Path | str:
        if not location(v).writable:
            raise ValueError(
                f"out {v}: http(s):// locations are read-only; write to a local folder or "
                "an object store (s3://, gs://, az://)"
            )
        return v

    @model_validator(mode="after")
    def _check(self) -> JobConfig:
        if self.stac_search is not None and self.scenes is None:
            self.scenes = []  # a region job whose scenes all come from the search
        if (self.scene is None) == (self.scenes is None):
            raise ValueError(
                "give exactly one of 'scene' (one scene) or 'scenes' / 'stac_search' (a region job, with 'aoi')"
            )
        if self.scenes is not None and self.aoi is None:
            raise ValueError("a region job ('scenes' / 'stac_search') needs 'aoi': the area its map covers")
        if self.pre_scenes is not None and self.scenes is None:
            raise ValueError("'pre_scenes' belong to region jobs: give 'scenes' (or 'stac_search') and 'aoi'")
        if self.pre_event == "auto" and (self.pre_scenes or self.stac_search is None or self.event_date is None):
            raise ValueError(
                "pre_event: auto picks the pre-event scene from the job's stac_search before event_date: "
                "give 'stac_search' and 'event_date', and no 'pre_scenes'"
            )
        if self.scenes is None and (self.aoi is not None or self.crs is not None):
            raise ValueError(
                "'aoi' and 'crs' belong to region jobs: give 'scenes' (or set inputs.aoi to clip one scene)"
            )
        if (self.ensemble is None) == (not self.models):
            raise ValueError("give exactly one of 'ensemble' (an ensemble YAML) or 'models' (model folders)")
        stride = self.stride
        if stride < 1:
            raise ValueError(f"overlap {self.overlap} leaves no stride for tile {self.tile}")
        if self.block % stride:
            raise ValueError(
                f"block ({self.block}) must be a multiple of the tile stride ({stride} = "
                f"tile {self.tile} - overlap {self.tile - stride} px)"
            )
        if self.device == "cpu" and self.ray.gpus_per_actor:
            raise ValueError(f"ray.gpus_per_actor ({self.ray.gpus_per_actor}) asks for GPUs but device is cpu")
        return self


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


def rebase_path(base: Path | str, p: Path | str | None) -> Path | str | None:
    """A relative local path joined to ``base`` (a folder or a URI prefix); absolute paths and
    URIs unchanged."""
    if p is None:
        return None
    if is_uri(p):
        return str(p)
    p = Path(p).expanduser()
    if p.is_absolute():
        return p
    return location(base).join(p.as_posix()).uri if is_uri(base) else Path(base) / p


def load_ensemble(path: str | Path) -> EnsembleConfig:
    """An ensemble YAML (a local path or a URI); member folders are relative to it."""
    path = path_or_uri(path)
    if isinstance(path, str):
        where = location(path)
        from .storage import storage_errors

        with storage_errors(where, "ensemble"):
            text = where.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        base: Path | str = where.parent.uri
    else:
        data, base = load_yaml(path), path.parent
    cfg = validate_model(EnsembleConfig, data, str(path))
    for m in cfg.members:
        m.model = rebase_path(base, m.model)
    return cfg


def job_from_dict(data: dict, base: Path = Path("."), where: str = "job") -> JobConfig:
    cfg = validate_model(JobConfig, data, where)
    for field in ("scene", "out", "ensemble", "aoi"):
        setattr(cfg, field, rebase_path(base, getattr(cfg, field)))
    if cfg.scenes is not None:
        cfg.scenes = [str(rebase_path(base, s)) for s in cfg.scenes]
    if cfg.pre_scenes is not None:
        cfg.pre_scenes = [str(rebase_path(base, s)) for s in cfg.pre_scenes]
    cfg.models = [rebase_path(base, m) for m in cfg.models]
    if cfg.inputs is not None:
        cfg.inputs = cfg.inputs.rebase(base)
    return cfg


def merge_deep(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` laid over it key by key, nested mappings merged (``--num-actors``
    sets ``ray.num_actors`` and keeps the file's ``ray.address``); None overrides nothing."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_deep(merged[key], value)
        elif value is not None:
            merged[key] = value
    return merged


def load_job(path: str | Path, overrides: dict | None = None) -> JobConfig:
    """Load a job YAML; ``overrides`` (e.g. CLI flags, paths relative to the cwd) replace its keys."""
    path = Path(path)
    data = load_yaml(path)
    cfg = job_from_dict(data, path.parent, str(path))
    if overrides:
        merged = merge_deep(cfg.model_dump(), overrides)
        cfg = validate_model(JobConfig, merged, f"{path} with command-line overrides")
    return cfg


def ensemble_members(cfg: JobConfig) -> EnsembleConfig:
    if cfg.ensemble is not None:
        return load_ensemble(cfg.ensemble)
    return EnsembleConfig(members=[EnsembleMember(model=m) for m in cfg.models])
