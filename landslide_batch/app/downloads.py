"""A patch's maps as the files the page offers for download: ``.npy``, and GeoTIFF when the
upload was georeferenced."""

from __future__ import annotations

import io

import numpy as np
from rasterio.io import MemoryFile

from ..errors import InputError
from .uploads import Patch


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def geotiff_bytes(arr: np.ndarray, patch: Patch, nodata: float | None = None) -> bytes:
    """A single-band GeoTIFF on the uploaded patch's grid."""
    if not patch.georeferenced:
        raise InputError(f"{patch.name} has no georeferencing; a GeoTIFF of it would have no location")
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            height=arr.shape[0],
            width=arr.shape[1],
            count=1,
            dtype=arr.dtype.name,
            crs=patch.crs,
            transform=patch.transform,
            nodata=nodata,
            compress="deflate",
        ) as ds:
            ds.write(arr, 1)
        return mem.read()
