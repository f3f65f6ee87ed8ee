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
SCL, AOI, reflectance scaling and the B10 rule; ``docs/inputs.md`` documents them.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..storage import location, path_or_uri, storage_errors
from .inputs import SceneInputs

if TYPE_CHECKING:
    from ..config import JobConfig
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
    src: str | Path,
    dest: str | Path,
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
        return Scene(src)
    suffix = Path(where.name).suffix.lower()
    zarr_src = is_dir and _is_zarr(src)
    if inputs is not None and (suffix in (".h5", ".hdf5") or zarr_src):
        raise InputError(
            f"{src}: 'inputs' applies to band-file folders, STAC items and 14-band rasters, "
            "not to L4S .h5 patches or Zarr stores"
        )
    if where.is_remote and ((is_dir and not zarr_src) or suffix in (".h5", ".hdf5")):
        raise InputError(
            f"scene {src}: band-file folders and .h5 patches are read from local paths only; on "
            "object storage give a 14-band raster (GeoTIFF / COG), a STAC item or a Zarr store"
        )
    if isinstance(dest, str):  # object storage: written in place
        tmp = dest
        location(dest).rm()
    else:
        tmp = dest.with_name(dest.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        if zarr_src:
            from .zarr_store import ingest_zarr

            writer = ingest_zarr(src, tmp, chunk=chunk, nodata=nodata)
        elif is_dir or suffix == ".json":
            from .assemble import assemble

            inputs = inputs or SceneInputs()
            if is_dir:
                from .sentinel2 import plan_folder

                plan = plan_folder(src, inputs)
            else:
                from .stac import plan_stac

                plan = plan_stac(src, inputs)
            writer = assemble(plan, tmp, chunk=chunk, inputs=inputs, nodata=nodata, notes=notes, b10_note=b10_note)
        elif suffix in (".h5", ".hdf5"):
            from .h5patch import ingest_h5

            writer = ingest_h5(src, tmp, chunk=chunk, nodata=nodata)
        elif inputs is not None:
            from .assemble import assemble
            from .sentinel2 import plan_stack

            writer = assemble(
                plan_stack(src, inputs), tmp, chunk=chunk, inputs=inputs, nodata=nodata, notes=notes, b10_note=b10_note
            )
        else:
            from .geotiff import ingest_geotiff

            writer = ingest_geotiff(src, tmp, chunk=chunk, nodata=nodata)
        writer.finish()
    except BaseException:
        location(tmp).rm()
        raise
    if tmp != dest:
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return Scene(dest)


def ingest_job(cfg: JobConfig, dest: str | Path, chunk: int = 512) -> Scene:
    """The pipeline's ingest: ``cfg.scene`` (+ ``cfg.inputs``) -> the scene store at ``dest``.

    Without ``inputs`` this is ``ingest(cfg.scene, dest, chunk=chunk, nodata=cfg.nodata)``.
    With ``inputs.b10 == 'model_mean'`` the job's model cards give the B10 fill value.
    """
    from .scene import Scene

    dest = path_or_uri(dest)
    if location(dest).exists():
        try:
            return Scene(dest)  # finished by an interrupted attempt of the same job: resume from it
        except InputError:
            location(dest).rm()
    inputs = cfg.inputs
    if inputs is None:
        return ingest(cfg.scene, dest, chunk=chunk, nodata=cfg.nodata)
    notes: list[str] = []
    b10_note = None
    if inputs.b10 == "model_mean":
        value, b10_note, notes = _b10_model_mean(cfg)
        inputs = inputs.model_copy(update={"b10": "constant", "b10_value": value})
    # Units: ``inputs.units: auto`` was resolved by the pipeline from the cards; whether the scene
    # then matches its models is the units guard's business (``checks/units.py``), after ingest.
    return ingest(cfg.scene, dest, chunk=chunk, nodata=cfg.nodata, inputs=inputs, notes=notes, b10_note=b10_note)


def _b10_model_mean(cfg: JobConfig) -> tuple[float, str, list[str]]:
    """Weighted mean of the B10 normalisation means of the job's models that use B10."""
    from ..bands import resolve_features
    from ..config import ensemble_members
    from ..models.card import read_card

    values, weights, names = [], [], []
    for member in ensemble_members(cfg).members:
        card = read_card(member.model)
        features = list(resolve_features(card.features))
        if "B10" in features:
            values.append(card.normalization.mean[features.index("B10")])
            weights.append(member.weight)
            names.append(card.name)
    if not values:
        return 0.0, "zero-filled (inputs.b10 = 'model_mean', but no model of the job uses B10)", []
    value = sum(v * w for v, w in zip(values, weights)) / sum(weights)
    notes = []
    if max(values) - min(values) > 1e-6 * max(1.0, abs(value)):
        notes.append(
            f"B10 training means differ between models ({dict(zip(names, values))}); "
            f"B10 is filled with their weighted mean {value:.6g}"
        )
    return value, f"filled with {value:.6g}, the models' B10 training mean (inputs.b10 = 'model_mean')", notes
