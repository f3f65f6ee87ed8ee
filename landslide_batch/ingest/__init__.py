"""Ingest: GeoTIFF / L4S .h5 / Zarr / Sentinel-2 band files / STAC item -> a scene store.

``scene.py`` describes the store. Inputs, by what ``src`` is:

- a scene store: opened as it is;
- a Zarr store (folder with ``zarr.json`` / ``.zgroup``): ``zarr_store.py``;
- any other folder (a SAFE product, a folder of band GeoTIFFs / JP2s): assembled from
  the band files, see ``sentinel2.py`` and ``assemble.py``;
- a ``.json`` file: a STAC item, assembled from its assets (``stac.py``);
- ``.h5``: an L4S patch (``h5patch.py``);
- any other raster: a 14-band L4S-ordered stack (``geotiff.py``; with ``inputs``, assembled
  so that AOI, SCL and DEM settings apply).

``inputs`` (:class:`SceneInputs`, the job's ``inputs:``) sets the band mapping, DEM/slope,
SCL, AOI, reflectance scaling and the B10 rule (``b10.py``); ``docs/inputs.md`` documents them.
Ingest imports neither the job config nor the models: what it needs of them (the models' B10
means) comes in as plain arguments of :func:`ingest_job`.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import InputError
from ..storage import Where, location, path_or_uri, storage_errors
from .b10 import ModelB10, resolve_model_mean
from .inputs import SceneInputs

if TYPE_CHECKING:
    from .scene import Scene, SceneInfo, SceneWriter, reflect_index  # noqa: F401

_SCENE_NAMES = ("SCENE_FORMAT", "Scene", "SceneInfo", "SceneWriter", "reflect_index")


def __getattr__(name: str):
    # The scene store (zarr, rasterio) loads on first use, so that importing the job config
    # (which holds SceneInputs) stays light.
    if name in _SCENE_NAMES:
        from . import scene

        return getattr(scene, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)

__all__ = [
    "ModelB10",
    "Scene",
    "SceneInfo",
    "SceneInputs",
    "SceneWriter",
    "ingest",
    "ingest_job",
    "is_scene_store",
    "reflect_index",
]


def is_scene_store(path: Path | str) -> bool:
    from .scene import SCENE_FORMAT

    meta = location(path) / "zarr.json"
    return meta.is_file() and SCENE_FORMAT in meta.read_bytes().decode(errors="replace")


def _is_zarr(path: Path | str) -> bool:
    return any((location(path) / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray", ".zmetadata"))


def ingest(
    src: Where,
    dest: Where,
    *,
    chunk: int = 512,
    nodata: float | None = None,
    inputs: SceneInputs | None = None,
    notes: list[str] | None = None,
    b10_note: str | None = None,
) -> Scene:
    """Open ``src`` as a scene, converting into ``dest`` when it is not a scene store already.

    ``inputs`` applies to band-file folders, STAC items and 14-band stacks (for folders and
    STAC items the defaults apply when it is None). ``notes`` are warnings recorded with the
    scene's own. A local store is built under a temporary name and renamed when complete; one
    on object storage (no rename there) is written in place, its ``complete`` flag set last.

    ``src`` and ``dest`` may be URIs: a remote ``src`` is a raster GDAL reads (GeoTIFF / COG, a
    14-band stack with or without ``inputs``), a Zarr store or a scene store.
    """
    from .scene import Scene

    src, dest = path_or_uri(src), path_or_uri(dest)
    kind = _source_kind(src, inputs)
    if kind == "scene":
        return Scene(src)
    tmp = _build_target(dest)
    try:
        writer = _convert(kind, src, tmp, chunk=chunk, nodata=nodata, inputs=inputs, notes=notes, b10_note=b10_note)
        writer.finish()
    except BaseException:
        location(tmp).rm()
        raise
    if isinstance(tmp, Path) and tmp != dest:
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return Scene(dest)


SourceKind = Literal["scene", "zarr", "folder", "stac", "h5", "stack", "raster"]


def _source_kind(src: Path | str, inputs: SceneInputs | None) -> SourceKind:
    """What ``src`` is: a scene store, a Zarr store, a band-file folder, a STAC item, an L4S patch,
    or a raster (a ``stack`` when ``inputs`` apply to it). InputError for a missing source, and
    for one that ``inputs`` or object storage does not fit."""
    where = location(src)
    with storage_errors(where, "scene"):
        exists, is_dir = where.exists(), where.is_dir()
    if not exists:
        raise InputError(f"scene {src} does not exist")
    if is_dir and is_scene_store(src):
        if inputs is not None:
            raise InputError(
                f"{src} is a scene store already; 'inputs' (band mapping, AOI, SCL...) applies only "
                "to raw inputs: point 'scene' at the band files, STAC item or stack instead"
            )
        return "scene"
    suffix = Path(where.name).suffix.lower()
    zarr_src, h5 = is_dir and _is_zarr(src), suffix in (".h5", ".hdf5")
    if inputs is not None and (h5 or zarr_src):
        raise InputError(
            f"{src}: 'inputs' applies to band-file folders, STAC items and 14-band rasters, "
            "not to L4S .h5 patches or Zarr stores"
        )
    if where.is_remote and ((is_dir and not zarr_src) or h5):
        raise InputError(
            f"scene {src}: band-file folders and .h5 patches are read from local paths only; on "
            "object storage give a 14-band raster (GeoTIFF / COG), a STAC item or a Zarr store"
        )
    if zarr_src:
        return "zarr"
    if is_dir:
        return "folder"
    if suffix == ".json":
        return "stac"
    if h5:
        return "h5"
    return "stack" if inputs is not None else "raster"


def _build_target(dest: Path | str) -> Path | str:
    """Where the store is built, emptied first: ``dest`` itself on object storage (no rename
    there), else a temporary name beside it."""
    if isinstance(dest, str):
        location(dest).rm()
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _convert(
    kind: SourceKind,
    src: Path | str,
    tmp: Path | str,
    *,
    chunk: int,
    nodata: float | None,
    inputs: SceneInputs | None,
    notes: list[str] | None,
    b10_note: str | None,
) -> SceneWriter:
    """Write the scene store of ``src`` (of ``kind``, not a scene store) at ``tmp``, unfinished."""
    if kind == "zarr":
        from .zarr_store import ingest_zarr

        return ingest_zarr(src, tmp, chunk=chunk, nodata=nodata)
    if kind == "h5":
        from .h5patch import ingest_h5

        return ingest_h5(Path(src), tmp, chunk=chunk, nodata=nodata)  # local: remote patches are refused
    if kind == "raster":
        from .geotiff import ingest_geotiff

        return ingest_geotiff(src, tmp, chunk=chunk, nodata=nodata)
    from .assemble import assemble
    from .sentinel2 import plan_folder, plan_stack
    from .stac import plan_stac

    inputs = inputs or SceneInputs()  # folders and STAC items: the defaults; a stack has its inputs
    if kind == "folder":
        plan = plan_folder(Path(src), inputs)  # local: remote folders are refused
    elif kind == "stac":
        plan = plan_stac(src, inputs)
    else:
        plan = plan_stack(src, inputs)
    return assemble(plan, tmp, chunk=chunk, inputs=inputs, nodata=nodata, notes=notes, b10_note=b10_note)


def ingest_job(
    scene: Where,
    dest: Where,
    *,
    chunk: int = 512,
    nodata: float | None = None,
    inputs: SceneInputs | None = None,
    b10_means: Sequence[ModelB10] | None = None,
    stop: threading.Event | None = None,
) -> Scene:
    """A job's ingest: :func:`ingest`, resuming from a finished store at ``dest`` (left by an
    interrupted attempt of the same job). Once ``stop`` is set, the ingest ends at its next window
    with ``scene.IngestStopped`` and leaves no store.

    ``b10_means``: the B10 training means of the job's models that use B10, which
    ``inputs.b10: model_mean`` fills B10 with (the caller reads them from the model cards).
    ``inputs.units: auto`` must be resolved by the caller (from the cards) before this.
    """
    from .scene import Scene, stoppable

    dest = path_or_uri(dest)
    with stoppable(stop):
        if location(dest).exists():
            try:
                return Scene(dest)  # finished by an interrupted attempt of the same job: resume from it
            except InputError:
                location(dest).rm()
        if inputs is None:
            return ingest(scene, dest, chunk=chunk, nodata=nodata)
        inputs, b10_note, notes = resolve_model_mean(inputs, b10_means)
        return ingest(scene, dest, chunk=chunk, nodata=nodata, inputs=inputs, notes=notes, b10_note=b10_note)
