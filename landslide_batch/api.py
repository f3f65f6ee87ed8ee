"""A small Python API for notebooks: map a scene or a region in one call, and get back the output
folder, its run.json and an ``xarray.Dataset`` view of the probability map.

The calls run the very jobs ``landslide-batch run`` runs (same validation, same products, same
resume: calling again with the same settings returns the finished result at once) and raise the
same errors (:mod:`landslide_batch.errors`). See ``docs/python_api.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import job_from_dict
from .storage import location

if TYPE_CHECKING:
    import xarray as xr

Where = str | PathLike[str]


@dataclass(frozen=True)
class MappedResult:
    """What a mapping call returns: the output folder (a path, or the URI of an object-store
    prefix), its ``run.json`` and the probability map as a lazily read ``xarray.Dataset``
    (``probability``, ``uncertainty``, ``slope`` where the scene has one; nodata is NaN)."""

    out: Path | str
    manifest: dict[str, Any]
    dataset: xr.Dataset

    @property
    def threshold(self) -> float:
        return self.manifest["summary"]["threshold"]

    @property
    def mask(self) -> xr.DataArray:
        """The landslide mask as the job's ``mask.tif`` holds it: probability >= threshold (NaN:
        no data)."""
        p = self.dataset["probability"]
        return (p >= self.threshold).where(p.notnull())


def map_scene(
    scene: Where, models: Where | list[Where], out: Where, *, overwrite: bool = False, **settings
) -> MappedResult:
    """Map one scene (a GeoTIFF, L4S .h5 patch, Zarr store or STAC item; a path or URI) with one
    model folder or an equally weighted ensemble of several; ``settings``: any job key
    (``threshold``, ``min_area_m2``, ``polygon_format``, ``tile``, ``device`` ...)."""
    return _run({"scene": str(scene), **_models(models), "out": str(out), **settings}, overwrite)


def map_region(
    scenes: list[Where], aoi: Where, models: Where | list[Where], out: Where, *, overwrite: bool = False, **settings
) -> MappedResult:
    """Map a region: every scene of ``scenes`` merged onto one grid covering ``aoi`` (a GeoJSON or
    vector file, any CRS); ``out`` is a local folder. Calling again with more scenes maps only
    the new ones (the region job's cache)."""
    return _run(
        {"scenes": [str(s) for s in scenes], "aoi": str(aoi), **_models(models), "out": str(out), **settings}, overwrite
    )


def open_result(out: Where) -> MappedResult:
    """The result of a finished job in ``out`` (from the API, the CLI or the scheduler)."""
    from .errors import InputError
    from .outputs.manifest import read_manifest

    folder = location(str(out))
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("status") != "complete":
        raise InputError(f"{out} holds no finished job: expected a run.json with status 'complete'")
    return MappedResult(folder.path if folder.is_local else folder.uri, manifest, _dataset(folder, manifest))


def _models(models: Where | list[Where]) -> dict[str, list[str]]:
    return {"models": [str(m) for m in (models if isinstance(models, list) else [models])]}


def _run(job: dict, overwrite: bool) -> MappedResult:
    from .pipeline import run_job  # torch and the models load only when a job runs

    cfg = job_from_dict(job, Path.cwd(), "python api")
    run_job(cfg, overwrite=overwrite)
    return open_result(str(cfg.out))


def _dataset(folder, manifest: dict) -> xr.Dataset:
    import rioxarray  # noqa: F401  (registers ``.rio``: the dataset's CRS and transform)
    import xarray as xr

    store = folder / manifest["outputs"]["zarr"]
    ds = xr.open_zarr(store.path if folder.is_local else store.zarr_store(read_only=True))
    return ds.assign_attrs(threshold=manifest["summary"]["threshold"])
