"""Uploaded patches and masks, as (file name, bytes), checked into arrays.

Everything that can go wrong with an upload raises ``InputError`` with a message the page
shows as it is, naming the upload (never the temporary copy on the server).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from ..bands import L4S_BANDS, N_BANDS
from ..errors import InputError
from . import MAX_UPLOAD_ENV, MAX_UPLOAD_MB

#: Larger rasters belong to ``landslide-batch run``; this bounds the app's memory and wait.
MAX_SIDE = 1024
H5_SUFFIXES = (".h5", ".hdf5")
TIF_SUFFIXES = (".tif", ".tiff")


def max_upload_mb() -> int:
    return int(os.environ.get(MAX_UPLOAD_ENV, MAX_UPLOAD_MB))


def check_upload_size(name: str, size: int, limit_mb: int | None = None) -> None:
    """Refuse an upload over the cap the server was started with (``--max-upload-mb``)."""
    limit_mb = max_upload_mb() if limit_mb is None else limit_mb
    if size > limit_mb * 1_000_000:
        raise InputError(
            f"{name}: {size / 1e6:.1f} MB is over the upload limit of {limit_mb} MB; "
            "map larger inputs with `landslide-batch run`"
        )


@dataclass
class Patch:
    name: str
    bands: np.ndarray  # float32 (14, H, W), NaN where invalid
    valid: np.ndarray  # bool (H, W): every band finite and not nodata
    crs: CRS | None = None  # set only for a georeferenced GeoTIFF
    transform: Affine | None = None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


@contextmanager
def _as_file(name: str, data: bytes) -> Iterator[Path]:
    """The upload as a real file (HDF5 readers want a path), under its own base name."""
    with tempfile.TemporaryDirectory(prefix="landslide-app-") as tmp:
        path = Path(tmp) / (Path(name).name or "upload")
        path.write_bytes(data)
        yield path


def _suffix(name: str, allowed: tuple[str, ...], what: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise InputError(
            f"{name}: expected {what} ({', '.join(allowed)}), found {suffix or 'a file without extension'}"
        )
    return suffix


def load_patch(name: str, data: bytes) -> Patch:
    """An uploaded L4S ``image_N.h5`` or small 14-band GeoTIFF -> validated ``Patch``."""
    from ..ingest.h5patch import read_l4s_h5

    if _suffix(name, H5_SUFFIXES + TIF_SUFFIXES, "an L4S .h5 patch or a 14-band GeoTIFF") in H5_SUFFIXES:
        with _as_file(name, data) as path:
            try:
                bands = read_l4s_h5(path)
            except InputError as exc:  # name the upload, not the temporary copy
                raise InputError(str(exc).replace(str(path), name)) from None
        return _checked(name, bands, nodata=None)
    try:
        with MemoryFile(data) as mem, mem.open() as ds:
            if ds.count != N_BANDS:
                raise InputError(
                    f"{name}: expected {N_BANDS} bands in Landslide4Sense order "
                    f"({', '.join(L4S_BANDS)}), found {ds.count}"
                )
            if ds.height > MAX_SIDE or ds.width > MAX_SIDE:
                raise InputError(
                    f"{name}: {ds.height} x {ds.width} px is too large for the app "
                    f"(at most {MAX_SIDE} x {MAX_SIDE}); map it with `landslide-batch run`"
                )
            if not {np.dtype(d).kind for d in ds.dtypes} <= {"u", "i", "f"}:
                raise InputError(f"{name}: expected integer or float bands, found {sorted(set(ds.dtypes))}")
            bands = ds.read().astype(np.float32)
            geo = ds.crs is not None and not ds.transform.is_identity
            patch = _checked(name, bands, nodata=ds.nodata)
            if geo:
                patch.crs, patch.transform = ds.crs, ds.transform
            return patch
    except RasterioError as exc:
        raise InputError(f"{name}: cannot read as a GeoTIFF (corrupt, truncated or another format): {exc}") from None


def _checked(name: str, bands: np.ndarray, nodata: float | None) -> Patch:
    """Same validity rule as the scene store: every band finite and not ``nodata``."""
    valid = np.isfinite(bands).all(axis=0)
    if nodata is not None and not math.isnan(nodata):
        valid &= ~(bands == np.float32(nodata)).any(axis=0)
    if not valid.any():
        raise InputError(f"{name}: no valid pixel: every pixel is NaN, infinite or nodata in at least one band")
    return Patch(name, np.where(valid[None], bands, np.float32(np.nan)), valid)


def load_mask(name: str, data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """An uploaded ground truth (L4S ``mask_N.h5``, dataset ``mask``, or a 1-band GeoTIFF) -> bool (H, W)."""
    if _suffix(name, H5_SUFFIXES + TIF_SUFFIXES, "an L4S mask .h5 or a 1-band GeoTIFF") in H5_SUFFIXES:
        from ..ingest.h5patch import read_l4s_mask

        with _as_file(name, data) as path:
            try:
                arr = read_l4s_mask(path)
            except InputError as exc:
                raise InputError(str(exc).replace(str(path), name)) from None
    else:
        try:
            with MemoryFile(data) as mem, mem.open() as ds:
                if ds.count != 1:
                    raise InputError(f"{name}: a mask GeoTIFF should have 1 band, found {ds.count}")
                arr = ds.read(1)
        except RasterioError as exc:
            raise InputError(f"{name}: cannot read as a GeoTIFF: {exc}") from None
    arr = arr.squeeze()
    if arr.shape != tuple(shape):
        raise InputError(f"{name}: mask has shape {arr.shape} but the patch is {shape[0]} x {shape[1]}")
    return arr > 0
