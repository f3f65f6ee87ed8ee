"""The output Zarr store that blocks write into while a job runs (later ``probability.zarr``).

One chunk per block, so no two writers ever touch the same chunk. A block is finished
when its marker file exists; markers are written after the block's data, so a crash
between the two only costs recomputing that block.

The store is CF-complete as rioxarray writes it (``write_crs``, ``write_transform``,
``write_coordinate_system``, ``write_nodata(encoded=True)``): each layer has ``_FillValue``,
``units``, ``long_name`` and ``grid_mapping``; ``x``/``y`` their axis attributes; ``spatial_ref`` the
CF grid mapping (``grid_mapping_name`` ...) with ``crs_wkt`` and GDAL's ``GeoTransform``. The
attributes are written here with zarr and pyproj (what rioxarray calls), not through xarray: that
would add over a second of imports to every job. Consolidated metadata lets ``xarray.open_zarr``
open it in one read and without a warning; nodata (-1) reads as NaN there, so statistics skip it.

When the scene has a slope layer the store keeps it too (``slope``, degrees, filled by the
job's finish): the polygons' ``mean_slope_deg`` can then be rebuilt from the store alone
(``landslide-batch vectorize``), after the scene store is gone.
"""

from __future__ import annotations

import base64
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import ZarrUserWarning

from ..infer.stages import NODATA
from ..ingest.scene import SceneInfo
from ..plan.tiling import Block
from ..storage import Where, location, path_or_uri
from ..storage.durable import sync_path

#: ``agreement``: the share of the members at or above their own threshold (``predict_maps``),
#: kept for the change-aware polygons' ``member_agreement``.
LAYERS = ("probability", "uncertainty", "agreement")
SLOPE = "slope"
#: CF attributes of each layer (``units`` "1": a dimensionless fraction).
LAYER_ATTRS: dict[str, dict[str, Any]] = {
    "probability": {"long_name": "landslide probability", "units": "1", "valid_range": [0.0, 1.0]},
    "uncertainty": {"long_name": "weighted standard deviation of the ensemble members' probabilities", "units": "1"},
    "agreement": {
        "long_name": "weighted share of the ensemble members at or above their own threshold",
        "units": "1",
        "valid_range": [0.0, 1.0],
    },
    SLOPE: {"long_name": "terrain slope", "units": "degree"},
}


def create_store(path: Where, info: SceneInfo, block: int, job_hash: str) -> None:
    group = zarr.open_group(str(location(path)), mode="w")
    chunk = (min(block, info.height), min(block, info.width))
    layers = {name: NODATA for name in LAYERS} | ({SLOPE: np.nan} if SLOPE in info.band_names else {})
    for name, fill in layers.items():
        arr = group.create_array(
            name,
            shape=(info.height, info.width),
            chunks=chunk,
            dtype="float32",
            fill_value=fill,
            dimension_names=("y", "x"),
        )
        arr.attrs.update(
            LAYER_ATTRS[name]
            | {"_FillValue": xarray_fill_value(fill), "grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
        )
    a = info.affine
    x_attrs, y_attrs = _axis_attrs(info)
    xs = group.create_array("x", shape=(info.width,), dtype="float64", dimension_names=("x",), attributes=x_attrs)
    xs[:] = a.c + a.a * (np.arange(info.width) + 0.5)
    ys = group.create_array("y", shape=(info.height,), dtype="float64", dimension_names=("y",), attributes=y_attrs)
    ys[:] = a.f + a.e * (np.arange(info.height) + 0.5)
    ref = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    ref.attrs.update(grid_mapping_attrs(info))
    group.attrs.update({"job_hash": job_hash, "block": block})
    consolidate(path)


def xarray_fill_value(value: float) -> str:
    """``_FillValue`` of a float layer as xarray reads it from a Zarr v3 array's attributes (the
    base64 of a little-endian float64: JSON has no NaN), so that it masks nodata as CF asks."""
    return base64.standard_b64encode(struct.pack("<d", float(value))).decode()


def grid_mapping_attrs(info: SceneInfo) -> dict:
    """``spatial_ref``'s attributes as rioxarray's ``write_crs`` + ``write_transform`` write them:
    pyproj's CF grid mapping (``grid_mapping_name`` ...), ``crs_wkt`` and GDAL's ``GeoTransform``."""
    from pyproj import CRS

    a = info.affine
    cf = CRS.from_wkt(info.crs_wkt).to_cf() if info.crs_wkt else {}
    return cf | {
        "crs_wkt": info.crs_wkt or "",
        "spatial_ref": info.crs_wkt or "",
        "GeoTransform": " ".join(str(v) for v in (a.c, a.a, a.b, a.f, a.d, a.e)),
    }


def _axis_attrs(info: SceneInfo) -> tuple[dict, dict]:
    """``x``/``y`` attributes as rioxarray's ``write_coordinate_system`` writes them (pyproj's CF
    axes: projection_x_coordinate in metres, or longitude/latitude); pixel axes without a CRS."""
    from pyproj import CRS

    if not info.crs_wkt:
        return {"long_name": "column (pixel centre)", "axis": "X"}, {"long_name": "row (pixel centre)", "axis": "Y"}
    axes = {ax["axis"]: ax for ax in CRS.from_wkt(info.crs_wkt).cs_to_cf()}
    return axes["X"], axes["Y"]


def consolidate(path: Where) -> None:
    """Write the consolidated metadata xarray looks for. Zarr warns that consolidation is not
    (yet) part of the v3 spec; zarr-python and xarray read it, which is what we promise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", ZarrUserWarning)
        zarr.consolidate_metadata(str(location(path)))


class BlockStore:
    """Write side of the output store plus the per-block completion markers (both a local
    path or a URI: on object storage a marker is an empty object)."""

    def __init__(self, path: Where, done_dir: Where):
        self.path, self.done_dir = path_or_uri(path), path_or_uri(done_dir)
        self._markers = location(done_dir)
        self._group = None

    @property
    def group(self):
        if self._group is None:  # opened lazily: instances travel to Ray workers
            self._group = zarr.open_group(str(self.path), mode="r+")
        return self._group

    def is_done(self, block: Block) -> bool:
        return (self._markers / f"{block.key}.done").exists()

    def done_keys(self) -> set[str]:
        """Keys of the finished blocks, in one listing (one request on object storage)."""
        return {n[: -len(".done")] for n in self._markers.ls_names() if n.endswith(".done")}

    def write(self, block: Block, prob: np.ndarray, spread: np.ndarray, agreement: np.ndarray) -> None:
        for name, values in zip(LAYERS, (prob, spread, agreement)):
            self.group[name][block.y0 : block.y1, block.x0 : block.x1] = values
        self._sync_chunks(block)
        self.mark_done(block)

    def _sync_chunks(self, block: Block) -> None:
        """A local store: ``block``'s chunk files (one per layer) and their folders on disk before
        its marker, so a marker that survives a power loss vouches for data that did too."""
        if not isinstance(self.path, Path):
            return  # object storage: a PUT is whole and durable when it returns
        for name in LAYERS:
            array = self.group[name]
            key = array.metadata.encode_chunk_key((block.y0 // array.chunks[0], block.x0 // array.chunks[1]))
            chunk = self.path / name / key
            folders = [f for f in chunk.parents if f.is_relative_to(self.path / name)]
            for path in [chunk, *folders]:
                if path.exists():  # a chunk of fill values only is not written
                    sync_path(path)

    def mark_done(self, block: Block) -> None:
        self._markers.makedirs()
        (self._markers / f"{block.key}.done").touch()

    def __getstate__(self):
        return {"path": self.path, "done_dir": self.done_dir, "_markers": self._markers, "_group": None}
