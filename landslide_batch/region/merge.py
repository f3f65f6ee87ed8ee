"""The region's merge: every scene's map onto the region grid, block by block, blocks in parallel.

A block of the region is merged again only when the scenes touching it change (its marker
names them), so adding a scene merges only the blocks it touches. Blocks are independent (each
reads the scenes with a margin of ``FEATHER_PX`` and writes whole chunks of its own), so they
are merged by a few threads at once: zarr's decompression and most of numpy's work here run
without the GIL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import zarr
from shapely.geometry import box

from ..bands import BAND_INDEX, L4S_BANDS, RGB_BANDS
from ..errors import InputError
from ..ingest.scene import SCENE_FORMAT, SceneInfo, member_array
from ..outputs.manifest import write_json_atomic
from ..outputs.store import LAYERS, NODATA, SLOPE, create_store
from ..progress import progress
from ..storage import Location
from .mosaic import (
    FEATHER_PX,
    Window,
    aligned_offset,
    merge,
    needed_window,
    overlap_weights,
    sample,
    shifted,
    source_pixels,
)
from .observed import FIRST_CLEAR, OBSERVED, aoi_inside, create_layers, date_code, observation_layers

if TYPE_CHECKING:
    from .mapped import MappedScene

#: Blocks merged at once: each holds its sums and one scene's layers at a time, in float64 (~60 MB
#: each per 1024² block), however many scenes touch it.
MERGE_THREADS = max(1, min(4, os.cpu_count() or 1))

#: Bands the merge carries onto the region grid: RGB for the quicklook, and B8 which with B4 (red)
#: gives the NDVI of the change-aware layers (``event.py``).
MERGED_BANDS = (*RGB_BANDS, "B8")


class Reader(Protocol):
    """A scene's window -> (layers (C, h, w), valid (h, w)); C = 0 when only the validity is asked for."""

    def __call__(self, w: Window, layers: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class MergeTarget:
    """What every block's merge writes to and reads from."""

    grid: SceneInfo
    aoi: Any  # shapely geometry in the region CRS
    out: zarr.Group  # the region's output store
    region_scene: zarr.Group  # the region's scene store (RGB, slope, validity, observations for the products)
    readers: dict[str, Reader]
    has_slope: bool
    dates: dict[str, int]  # each scene's date code (``observed.date_code``)


def merge_region(
    scenes: list[MappedScene], grid: SceneInfo, aoi: Any, folder: Location, block: int, rhash: str
) -> dict:
    """Merge the scenes' maps onto the region grid, block by block, into ``folder`` (local or on
    object storage); a block whose scenes are those of its marker is kept. -> block counts
    (total, computed, kept)."""
    has_slope = all(SLOPE in s.scene.info.band_names for s in scenes)
    out, region_scene, markers = _open_stores(folder, grid, block, rhash, has_slope)
    readers = {s.source.id: _scene_reader(s, has_slope) for s in scenes}
    dates = {s.source.id: date_code(s.source.date) for s in scenes}
    target = MergeTarget(grid, aoi, out, region_scene, readers, has_slope, dates)
    blocks = list(_blocks(grid, block))
    todo = []
    for w in blocks:
        touching = _touching(scenes, grid, w)
        sig = json.dumps(sorted((s.source.id, s.sha256) for s in touching))
        marker = markers / f"{w.y0}_{w.x0}"
        if not (marker.is_file() and marker.read_text() == sig):
            todo.append((w, touching, sig, marker))
    with ThreadPoolExecutor(MERGE_THREADS, "merge") as pool:
        for _ in progress(pool.map(lambda job: _merge_block(target, *job), todo), "merge", "block", len(todo)):
            pass  # results are written by each block; map() re-raises the first error
    region_scene.attrs["complete"] = True
    return {"total": len(blocks), "computed": len(todo), "kept": len(blocks) - len(todo)}


def _open_stores(
    folder: Location, grid: SceneInfo, block: int, rhash: str, has_slope: bool
) -> tuple[zarr.Group, zarr.Group, Location]:
    """The merge's stores, created on the first merge (markers without their store are dropped);
    -> (output store, region scene store, markers folder)."""
    folder.makedirs()
    write_json_atomic(folder / "region.json", {"region_hash": rhash})
    store, scene_store, markers = folder / "probability.zarr", folder / "scene.zarr", folder / "blocks"

    def lacks(path: Location, name: str) -> bool:  # a store of an older layout lacks a layer
        return not path.exists() or name not in zarr.open_group(str(path), mode="r")

    if lacks(scene_store, OBSERVED) or lacks(store, LAYERS[-1]):
        markers.rm()
        bands = grid.band_names if has_slope else tuple(b for b in grid.band_names if b != SLOPE)
        info = SceneInfo(grid.height, grid.width, bands, grid.crs_wkt, grid.transform, grid.chunk)
        create_store(store, info, block, rhash)
        _create_region_scene(scene_store, info)
    markers.makedirs()
    return zarr.open_group(str(store), mode="r+"), zarr.open_group(str(scene_store), mode="r+"), markers


def _touching(scenes: list[MappedScene], grid: SceneInfo, w: Window) -> list[MappedScene]:
    """The scenes whose footprint reaches region window ``w`` grown by a pixel."""
    box_w = box(*_window_bounds(grid, w.grown(1)))
    return [s for s in scenes if s.footprint.intersects(box_w)]


def _merge_block(t: MergeTarget, w: Window, touching: list[MappedScene], sig: str, marker: Location) -> None:
    """Merge one region block from the scenes touching it and write it; its marker last. The
    weights need every scene's validity at once, the sums only one scene's layers at a time: the
    validity is sampled first (the probability layer alone), then each scene's layers as they are
    added, so a block's memory does not grow with the scenes that touch it."""
    ext = w.grown(FEATHER_PX)
    core = (slice(FEATHER_PX, -FEATHER_PX), slice(FEATHER_PX, -FEATHER_PX))

    def sampled(s: MappedScene, layers: bool) -> tuple[np.ndarray, np.ndarray] | None:
        return sample_scene(partial(t.readers[s.source.id], layers=layers), s.scene.info, t.grid, ext)

    found = [(s, on[1]) for s in touching if (on := sampled(s, False)) is not None]
    weights = overlap_weights([valid for _, valid in found], FEATHER_PX)
    contributions = ((weight, _layers(sampled(s, True))[:, core[0], core[1]]) for weight, (s, _) in zip(weights, found))
    names = ([SLOPE] if t.has_slope else []) + list(MERGED_BANDS)
    values, covered = merge(contributions, w.shape, len(LAYERS) + len(names))
    inside = aoi_inside(t.aoi, t.grid, w.y0, w.y1, w.x0, w.x1)
    ok = covered & inside
    rows, cols = slice(w.y0, w.y1), slice(w.x0, w.x1)
    out_path, scene_path = t.out.store_path, t.region_scene.store_path
    for i, layer in enumerate(LAYERS):  # probability, spread and agreement: blended alike
        member_array(t.out, layer, out_path)[rows, cols] = np.where(ok, values[i], NODATA).astype(np.float32)
    bands = member_array(t.region_scene, "bands", scene_path)
    for i, name in enumerate(names, len(LAYERS)):
        bands[BAND_INDEX[name], rows, cols] = np.where(ok, values[i], np.nan).astype(np.float32)
    member_array(t.region_scene, "valid", scene_path)[rows, cols] = ok.astype(np.uint8)
    dates = [t.dates[s.source.id] for s, _ in found]
    observed, first_clear = observation_layers([valid[core] for _, valid in found], dates, inside)
    member_array(t.region_scene, OBSERVED, scene_path)[rows, cols] = observed
    member_array(t.region_scene, FIRST_CLEAR, scene_path)[rows, cols] = first_clear
    marker.write_text(sig)


def _layers(sampled: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The layers of a scene whose validity was found on the same window (so it reaches it)."""
    assert sampled is not None, "the scene's validity reached this window"
    return sampled[0]


def _scene_reader(s: MappedScene, has_slope: bool) -> Reader:
    """A ``Reader``: (rows, cols window) -> (layers (C, h, w): the map's ``LAYERS``, [slope], R, G,
    B, NIR, or none; valid).
    The slope comes from the scene as ingested (the very values a scene's products keep)."""
    maps = zarr.open_group(str(s.map_store), mode="r")
    prob_layer, *other_layers = (member_array(maps, name, s.map_store) for name in LAYERS)
    bands = member_array(zarr.open_group(str(s.scene.path), mode="r"), "bands", s.scene.path)
    names = s.scene.info.band_names
    picked = np.array(([names.index(SLOPE)] if has_slope else []) + [names.index(b) for b in MERGED_BANDS])

    def read(w: Window, layers: bool = True) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = slice(w.y0, w.y1), slice(w.x0, w.x1)
        prob = np.asarray(prob_layer[rows, cols])
        if not layers:
            return np.empty((0, *prob.shape)), prob >= 0
        picked_bands = np.asarray(bands.get_orthogonal_selection((picked, rows, cols)))
        stacked = [prob, *(np.asarray(a[rows, cols]) for a in other_layers), *picked_bands]
        return np.stack(stacked).astype(np.float64), prob >= 0

    return read


def _blocks(grid: SceneInfo, size: int) -> Iterator[Window]:
    for y0 in range(0, grid.height, size):
        for x0 in range(0, grid.width, size):
            yield Window(y0, min(y0 + size, grid.height), x0, min(x0 + size, grid.width))


def sample_scene(read: Reader, info: SceneInfo, grid: SceneInfo, w: Window) -> tuple[np.ndarray, np.ndarray] | None:
    """A scene's layers and validity at the centres of region window ``w``; None if it misses it.
    A scene on the region's own pixel lattice is sliced, any other one interpolated."""
    grid_wkt, scene_wkt = _wkt(grid), _wkt(info)
    offset = aligned_offset(grid.affine, grid_wkt, info.affine, scene_wkt)
    if offset is not None:
        return shifted(read, info.height, info.width, w, offset)
    rows, cols = source_pixels(grid.affine, grid_wkt, w, info.affine, scene_wkt)
    src = needed_window(rows, cols, info.height, info.width)
    if src is None:
        return None
    layers, valid = read(src)
    return sample(layers, valid, rows - src.y0, cols - src.x0)


def _window_bounds(grid: SceneInfo, w: Window) -> tuple[float, float, float, float]:
    a = grid.affine
    x0, y0 = a @ (w.x0, w.y0)
    x1, y1 = a @ (w.x1, w.y1)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _create_region_scene(path: Location, info: SceneInfo) -> None:
    """A scene store on the region grid for the finish: all L4S layers declared, only
    ``MERGED_BANDS`` and slope written (one chunk per layer: the others take no space), validity
    of the merge, and where the scenes observe it (``observed.py``)."""
    group = zarr.open_group(str(path), mode="w")
    c = info.chunk
    group.create_array(
        "bands",
        shape=(len(L4S_BANDS), info.height, info.width),
        chunks=(1, c, c),
        dtype="float32",
        fill_value=np.nan,
        dimension_names=("band", "y", "x"),
    )
    group.create_array(
        "valid", shape=(info.height, info.width), chunks=(c, c), dtype="uint8", fill_value=0, dimension_names=("y", "x")
    )
    create_layers(group, info)
    group.attrs.update(
        {
            "format": SCENE_FORMAT,
            "crs": info.crs_wkt,
            "transform": list(info.transform)[:6],
            "band_names": list(info.band_names),
            "source": {"kind": "region merge"},
            "complete": False,
        }
    )


def _wkt(info: SceneInfo) -> str:
    """The CRS of a region grid or of a scene in a region (a region refuses scenes without one)."""
    if info.crs_wkt is None:
        raise InputError("a region job needs georeferenced scenes; this one has no CRS")
    return info.crs_wkt
