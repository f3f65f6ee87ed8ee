"""Score a finished job's map against an inventory (``landslide-batch compare``); no model is loaded.

The job's polygons are the mapped objects (only the ``new`` ones when the polygons carry a
``status``: with a pre-event reference the map claims change, and that claim is scored). Pixels
are counted window by window on the map's grid, over observed pixels: ``observed.tif`` > 0
where the job wrote one, else the mask's valid pixels. The inventory is read by
:mod:`.inventory` and reprojected onto the map's CRS. Scoring rules: :mod:`.compare`.

Written to the report folder (default ``OUT/compare``), all or nothing: ``compare.json`` (scores
and counts), ``compare.md`` (the table) and ``compare.gpkg`` with the layers ``missed``
(observed inventory objects no mapped object matches) and ``false`` (mapped objects that match
no inventory object), in the map's CRS.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import rasterio
from rasterio import features
from rasterio.windows import Window

from ..errors import ConfigError, InputError
from ..ingest.scene import SceneInfo
from ..storage import location
from . import compare as score
from .compare import DEFAULT_MIN_IOU
from .derive import MASK_NODATA
from .folder import finished_result
from .inventory import read_inventory
from .publish import move_all
from .rasters import windows

OBSERVED = "observed.tif"
REPORT_FILES = ("compare.gpkg", "compare.md", "compare.json")  # compare.json last: it vouches for the others


def compare_job(out: str | Path, inventory: str | Path, min_iou: float = DEFAULT_MIN_IOU, report=None) -> dict:
    """Score the finished job in ``out`` against ``inventory``; write the report into ``report``
    (default ``out/compare``) and return what ``compare.json`` holds."""
    if not 0 <= min_iou <= 1:
        raise ConfigError(f"--min-iou must be within [0, 1], found {min_iou}")
    where = location(out)
    if not where.is_local:
        raise ConfigError(f"{out}: compare reads a local output folder (object storage: not yet)")
    names = finished_result(where)[1]
    folder = where.path
    grid = _grid(folder / names["mask"])
    mapped = _mapped_objects(folder / names["polygons"])
    inv, inv_record = read_inventory(Path(inventory), grid.crs)
    observed_file = folder / OBSERVED if (folder / OBSERVED).is_file() else None
    counts, inv_observed = _count_pixels(grid, folder / names["mask"], observed_file, mapped, inv)
    inv = inv[inv_observed]
    mapped_hit, inv_hit = score.match_objects(list(mapped.geometry), list(inv.geometry), min_iou)
    result = {
        "out": str(folder),
        "inventory": {**inv_record, "observed": int(inv_observed.sum()), "unobserved": int((~inv_observed).sum())},
        "min_iou": min_iou,
        "observed_from": OBSERVED if observed_file else "mask valid pixels",
        "observed_pixels": counts.observed,
        "mapped_objects": {"file": names["polygons"], "scored": len(mapped), "only_new": "status" in mapped},
        "size_classes_m2": {name: [lo, None if np.isinf(hi) else hi] for name, lo, hi in score.SIZE_CLASSES},
        "objects": score.object_scores(
            mapped_hit, score.size_class(mapped["area_m2"]), inv_hit, score.size_class(inv["area_m2"])
        ),
        "pixels": score.pixel_scores(counts),
    }
    _write_report(Path(report) if report else folder / "compare", result, mapped[~mapped_hit], inv[~inv_hit])
    return result


def _grid(mask: Path) -> SceneInfo:
    try:
        with rasterio.open(mask) as ds:
            return SceneInfo(ds.height, ds.width, (), ds.crs.to_wkt() if ds.crs else None, tuple(ds.transform), 512)
    except rasterio.RasterioIOError as exc:
        raise InputError(f"{mask}: the job's mask is missing or unreadable ({exc})") from None


def _mapped_objects(path: Path):
    import geopandas as gpd

    gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path, engine="pyogrio")
    if "status" in gdf:
        gdf = gdf[gdf["status"] == "new"]
    return gdf.reset_index(drop=True)


def _count_pixels(grid: SceneInfo, mask: Path, observed_file: Path | None, mapped, inv):
    """Pixel counts over observed pixels, window by window; -> (counts, which inventory objects
    have an observed pixel). Mapped objects are burnt by their size class; inventory objects
    once per class (they may overlap), and by index, all pixels they touch, largest first so a
    small object inside a large one keeps its pixels."""
    counts = score.PixelCounts()
    mapped_cls = score.size_class(mapped["area_m2"]) + 1
    inv_cls = score.size_class(inv["area_m2"])
    order = np.argsort(-inv["area_m2"].to_numpy(), kind="stable")
    seen = np.zeros(len(inv) + 1, np.int64)
    with rasterio.open(mask) as m, rasterio.open(observed_file) if observed_file else nullcontext() as obs:
        if obs is not None and (obs.shape, obs.transform) != (m.shape, m.transform):
            raise InputError(f"{observed_file} is not on the grid of {mask}: the folder mixes two jobs")
        for y0, y1, x0, x1 in windows(grid):
            win = Window(x0, y0, x1 - x0, y1 - y0)
            shape, transform = (y1 - y0, x1 - x0), grid.affine @ grid.affine.translation(x0, y0)
            observed = m.read(1, window=win) != MASK_NODATA
            if obs is not None:
                looks = obs.read(1, window=win)
                observed &= (looks > 0) & (looks != obs.nodata)  # nodata: outside the AOI

            burn = partial(_burn, shape=shape, transform=transform)
            mapped_class = burn(zip(mapped.geometry, mapped_cls))
            inv_classes = [
                burn((g, 1) for g in inv.geometry[inv_cls == c]).astype(bool) for c in range(len(score.SIZE_CLASSES))
            ]
            counts.add(observed, mapped_class, inv_classes)
            labels = burn(((inv.geometry.iloc[i], i + 1) for i in order), all_touched=True, dtype="int32")
            seen += np.bincount(labels[observed], minlength=len(inv) + 1)
    return counts, seen[1:] > 0


def _burn(shapes, shape: tuple[int, int], transform, all_touched: bool = False, dtype: str = "uint8") -> np.ndarray:
    """``(geometry, value)`` pairs burnt into a window (0 elsewhere)."""
    shapes = list(shapes)
    if not shapes:
        return np.zeros(shape, dtype)
    return features.rasterize(shapes, out_shape=shape, transform=transform, all_touched=all_touched, dtype=dtype)


def _write_report(dest: Path, result: dict, false, missed) -> None:
    """The report files into ``dest``, moved in together once all are written."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".compare-") as tmp:
        work = Path(tmp)
        layers = work / "compare.gpkg"
        missed.to_file(layers, layer="missed", driver="GPKG", engine="pyogrio")
        false.to_file(layers, layer="false", driver="GPKG", engine="pyogrio")
        (work / "compare.md").write_text(
            f"# {result['out']} against {result['inventory']['file']}\n\n"
            f"Objects match at IoU >= {result['min_iou']}; pixels over {result['observed_pixels']} observed "
            f"pixels ({result['observed_from']}).\n\n" + score.markdown_table(result["objects"], result["pixels"])
        )
        (work / "compare.json").write_text(json.dumps(result, indent=2))
        move_all([(work / n, dest / n) for n in REPORT_FILES])
