"""A Landslide4Sense ``image_N.h5`` patch (dataset ``img``, H x W x 14) -> arrays / scene store."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np

from ..bands import L4S_BANDS, N_BANDS
from ..errors import InputError
from .scene import SceneWriter


def _read_dataset(source: str | Path | BinaryIO, dataset: str, path: str) -> np.ndarray:
    """``source``: a local path or an open binary file (e.g. an fsspec file on object storage);
    ``path`` names it in errors."""
    try:
        with h5py.File(source, "r") as f:
            if dataset not in f:
                raise InputError(f"{path}: HDF5 file has no dataset {dataset!r} (found {sorted(f.keys())})")
            arr = np.asarray(f[dataset][()])
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file (corrupt, truncated or empty): {exc}") from None
    return arr


def read_l4s_h5(source: str | Path | BinaryIO, dataset: str = "img", *, name: str | None = None) -> np.ndarray:
    """-> float32 (14, H, W). Accepts channel-last (L4S) or channel-first arrays.

    ``source`` is a path or an open binary file; ``name`` (default: the path) names it in errors.
    """
    path = name or str(source)
    arr = _read_dataset(source, dataset, path)
    if arr.ndim != 3:
        raise InputError(f"{path}: dataset {dataset!r} should be H x W x {N_BANDS}, found shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise InputError(f"{path}: dataset {dataset!r} should be numeric, found dtype {arr.dtype}")
    if arr.shape[-1] == N_BANDS:
        arr = np.moveaxis(arr, -1, 0)
    elif arr.shape[0] != N_BANDS:
        raise InputError(
            f"{path}: expected {N_BANDS} bands in Landslide4Sense order ({', '.join(L4S_BANDS)}), "
            f"found array of shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def ingest_h5(src: Path, dest: Path | str, *, chunk: int, nodata: float | None = None) -> SceneWriter:
    """L4S patches carry no georeferencing: the scene gets no CRS and a pixel-unit transform."""
    bands = read_l4s_h5(src)
    _, h, w = bands.shape
    writer = SceneWriter(
        dest,
        h,
        w,
        crs_wkt=None,
        transform=(1.0, 0.0, 0.0, 0.0, -1.0, float(h)),
        chunk=chunk,
        source={"path": str(src), "kind": "l4s-h5", "nodata": nodata},
    )
    writer.write(0, 0, bands, nodata=nodata)
    return writer


def read_l4s_mask(source: str | Path | BinaryIO, dataset: str = "mask", *, name: str | None = None) -> np.ndarray:
    """An L4S ``mask_N.h5`` -> uint8 (H, W) of 0/1; ``source`` and ``name`` as for :func:`read_l4s_h5`."""
    path = name or str(source)
    arr = _read_dataset(source, dataset, path)
    arr = arr.squeeze()
    if arr.ndim != 2:
        raise InputError(f"{path}: mask should be H x W, found shape {arr.shape}")
    if (bad := np.setdiff1d(np.unique(arr), [0, 1])).size:
        raise InputError(f"{path}: mask values must be 0 or 1, found {bad[:5].tolist()}")
    return arr.astype(np.uint8)
