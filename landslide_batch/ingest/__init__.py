"""Ingest: GeoTIFF / L4S .h5 / Zarr -> a scene store (see ``scene.py`` for the layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import InputError
from .scene import SCENE_FORMAT, Scene, SceneInfo, SceneWriter, reflect_index

__all__ = ["Scene", "SceneInfo", "SceneWriter", "ingest", "is_scene_store", "reflect_index"]


def is_scene_store(path: Path) -> bool:
    meta = path / "zarr.json"
    return meta.is_file() and SCENE_FORMAT in meta.read_text(errors="replace")


def ingest(src: str | Path, dest: str | Path, *, chunk: int = 512, nodata: float | None = None) -> Scene:
    """Open ``src`` as a scene, converting into ``dest`` when it is not a scene store already.

    The store is built under a temporary name and renamed when complete.
    """
    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise InputError(f"scene {src} does not exist")
    if src.is_dir() and is_scene_store(src):
        return Scene(src)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    suffix = src.suffix.lower()
    try:
        if src.is_dir():
            from .zarr_store import ingest_zarr

            writer = ingest_zarr(src, tmp, chunk=chunk, nodata=nodata)
        elif suffix in (".h5", ".hdf5"):
            from .h5patch import ingest_h5

            writer = ingest_h5(src, tmp, chunk=chunk, nodata=nodata)
        else:
            from .geotiff import ingest_geotiff

            writer = ingest_geotiff(src, tmp, chunk=chunk, nodata=nodata)
        writer.finish()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return Scene(dest)


def ingest_job(cfg, dest: Path, chunk: int) -> Scene:
    """The scene a job maps (``cfg`` is a ``JobConfig``), stored at ``dest`` unless it is a store already."""
    dest = Path(dest)
    if dest.exists():
        try:
            return Scene(dest)  # finished by an earlier attempt of the same job
        except InputError:
            shutil.rmtree(dest)
    return ingest(cfg.scene, dest, chunk=chunk, nodata=cfg.nodata)
