"""The output Zarr store that blocks write into while a job runs (later ``probability.zarr``).

One chunk per block, so no two writers ever touch the same chunk. A block is finished
when its marker file exists; markers are written after the block's data, so a crash
between the two only costs recomputing that block. The store carries CF/rioxarray
georeferencing (``spatial_ref`` with ``crs_wkt`` + ``GeoTransform``, 1-D ``x``/``y``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..ingest.scene import SceneInfo
from ..plan.tiling import Block

NODATA = -1.0
LAYERS = ("probability", "uncertainty")


def create_store(path: Path, info: SceneInfo, block: int, job_hash: str) -> None:
    group = zarr.open_group(str(path), mode="w")
    chunk = (min(block, info.height), min(block, info.width))
    for name in LAYERS:
        arr = group.create_array(name, shape=(info.height, info.width), chunks=chunk, dtype="float32",
                                 fill_value=NODATA, dimension_names=("y", "x"))
        arr.attrs.update({"grid_mapping": "spatial_ref", "coordinates": "spatial_ref", "nodata": NODATA})
    a = info.affine
    xs = group.create_array("x", shape=(info.width,), dtype="float64", dimension_names=("x",))
    xs[:] = a.c + a.a * (np.arange(info.width) + 0.5)
    ys = group.create_array("y", shape=(info.height,), dtype="float64", dimension_names=("y",))
    ys[:] = a.f + a.e * (np.arange(info.height) + 0.5)
    ref = group.create_array("spatial_ref", shape=(), dtype="int32", fill_value=0)
    ref.attrs.update({"crs_wkt": info.crs_wkt or "", "spatial_ref": info.crs_wkt or "",
                      "GeoTransform": " ".join(str(v) for v in (a.c, a.a, a.b, a.f, a.d, a.e))})
    group.attrs.update({"job_hash": job_hash, "block": block})


class BlockStore:
    """Write side of the output store plus the per-block completion markers."""

    def __init__(self, path: Path, done_dir: Path):
        self.path, self.done_dir = Path(path), Path(done_dir)
        self._group = None

    @property
    def group(self):
        if self._group is None:  # opened lazily: instances travel to Ray workers
            self._group = zarr.open_group(str(self.path), mode="r+")
        return self._group

    def is_done(self, block: Block) -> bool:
        return (self.done_dir / f"{block.key}.done").exists()

    def write(self, block: Block, prob: np.ndarray, spread: np.ndarray) -> None:
        self.group["probability"][block.y0:block.y1, block.x0:block.x1] = prob
        self.group["uncertainty"][block.y0:block.y1, block.x0:block.x1] = spread
        self.mark_done(block)

    def mark_done(self, block: Block) -> None:
        self.done_dir.mkdir(parents=True, exist_ok=True)
        (self.done_dir / f"{block.key}.done").touch()

    def __getstate__(self):
        return {"path": self.path, "done_dir": self.done_dir, "_group": None}
