"""The scene store: a Zarr group every later stage reads from.

Layout (Zarr v3, readable with ``xarray.open_zarr``)::

    bands  float32 (band, y, x)  NaN where a pixel is invalid
    valid  uint8   (y, x)        1 where every band holds a finite, non-nodata value
    attrs  crs (WKT or null), transform (affine a, b, c, d, e, f), band_names, source

Chunks are square in (y, x) and divide the block size, so blocks read whole chunks.
Reads are windowed: nothing here loads a whole scene.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zarr
from affine import Affine
from rasterio.crs import CRS

from ..bands import L4S_BANDS
from ..errors import InputError
from ..progress import progress
from ..storage import path_or_uri

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

SCENE_FORMAT = "landslide-batch-scene/1"
#: The Sentinel-2 layers: a pixel holding the same "blank" value in all of them is no observation.
OPTICAL = slice(0, 12)

log = logging.getLogger(__name__)

#: Windows a scene writer's ``fill`` reads and writes at once: GDAL's reads, numpy's checks and
#: the store's writes run without the GIL (a 8192² GeoTIFF: 9.3 s in one thread, 4.7 s in two).
INGEST_THREADS = max(1, min(4, os.cpu_count() or 1))

#: Set by a job whose ingest is no longer wanted (its models failed to load beside it): the
#: scene writer of that ingest stops at its next window. See :func:`stoppable`.
_STOP: ContextVar[threading.Event | None] = ContextVar("ingest_stop", default=None)


class IngestStopped(Exception):
    """An ingest stopped part-way because its job asked it to (its store is removed)."""


@contextmanager
def stoppable(stop: threading.Event | None) -> Iterator[None]:
    """Within the block (in this thread), scene writers raise :class:`IngestStopped` at their
    next window once ``stop`` is set: a job that failed beside its ingest need not wait for it."""
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


@dataclass(frozen=True)
class Blank:
    """A value that marks a pixel as no-data when all 12 Sentinel-2 layers hold it, for sources
    that do not say what no-data is: zero borders of a raster without a nodata tag, the fill
    value a Zarr store gives its chunks never written. ``why`` says which, in the warning."""

    value: float
    why: str
    fix: str


@dataclass(frozen=True)
class SceneInfo:
    height: int
    width: int
    band_names: tuple[str, ...]
    crs_wkt: str | None
    transform: tuple[float, ...]
    chunk: int

    @property
    def crs(self) -> CRS | None:
        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])

    @property
    def pixel_area_m2(self) -> float | None:
        """Area of one pixel in m², when the CRS is projected in metres."""
        crs = self.crs
        if crs is None or not crs.is_projected:
            return None
        a = self.affine
        return abs(a.a * a.e - a.b * a.d) * crs.linear_units_factor[1] ** 2


class Scene:
    """Read access to a scene store (a local path or a URI: workers read it from object storage)."""

    def __init__(self, path: str | Path):
        self.path = path_or_uri(path)
        try:
            group = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:
            raise InputError(f"{self.path}: not a readable Zarr store ({type(exc).__name__}: {exc})") from None
        if group.attrs.get("format") != SCENE_FORMAT:
            raise InputError(
                f"{self.path}: Zarr store is not a landslide-batch scene (attrs.format != {SCENE_FORMAT!r})"
            )
        if not group.attrs.get("complete", False):
            raise InputError(f"{self.path}: scene store is incomplete (its ingest did not finish); ingest it again")
        self._bands = member_array(group, "bands", self.path)
        self._valid = member_array(group, "valid", self.path)
        c, h, w = self._bands.shape
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.info = SceneInfo(
            height=h,
            width=w,
            band_names=tuple(self.attrs["band_names"]),
            crs_wkt=self.attrs.get("crs"),
            transform=tuple(self.attrs["transform"]),
            chunk=int(self._bands.chunks[1]),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.info.height, self.info.width

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """In-bounds window -> (bands float32 (C, h, w), valid bool (h, w))."""
        return np.asarray(self._bands[:, y0:y1, x0:x1]), self.read_valid(y0, y1, x0, x1)

    def read_band(self, name: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """One layer of an in-bounds window (raw chunks: the other layers are not read)."""
        return np.asarray(self._bands[self.info.band_names.index(name), y0:y1, x0:x1])

    def read_valid(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self._valid[y0:y1, x0:x1]).astype(bool)

    def read_reflected(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """A window that may reach outside the scene; outside pixels mirror the inside
        (numpy ``reflect``), so every caller sees the same values for the same coordinate.

        The window is filled in place, one chunk row at a time, and its margins mirrored from
        within: peak memory is the window plus one strip, not two copies of the window."""
        h, w = self.shape
        rows, cols = reflect_index(np.arange(y0, y1), h), reflect_index(np.arange(x0, x1), w)
        iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
        if not (rows.min() >= iy0 and rows.max() < iy1 and cols.min() >= ix0 and cols.max() < ix1):
            # Mirrored pixels lie outside the window (scene thinner than the margin): gather.
            ry0, ry1, rx0, rx1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            bands, valid = self.read(ry0, ry1, rx0, rx1)
            ri, ci = np.ix_(rows - ry0, cols - rx0)
            return bands[:, ri, ci], valid[ri, ci]
        bands = np.empty((self._bands.shape[0], y1 - y0, x1 - x0), np.float32)
        valid = np.empty((y1 - y0, x1 - x0), bool)
        inner = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        for sy in range(iy0, iy1, self.info.chunk):
            ey = min(sy + self.info.chunk, iy1)
            bands[:, sy - y0 : ey - y0, inner[1]] = self._bands[:, sy:ey, ix0:ix1]
            valid[sy - y0 : ey - y0, inner[1]] = self._valid[sy:ey, ix0:ix1]
        ri, ci = rows - y0, cols - x0
        for margin in (slice(0, ix0 - x0), slice(ix1 - x0, x1 - x0)):  # columns, in-bounds rows
            bands[:, inner[0], margin] = bands[:, inner[0], ci[margin]]
            valid[inner[0], margin] = valid[inner[0], ci[margin]]
        for margin in (slice(0, iy0 - y0), slice(iy1 - y0, y1 - y0)):  # rows, full width
            bands[:, margin] = bands[:, ri[margin]]
            valid[margin] = valid[ri[margin]]
        return bands, valid


def member_array(group: zarr.Group, name: str, path: object) -> zarr.Array:
    """The array ``name`` of the Zarr store at ``path`` (InputError for a sub-group of that name)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{path}: Zarr store member {name!r} is a {type(node).__name__}, expected an array")
    return node


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map any integer coordinates into ``[0, n)`` by mirror reflection without edge repeat."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m < n, m, period - m)


#: The scene writer writes each chunk once, with what it holds: zarr's default check of every chunk
#: against the fill value (to leave "empty" ones out) is a pass over data that is never empty
#: (a window with no valid pixel is not written at all, see :meth:`SceneWriter.write`).
WRITE_EVERY_CHUNK: ArrayConfigParams = {"write_empty_chunks": True}


def working_compressors(path: Path | str):
    """The working store's band codec. A local copy is read once per block and stays raw:
    compressed, a 1024² block (+halo) read from the page cache took 0.12 s instead of 0.02 s,
    a cost that matters where a GPU predicts a block in about the time it is read. On object
    storage the bytes cross the network: zstd level 1 stores real L4S bands in 2.4x fewer bytes
    and read back faster than raw (benchmarks/working_store_codec.py, figures in benchmarks/README.md)."""
    if isinstance(path, Path):
        return None
    from zarr.codecs import ZstdCodec

    return [ZstdCodec(level=1)]


class SceneWriter:
    """Creates a scene store and fills it window by window."""

    def __init__(
        self,
        path: str | Path,
        height: int,
        width: int,
        *,
        crs_wkt: str | None,
        transform: tuple[float, ...],
        band_names=L4S_BANDS,
        chunk: int = 512,
        source: dict | None = None,
        blank: Blank | None = None,
    ):
        if height < 1 or width < 1:
            raise InputError(f"{(source or {}).get('path', path)}: scene has zero size ({height}x{width} pixels)")
        self.path = path_or_uri(path)
        self.source_path = (source or {}).get("path", self.path)
        chunk = int(min(chunk, max(height, width)))
        self.group = zarr.open_group(str(self.path), mode="w")
        self.bands = self.group.create_array(
            "bands",
            shape=(len(band_names), height, width),
            chunks=(len(band_names), chunk, chunk),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=("band", "y", "x"),
            compressors=working_compressors(self.path),
            config=WRITE_EVERY_CHUNK,
        )
        self.valid = self.group.create_array(
            "valid",
            shape=(height, width),
            chunks=(chunk, chunk),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x"),
            config=WRITE_EVERY_CHUNK,
        )
        self.group.attrs.update(
            {
                "format": SCENE_FORMAT,
                "crs": crs_wkt,
                "transform": list(transform)[:6],
                "band_names": list(band_names),
                "source": source or {},
                "complete": False,
            }
        )
        self.chunk = chunk
        self.n_valid = 0
        self.blank, self.n_blank = blank, 0
        self.band_names = tuple(band_names)
        self.band_has_values = np.zeros(len(band_names), bool)  # names the culprit when no pixel is valid
        self._counting = threading.Lock()

    def windows(self):
        """Chunk-aligned windows (y0, y1, x0, x1) covering the scene, with a progress bar."""
        return progress(self._windows(), "ingest", "window")

    def _windows(self) -> list[tuple[int, int, int, int]]:
        _, h, w = self.bands.shape
        c = self.chunk
        return [(y0, min(y0 + c, h), x0, min(x0 + c, w)) for y0 in range(0, h, c) for x0 in range(0, w, c)]

    def fill(
        self,
        read: Callable[[int, int, int, int], np.ndarray],
        nodata: float | None = None,
        threads: int = INGEST_THREADS,
    ) -> None:
        """Write every window, ``read(y0, y1, x0, x1)`` giving its raw bands (called from
        ``threads`` threads at once: each needs its own file handle; with one, from the caller's
        thread, in its rasterio environment), as :meth:`write` does. The caller's stop
        (:func:`stoppable`) holds in every window; the first error cancels the windows not yet
        started and is raised."""
        if threads <= 1:
            for y0, y1, x0, x1 in self.windows():
                self.write(y0, x0, read(y0, y1, x0, x1), nodata=nodata)
            return
        stop = _STOP.get()

        def one(y0: int, y1: int, x0: int, x1: int) -> None:
            with stoppable(stop):  # a context variable: each worker thread starts without it
                self.write(y0, x0, read(y0, y1, x0, x1), nodata=nodata)

        with ThreadPoolExecutor(threads, "ingest") as pool:
            done = [pool.submit(one, *window) for window in self._windows()]
            try:
                for future in progress(done, "ingest", "window"):
                    future.result()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise

    def write(self, y0: int, x0: int, bands: np.ndarray, nodata: float | None = None) -> None:
        """Write raw band values; pixels with a non-finite or ``nodata`` value in any band become invalid."""
        stop = _STOP.get()
        if stop is not None and stop.is_set():
            raise IngestStopped(f"ingest of {self.source_path} stopped at window ({y0}, {x0}): its job failed")
        bands = np.asarray(bands, dtype=np.float32)
        usable = np.isfinite(bands)
        if nodata is not None and not np.isnan(nodata):
            usable &= bands != np.float32(nodata)
        n_blank = 0
        if self.blank is not None:
            blank = self._blank(bands)
            n_blank = int(blank.sum())
            usable &= ~blank
        valid = usable.all(axis=0)
        seen = usable.any(axis=(1, 2)) if not self.band_has_values.all() else None
        n_valid = int(valid.sum())
        with self._counting:  # windows may be written from several threads (``fill``)
            self.n_blank += n_blank
            if seen is not None:
                self.band_has_values |= seen
            self.n_valid += n_valid
        if n_valid == 0:
            return  # the chunks stay unwritten: they read as the fill values, NaN and 0
        if n_valid < valid.size:
            bands = np.where(valid[None], bands, np.float32(np.nan))
        _, h, w = bands.shape
        self.bands[:, y0 : y0 + h, x0 : x0 + w] = bands
        self.valid[y0 : y0 + h, x0 : x0 + w] = valid.view(np.uint8)

    def _blank(self, bands: np.ndarray) -> np.ndarray:
        """Pixels holding the blank value in all 12 Sentinel-2 layers; the other layers are
        compared only where the first one holds it (rare: borders, fill)."""
        assert self.blank is not None
        value = np.float32(self.blank.value)
        blank = bands[0] == value
        if blank.any():
            rows, cols = np.nonzero(blank)
            blank[rows, cols] = (bands[OPTICAL, rows, cols] == value).all(axis=0)
        return blank

    def finish(self) -> Scene:
        if self.n_valid == 0:
            empty = [name for name, seen in zip(self.band_names, self.band_has_values) if not seen]
            raise InputError(
                f"scene {self.source_path} has no valid pixel: every pixel "
                "is NaN, infinite or nodata in at least one band"
                + (
                    f"; layers without a single valid value: {', '.join(empty)}"
                    if 0 < len(empty) < len(self.band_names)
                    else ""
                )
            )
        if self.n_blank:
            self._warn_blank()
        self.group.attrs["complete"] = True
        return Scene(self.path)

    def _warn_blank(self) -> None:
        """Record (in ``attrs["warnings"]``, which run.json carries) and log the blank pixels."""
        assert self.blank is not None
        _, h, w = self.bands.shape
        msg = (
            f"{self.n_blank} pixels ({100 * self.n_blank / (h * w):.1f}% of the scene) hold {self.blank.value:g} in "
            f"all 12 Sentinel-2 layers and {self.blank.why}: taken as no-data, not mapped. {self.blank.fix}"
        )
        log.warning("%s: %s", self.source_path, msg)
        earlier = cast(list, self.group.attrs.get("warnings") or [])  # an assembled scene's, if any
        self.group.attrs["warnings"] = [*earlier, msg]
