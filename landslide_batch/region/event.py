"""Change-aware event maps: what is new since the event, against a pre-event reference.

A region job with ``pre_scenes`` first maps them, with the same ensemble, settings and grid,
as a region job of its own into ``OUT/pre_event`` (kept: a later pass over new post-event
scenes finds it finished and maps nothing again). On the region grid, window by window:

- ``pre_probability.tif``: the pre-event map;
- ``dndvi.tif``: post − pre NDVI, each from the merged B8 and B4 of its scenes;
- ``new_probability.tif``: ``p_post × (1 − p_pre) × w``, ``w = clip(−dNDVI / NDVI_LOSS_FULL, 0, 1)``
  (1 once NDVI dropped by ``NDVI_LOSS_FULL`` or more, 0 where it did not drop); with
  ``change_ndvi: false``, ``w = 1``. A scar seen before the event (high ``p_pre``), or ground
  whose vegetation did not change, is not new. Nodata (-1) where either map is nodata: with
  no pre-event view of a pixel, new cannot be told from old.

The mask then follows ``new_probability`` (``>=`` the threshold), and the polygons carry a
``status``: ``new`` for the mask's objects, ``pre-existing`` for objects both maps show
(``p_post`` and ``p_pre`` at or above the threshold) that are not new, and, per object, beside
``area_m2``, ``mean_slope_deg``, ``mean_probability`` and ``max_probability`` (of the
post-event map): ``member_agreement`` (mean over its pixels of the weighted share of members at
or above their own threshold), ``uncertainty`` (mean ensemble spread), ``mean_dndvi``, ``first_observed``
(the first clear post-event view of any of its pixels, ``YYYY-MM-DD``) and ``confidence``:
``high`` when the mean probability is >= 0.8, the spread <= 0.1 and (a new object, with the
NDVI term) NDVI dropped by ``NDVI_LOSS_FULL`` or more; ``low`` when the mean probability is
< 0.6 or the spread > 0.2; ``medium`` otherwise. The objects of both kinds go to the file window by
window as they are finished, their columns computed column by column: what is held at once is the
pieces along the windows' open borders, not the map's objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..bands import derive_features
from ..config import JobConfig
from ..errors import InputError
from ..ingest.scene import SceneInfo, member_array
from ..outputs.areas import PixelAreas, pixel_areas
from ..outputs.derive import MASK_NODATA, WindowReader, mask_window, window_reader
from ..outputs.polygons import ObjectCollector, Pieces, stream_polygons
from ..outputs.rasters import windows, write_cog
from ..outputs.store import NODATA, SLOPE
from ..storage import Location, path_or_uri
from .observed import FIRST_CLEAR, NO_DATE

PRE_EVENT = "pre_event"  # folder in OUT holding the pre-event region map
NDVI_LOSS_FULL = 0.2
OUTPUTS = {
    "pre_probability": "pre_probability.tif",
    "dndvi": "dndvi.tif",
    "new_probability": "new_probability.tif",
}
NEW, PRE_EXISTING = "new", "pre-existing"
#: Per-object statistics the change-aware polygons add (``ObjectCollector.reductions``).
OBJECT_LAYERS = {"agreement": "sum", "uncertainty": "sum", "dndvi": "sum", "first_clear": "min"}
#: ``confidence``: high needs all of these, low any of the ``LOW_`` ones (module docstring).
HIGH_PROBABILITY, HIGH_UNCERTAINTY = 0.8, 0.1
LOW_PROBABILITY, LOW_UNCERTAINTY = 0.6, 0.2


def pre_event_config(cfg: JobConfig, out: Location) -> JobConfig:
    """The pre-event region job: ``cfg`` over ``pre_scenes``, into ``out/pre_event``."""
    return cfg.model_copy(
        update={
            "scenes": cfg.pre_scenes,
            "pre_scenes": None,
            "pre_event": None,
            "stac_search": None,
            "out": path_or_uri((out / PRE_EVENT).uri),
        }
    )


def check_pre_event(pre: dict, grid: SceneInfo, event_date, post_dates: list[str | None]) -> None:
    """The pre-event map lies on the region's grid; with ``event_date``, every dated pre-event
    scene is before it and every dated post-event scene on or after it. InputError otherwise."""
    r = pre["region"]
    if (r["height"], r["width"], list(r["transform"])[:6], r["crs"]) != (
        grid.height,
        grid.width,
        list(grid.transform)[:6],
        grid.crs_wkt,
    ):
        raise InputError("the pre-event map is not on the region's grid; the same AOI, crs and resolution are needed")
    if event_date is None:
        return
    day = event_date.isoformat()
    late = [s["source"] for s in pre["scenes"] if s.get("date") and s["date"][:10] >= day]
    early = [d for d in post_dates if d and d[:10] < day]
    if late or early:
        raise InputError(
            f"event_date {day}: pre-event scenes must be dated before it and the others on or after it; "
            f"found pre-event {', '.join(late) or 'none'} on or after it, {len(early)} post-event scene(s) before it"
        )


def change_weight(dndvi: np.ndarray) -> np.ndarray:
    """NDVI loss as a weight: 0 without loss, 1 from a loss of ``NDVI_LOSS_FULL``."""
    return np.clip(-dndvi / NDVI_LOSS_FULL, 0.0, 1.0)


def new_probability(p_post: np.ndarray, p_pre: np.ndarray, dndvi: np.ndarray, use_ndvi: bool) -> np.ndarray:
    """The documented rule (module docstring); nodata where either map (or, used, dNDVI) is."""
    valid = (p_post >= 0) & (p_pre >= 0)
    weight: np.ndarray | float = 1.0
    if use_ndvi:
        valid &= np.isfinite(dndvi)
        weight = change_weight(np.nan_to_num(dndvi))
    return np.where(valid, p_post * (1 - p_pre) * weight, NODATA).astype(np.float32)


@dataclass(frozen=True)
class ChangeSource:
    """Windows of the post- and pre-event maps and NDVI on the region grid."""

    info: SceneInfo
    p_post: WindowReader
    p_pre: WindowReader
    ndvi_post: WindowReader
    ndvi_pre: WindowReader
    slope: WindowReader | None
    uncertainty: WindowReader  # the post-event ensemble spread
    agreement: WindowReader  # the post-event share of members at or above their threshold
    first_clear: WindowReader  # ``observed.FIRST_CLEAR`` of the post-event scenes
    use_ndvi: bool

    def dndvi(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.ndvi_post(y0, y1, x0, x1) - self.ndvi_pre(y0, y1, x0, x1)

    def new(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        w = (y0, y1, x0, x1)
        return new_probability(self.p_post(*w), self.p_pre(*w), self.dndvi(*w), self.use_ndvi)


def change_source(region_dir: Location, pre_dir: Location, info: SceneInfo, use_ndvi: bool) -> ChangeSource:
    """The post-event merge in ``region_dir``, the pre-event one in ``pre_dir``'s ``.work/region``."""
    pre_region = pre_dir / ".work" / "region"
    post = zarr.open_group(str(region_dir / "probability.zarr"), mode="r")
    region = zarr.open_group(str(region_dir / "scene.zarr"), mode="r")
    pre = zarr.open_group(str(pre_region / "probability.zarr"), mode="r")
    return ChangeSource(
        info,
        window_reader(member_array(post, "probability", region_dir / "probability.zarr")),
        window_reader(member_array(pre, "probability", pre_region / "probability.zarr")),
        _ndvi_reader(region_dir / "scene.zarr"),
        _ndvi_reader(pre_region / "scene.zarr"),
        window_reader(post[SLOPE]) if SLOPE in post else None,
        window_reader(member_array(post, "uncertainty", region_dir / "probability.zarr")),
        window_reader(member_array(post, "agreement", region_dir / "probability.zarr")),
        window_reader(member_array(region, FIRST_CLEAR, region_dir / "scene.zarr")),
        use_ndvi,
    )


def _ndvi_reader(store: Location) -> WindowReader:
    """NDVI of a merged region scene store (NaN where the merge has no valid scene)."""
    bands = member_array(zarr.open_group(str(store), mode="r"), "bands", store)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return derive_features(np.asarray(bands[:, y0:y1, x0:x1]), ["NDVI"])[0]

    return read


def write_change_layers(src: ChangeSource, dest: Path, scratch: Path) -> None:
    """``pre_probability.tif``, ``dndvi.tif`` and ``new_probability.tif`` into ``dest``."""

    def dndvi(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.nan_to_num(src.dndvi(y0, y1, x0, x1), nan=NODATA)

    for key, read in (("pre_probability", src.p_pre), ("dndvi", dndvi), ("new_probability", src.new)):
        write_cog(dest / OUTPUTS[key], src.info, read, dtype="float32", nodata=NODATA, scratch=scratch)


def write_change_mask_and_polygons(
    src: ChangeSource, threshold: float, min_pixels: int, mask_dest: Path, polygons_dest: Path, scratch: Path
) -> dict:
    """The mask from ``new_probability`` and the polygons with their ``status``; -> the summary's
    figures that change (landslide pixels and area: the new ones; objects: new and pre-existing)."""
    info = src.info
    write_cog(
        mask_dest,
        info,
        lambda *w: mask_window(src.new(*w), threshold),
        dtype="uint8",
        nodata=MASK_NODATA,
        scratch=scratch,
    )
    tally = _NewTally(pixel_areas(info))
    n_all = stream_polygons(
        polygons_dest, info, _change_objects(src, threshold, min_pixels, tally), min_pixels, src.slope is not None
    )
    return {
        "landslide_pixels": tally.pixels,
        "landslide_area_km2": tally.m2 / 1e6 if tally.areas is not None else None,
        "objects": tally.objects,
        "pre_existing_objects": n_all - tally.objects,
    }


@dataclass
class _NewTally:
    """What is new, added up window by window while the objects are written: mask pixels, their
    area, and new objects of at least the minimum size."""

    areas: PixelAreas | None
    pixels: int = 0
    m2: float = 0.0
    objects: int = 0


def _change_objects(
    src: ChangeSource, threshold: float, min_pixels: int, tally: _NewTally
) -> Iterator[tuple[Pieces, dict[str, np.ndarray]]]:
    """The new and the pre-existing objects with their own columns, window by window as they are
    finished (what is held is the pieces along the windows' open borders); counts in ``tally``."""
    new, old = (ObjectCollector(src.info, min_pixels=min_pixels, reductions=OBJECT_LAYERS) for _ in range(2))
    for y0, y1, x0, x1 in windows(src.info):
        w = (y0, y1, x0, x1)
        p_post, p_pre = src.p_post(*w), src.p_pre(*w)
        is_new = mask_window(src.new(*w), threshold) == 1
        slope = src.slope(*w) if src.slope is not None else None
        first = src.first_clear(*w).astype(np.float64)
        extra = {"agreement": src.agreement(*w), "uncertainty": src.uncertainty(*w), "dndvi": src.dndvi(*w)}
        extra["first_clear"] = np.where(first == NO_DATE, np.inf, first)  # no dated clear view: never the first
        new.add_window(y0, x0, is_new, p_post, slope, extra)
        old.add_window(y0, x0, (p_post >= threshold) & (p_pre >= threshold) & ~is_new, p_post, slope, extra)
        tally.pixels += int(is_new.sum())
        tally.m2 += tally.areas.of_mask(y0, is_new) if tally.areas is not None else 0.0
        for collector, status in ((new, NEW), (old, PRE_EXISTING)):
            part = collector.pop_finished()
            if status == NEW:
                tally.objects += int((part.pixels >= min_pixels).sum())
            yield part, object_columns(part, status, src.use_ndvi)


def rederive_event(
    out: Location,
    manifest: dict,
    info: SceneInfo,
    threshold: float,
    min_pixels: int,
    mask_dest: Path,
    polygons_dest: Path,
    scratch: Path,
) -> dict:
    """``vectorize`` on an event map in ``out``: its mask and polygons from ``new_probability`` again,
    with their status, from the working stores the job keeps (``OUT/.work/region`` and the pre-event
    map's); InputError when they are gone or belong to another job."""
    region_dir, pre_dir = out / ".work" / "region", out / PRE_EVENT
    stores = [region_dir, pre_dir / ".work" / "region"]
    missing = [str(p) for d in stores for p in (d / "probability.zarr", d / "scene.zarr") if not p.exists()]
    if missing:
        raise InputError(
            f"{out} is an event map: its mask and polygons follow new_probability, rebuilt from the job's working "
            f"stores (OUT/.work/region and OUT/{PRE_EVENT}/.work/region), and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} gone: run the job again"
        )
    found = zarr.open_group(str(region_dir / "probability.zarr"), mode="r").attrs.get("job_hash")
    if found != manifest.get("job_hash"):
        raise InputError(
            f"{region_dir} belongs to job {found}, {out}'s run.json to {manifest.get('job_hash')}: run the job again"
        )
    src = change_source(region_dir, pre_dir, info, manifest["event"]["change_ndvi"])
    return write_change_mask_and_polygons(src, threshold, min_pixels, mask_dest, polygons_dest, scratch)


def object_columns(objects: Pieces, status: str, use_ndvi: bool) -> dict[str, np.ndarray]:
    """The change-aware polygons' own columns for objects of one ``status`` (module docstring)."""
    spread = objects.extra["uncertainty"] / objects.pixels
    dndvi = objects.extra["dndvi"] / objects.pixels
    first = objects.extra["first_clear"]
    dated = np.isfinite(first)  # inf: no dated clear view of any pixel
    first_observed = np.full(len(objects), None, object)
    first_observed[dated] = _iso_days(first[dated])
    return {
        "status": np.full(len(objects), status, object),
        "member_agreement": objects.extra["agreement"] / objects.pixels,
        "uncertainty": spread,
        "mean_dndvi": dndvi,
        "first_observed": first_observed,
        "confidence": confidence(objects.prob_sum / objects.pixels, spread, dndvi, status == NEW and use_ndvi),
    }


def confidence(
    mean_probability: np.ndarray, uncertainty: np.ndarray, mean_dndvi: np.ndarray, needs_loss: bool
) -> np.ndarray:
    """Per object, ``high``: mean probability >= ``HIGH_PROBABILITY``, ensemble spread <=
    ``HIGH_UNCERTAINTY`` and (a new object, with the NDVI term) vegetation lost by ``NDVI_LOSS_FULL``
    or more; ``low``: mean probability < ``LOW_PROBABILITY`` or spread > ``LOW_UNCERTAINTY``;
    ``medium`` otherwise (a NaN meets no bound)."""
    low = (mean_probability < LOW_PROBABILITY) | (uncertainty > LOW_UNCERTAINTY)
    lost = (mean_dndvi <= -NDVI_LOSS_FULL) | (not needs_loss)
    high = (mean_probability >= HIGH_PROBABILITY) & (uncertainty <= HIGH_UNCERTAINTY) & lost
    return np.where(low, "low", np.where(high, "high", "medium")).astype(object)


def _iso_days(codes: np.ndarray) -> np.ndarray:
    """``YYYYMMDD`` codes -> ``YYYY-MM-DD``."""
    code = codes.astype(np.int64)
    months = ((code // 10000 - 1970) * 12 + code // 100 % 100 - 1).astype("datetime64[M]")
    days = months.astype("datetime64[D]") + (code % 100 - 1).astype("timedelta64[D]")
    return np.datetime_as_string(days, unit="D").astype(object)
