"""Assemble the 14-layer scene store from a source plan (band files / STAC assets / a stack + DEM).

Output grid: the reference band's grid (10 m for B2), cut to the AOI. Per chunk-aligned
window of that grid: every Sentinel-2 layer is read through a ``WarpedVRT`` (20/60 m bands
resampled, other CRSs reprojected), scaled to reflectance; B10 is filled by the B10 rule when
absent; elevation and slope come from the DEM (slope computed on the DEM's own grid unless
a slope file is given; the DEM may be several tiles); SCL classes, nodata and the AOI polygon
mark pixels invalid. A DEM or SCL leaving part of the scene uncovered is an error naming the
share, unless ``inputs.allow_partial_dem``. Each optical layer keeps a histogram of its valid land
pixels, whose dark-object statistics ``checks/reflectance.py`` judges before inference.
Nothing is held in memory beyond one window, and GDAL's block cache, sized to the blocks a row
of windows reads (``gdal_env.read_cache_mb``: a JPEG 2000 tile serves several rows). Findings
go to ``attrs["warnings"]`` (and the log); what was done goes to ``attrs["ingest"]``.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.warp import transform_bounds

from ..bands import BAND_INDEX, N_BANDS
from ..errors import InputError
from ..gdal_env import bounded_gdal_cache, gdal_cache, read_cache_mb
from .aoi import AOI
from .b10 import b10_fill
from .inputs import S2_LAYERS, SceneInputs
from .resample import Grid, View, WarpedView, open_raster, reference_grid, view
from .scene import SceneWriter
from .sentinel2 import NATIVE_RESOLUTION_M, Scaling, SourcePlan, resolve_scaling
from .terrain import TerrainReader
from .units import scale_from_physical

log = logging.getLogger(__name__)

DEM_RANGE = (-450.0, 8900.0)  # metres: Dead Sea shore .. Everest
SLOPE_RANGE = (0.0, 90.0)  # degrees
SCL_OUTSIDE = 255  # SCL value for pixels the SCL file does not cover
SCL_WATER = 6  # left out of the reflectance statistics: water is legitimately dark, even slightly negative
#: Histogram of reflectance for the dark-object percentiles (``checks/reflectance.py``).
HIST_LO, HIST_STEP, HIST_BINS = -0.5, 0.001, 2000


@dataclass
class RangeCheck:
    lo: float
    hi: float
    n: int = 0
    n_out: int = 0
    total: float = 0.0
    vmin: float = np.inf
    vmax: float = -np.inf
    hist: np.ndarray | None = None  # counts on the HIST_* bins: kept for reflectance layers only

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.n += values.size
        self.n_out += int(((values < self.lo) | (values > self.hi)).sum())
        if self.hist is not None:
            idx = np.clip(((values - HIST_LO) / HIST_STEP).astype(np.int64), 0, HIST_BINS - 1)
            self.hist += np.bincount(idx, minlength=HIST_BINS)
        self.total += float(values.sum(dtype=np.float64))
        self.vmin = min(self.vmin, float(values.min()))
        self.vmax = max(self.vmax, float(values.max()))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def percentile(self, q: float) -> float | None:
        """The ``q`` % percentile (to a bin, ``HIST_STEP``) of the values seen, from the histogram."""
        if self.hist is None or not self.n:
            return None
        i = int(np.searchsorted(np.cumsum(self.hist), q / 100 * self.n))
        return HIST_LO + (i + 0.5) * HIST_STEP

    def dark_objects(self) -> dict:
        """Share of negative values and the darkest 0.1 % / 1 % (reflectance layers only)."""
        if self.hist is None:
            return {}
        negative = int(self.hist[: round(-HIST_LO / HIST_STEP)].sum())
        share = negative / self.n if self.n else None
        return {"negative_share": share, "p0_1": self.percentile(0.1), "p1": self.percentile(1.0)}

    def summary(self) -> dict:
        return {
            **self.dark_objects(),
            "n": self.n,
            "min": self.vmin if self.n else None,
            "max": self.vmax if self.n else None,
            "mean": self.mean if self.n else None,
            "outside_expected": self.n_out,
            "expected": [self.lo, self.hi],
        }


def _res_m(ds) -> float | None:
    if ds.crs is None or not ds.crs.is_projected:
        return None
    return abs(ds.transform.a) * ds.crs.linear_units_factor[1]


def assemble(
    plan: SourcePlan,
    dest: Path | str,
    *,
    chunk: int,
    inputs: SceneInputs,
    nodata: float | None = None,
    notes: list[str] | None = None,
    b10_note: str | None = None,
) -> SceneWriter:
    """Write the scene store for ``plan`` at ``dest``. ``notes``: warnings recorded with the
    scene's own; ``b10_note``: how the caller resolved the B10 fill (``inputs.b10: model_mean``)."""
    with bounded_gdal_cache():
        return _assemble(plan, dest, chunk=chunk, inputs=inputs, nodata=nodata, notes=notes, b10_note=b10_note)


class _Sources:
    """Every source file opened once, and each view of one onto the output grid made once (bands
    of a stack share a file and its view); all closed with ``stack``."""

    def __init__(self, stack: ExitStack):
        self.stack = stack
        self._datasets: dict[str, Any] = {}
        self._views: dict[tuple, View] = {}

    def open(self, path: str, what: str) -> Any:
        if path not in self._datasets:
            self._datasets[path] = self.stack.enter_context(open_raster(path, what))
        return self._datasets[path]

    def opened(self) -> list[Any]:
        """Every dataset read: the files, and the warped views' VRTs (their blocks are cached too)."""
        return [*self._datasets.values(), *(v.vrt for v in self._views.values() if isinstance(v, WarpedView))]

    def view(self, path: str, what: str, grid: Grid, **kw: Any) -> View:
        """``path`` seen on ``grid`` (one output grid per assemble: views are keyed by file and settings)."""
        key = (path, tuple(sorted(kw.items())))
        if key not in self._views:
            self._views[key] = view(self.open(path, what), grid, **kw)
            self.stack.callback(self._views[key].close)
        return self._views[key]


@dataclass
class _Readers:
    """What each output window is read from, and which of its pixels stay valid."""

    optical: dict[str, tuple[View, int]]  # Sentinel-2 layer -> (view, band index)
    scaling: Scaling
    b10_value: float | None  # the fill of B10 when no file gives it
    terrain: TerrainReader
    slope: tuple[View, int] | None  # None: slope computed from the DEM
    scl: tuple[View, int] | None
    scl_classes: np.ndarray  # SCL values that mask a pixel
    aoi: AOI | None


def _assemble(
    plan: SourcePlan,
    dest: Path | str,
    *,
    chunk: int,
    inputs: SceneInputs,
    nodata: float | None,
    notes: list[str] | None,
    b10_note: str | None,
) -> SceneWriter:
    warnings: list[str] = list(notes or []) + list(plan.warnings)
    with ExitStack() as stack:
        sources = _Sources(stack)
        grid, aoi = _output_grid(plan, inputs, sources, warnings)
        scaling, optical, layer_info = _optical_readers(plan, inputs, nodata, sources, grid, warnings)
        b10_value = _b10_layer(plan, inputs, b10_note, warnings, layer_info)
        terrain, slope = _terrain_readers(plan, inputs, nodata, sources, grid, layer_info)
        scl = _scl_reader(plan, inputs, sources, grid, warnings)
        scl_classes = np.asarray(inputs.scl_mask + [SCL_OUTSIDE], dtype=np.int64)
        readers = _Readers(optical, scaling, b10_value, terrain, slope, scl, scl_classes, aoi)
        writer = SceneWriter(
            dest,
            grid.height,
            grid.width,
            crs_wkt=grid.crs.to_wkt(),
            transform=tuple(grid.transform)[:6],
            chunk=chunk,
            source={"path": plan.root, "kind": plan.kind, "nodata": nodata},
        )
        unit_factor = None
        if inputs.units == "l4s":  # physical -> L4S .h5 convention (reflectance as DN x 10000) / mean
            unit_factor = scale_from_physical("l4s").astype(np.float32)[:, None, None]
        checks = _range_checks(plan, inputs)
        reads = [(ds, _to_pixels(ds, grid)) for ds in sources.opened()]
        with gdal_cache(read_cache_mb(writer.chunk, (grid.height, grid.width), reads)):
            masked = _write_windows(writer, readers, checks, unit_factor)
        warnings += _range_warnings(plan, inputs, scaling, checks)
        warnings += _scl_warnings(plan, inputs, masked, grid.height * grid.width)
        warnings += _coverage_warnings(plan, inputs, masked)
        for msg in warnings:
            log.warning("%s", msg)
        writer.group.attrs["warnings"] = warnings
        record = _ingest_record(plan, inputs, grid, aoi, layer_info, scaling, unit_factor, masked, checks)
        writer.group.attrs["ingest"] = _jsonable(record)
    return writer


def _to_pixels(ds, grid: Grid) -> Affine:
    """Grid pixels -> ``ds``'s pixels: exact in one CRS (or none), else linear over the grid's
    bounds (which is all the GDAL cache's sizing needs)."""
    if ds.crs is None or ds.crs == grid.crs:
        return ~ds.transform @ grid.transform
    left, bottom, right, top = transform_bounds(grid.crs, ds.crs, *grid.bounds())
    (c0, r0), (c1, r1) = ~ds.transform @ (left, top), ~ds.transform @ (right, bottom)
    return Affine((c1 - c0) / grid.width, 0.0, c0, 0.0, (r1 - r0) / grid.height, r0)


def _output_grid(
    plan: SourcePlan, inputs: SceneInputs, sources: _Sources, warnings: list[str]
) -> tuple[Grid, AOI | None]:
    """The reference layer's grid, cut to the AOI when there is one."""
    if inputs.reference not in plan.layers:
        raise InputError(f"reference layer {inputs.reference} has no source in {plan.root}")
    ref = plan.layers[inputs.reference]
    full_grid = reference_grid(sources.open(ref.path, f"reference layer {inputs.reference}"))
    res_m = full_grid.res_m()
    if res_m is None or abs(res_m - 10.0) > 1.0:
        warnings.append(
            f"reference layer {inputs.reference} ({ref.path}) has {full_grid.res:g} "
            f"{'m' if res_m else 'CRS units'} pixels; L4S models are trained on 10 m pixels"
        )
    if inputs.aoi is None and inputs.bbox is None:
        return full_grid, None
    aoi = AOI(inputs, full_grid)
    if aoi.partial:
        warnings.append(f"AOI {aoi.description} reaches beyond the scene; cut to the scene's extent")
    return aoi.grid, aoi


def _optical_readers(
    plan: SourcePlan,
    inputs: SceneInputs,
    nodata: float | None,
    sources: _Sources,
    grid: Grid,
    warnings: list[str],
) -> tuple[Scaling, dict[str, tuple[View, int]], dict[str, dict]]:
    """Scaling to reflectance, a view on ``grid`` and a description of each Sentinel-2 layer."""
    dtypes = {}
    for layer, src in plan.layers.items():
        ds = sources.open(src.path, f"layer {layer}")
        if src.bidx > ds.count:
            raise InputError(f"layer {layer}: {src.path} has {ds.count} band(s), band {src.bidx} requested")
        dtypes[layer] = np.dtype(ds.dtypes[src.bidx - 1])
    scaling = resolve_scaling(plan, inputs.reflectance, dtypes, warnings)
    readers: dict[str, tuple[View, int]] = {}
    layer_info: dict[str, dict] = {}
    for layer, src in plan.layers.items():
        ds = sources.open(src.path, f"layer {layer}")
        src_nd = _source_nodata(inputs, nodata, ds.nodatavals[src.bidx - 1], scaling)
        reader = sources.view(src.path, f"layer {layer}", grid, resampling=inputs.resampling, src_nodata=src_nd)
        readers[layer] = (reader, src.bidx)
        native = _res_m(ds)
        layer_info[layer] = {
            **src.describe(),
            "resolution": native if native else abs(ds.transform.a),
            "crs": ds.crs.to_string() if ds.crs else None,
            "resampling": "none (same grid)" if reader.same_grid else inputs.resampling,
            "scaling": scaling.how[layer],
            "nodata": src_nd,
        }
        if src.band and native and src.band in NATIVE_RESOLUTION_M and native > NATIVE_RESOLUTION_M[src.band] + 0.5:
            layer_info[layer]["note"] = f"coarser than the band's native {NATIVE_RESOLUTION_M[src.band]} m"
    return scaling, readers, layer_info


def _source_nodata(
    inputs: SceneInputs, nodata: float | None, file_nodata: float | None, scaling: Scaling
) -> float | None:
    """A band file's raw nodata: ``inputs.nodata``, else the job's, else the file's, else the DN rule's."""
    for value in (inputs.nodata, nodata, file_nodata):
        if value is not None:
            return value
    return scaling.nodata_dn


def _b10_layer(
    plan: SourcePlan, inputs: SceneInputs, b10_note: str | None, warnings: list[str], layer_info: dict[str, dict]
) -> float | None:
    """The B10 fill value when no file gives B10 (warned and described), else None."""
    if "B10" in plan.layers:
        return None
    value, rule = b10_fill(inputs, b10_note)
    warnings.append(
        f"layer B10 (cirrus) is not in the inputs (Sentinel-2 L2A products drop it): {rule}; "
        "those pixels stay valid. Models that use B10 see a constant there, unlike their training data"
    )
    layer_info["B10"] = {"filled": value, "rule": rule}
    return value


def _terrain_readers(
    plan: SourcePlan,
    inputs: SceneInputs,
    nodata: float | None,
    sources: _Sources,
    grid: Grid,
    layer_info: dict[str, dict],
) -> tuple[TerrainReader, tuple[View, int] | None]:
    """Elevation (and slope, unless a slope file is given) from the DEM; the slope file's view."""
    if plan.dem is None:
        raise InputError(
            f"no DEM for {plan.root}: set inputs.dem to a DEM file (metres; any CRS and resolution, it is "
            "reprojected onto the scene grid, and slope is computed from it unless inputs.slope is given)"
        )
    # The job's nodata applies to every layer of a 14-band stack (as for a plain stack ingest).
    stack_nodata = nodata if plan.kind == "stack" else None
    dem_ds = sources.open(plan.dem.path, "DEM")
    terrain = TerrainReader(
        list(plan.dem.tiles) or plan.dem.path,
        grid,
        bidx=plan.dem.bidx,
        compute_slope=plan.slope is None,
        resampling=inputs.resampling,
        nodata=stack_nodata,
    )
    sources.stack.callback(terrain.close)
    layer_info["DEM"] = {
        **plan.dem.describe(),
        "crs": dem_ds.crs.to_string() if dem_ds.crs else None,
        "resolution": abs(dem_ds.transform.a),
        "reprojected": dem_ds.crs != grid.crs or dem_ds.transform.a != grid.res,
        "resampling": inputs.resampling,
    }
    if plan.slope is None:
        layer_info["slope"] = {
            "computed_from": plan.dem.path,
            "method": "Horn 3x3 on the DEM grid, degrees, pixel sizes in metres",
            "resampling": inputs.resampling,
        }
        return terrain, None
    slope_nd = stack_nodata if stack_nodata is not None else sources.open(plan.slope.path, "slope").nodata
    slope = sources.view(plan.slope.path, "slope", grid, resampling=inputs.resampling, src_nodata=slope_nd)
    layer_info["slope"] = {**plan.slope.describe(), "resampling": inputs.resampling}
    return terrain, (slope, plan.slope.bidx)


def _scl_reader(
    plan: SourcePlan, inputs: SceneInputs, sources: _Sources, grid: Grid, warnings: list[str]
) -> tuple[View, int] | None:
    """The SCL file's view on ``grid`` (nearest; outside it: ``SCL_OUTSIDE``); warned when absent."""
    if plan.scl is not None:
        scl = sources.view(
            plan.scl.path, "SCL", grid, resampling="nearest", src_nodata=None, dtype="uint8", nodata=SCL_OUTSIDE
        )
        return scl, plan.scl.bidx
    if inputs.use_scl and plan.kind != "stack":
        warnings.append(
            f"no SCL (scene classification) found for {plan.root}: clouds and cloud shadows are "
            "not masked; set inputs.scl, or inputs.use_scl: false to silence this"
        )
    return None


def _range_checks(plan: SourcePlan, inputs: SceneInputs) -> dict[str, RangeCheck]:
    """Value statistics, in physical units, of every layer read from a file, slope and DEM."""
    lo, hi = inputs.reflectance.expected_range
    checks = {layer: RangeCheck(lo, hi, hist=np.zeros(HIST_BINS, np.int64)) for layer in plan.layers}
    checks["slope"] = RangeCheck(*SLOPE_RANGE)
    checks["DEM"] = RangeCheck(*DEM_RANGE)
    return checks


def _write_windows(
    writer: SceneWriter, readers: _Readers, checks: dict[str, RangeCheck], unit_factor: np.ndarray | None
) -> dict[str, int]:
    """Read, check, mask and write every window of the store; -> masked pixel counts by reason."""
    masked = {"outside_aoi": 0, "nodata": 0, "scl": 0, "scene": 0, "dem_uncovered": 0, "scl_uncovered": 0}
    for y0, y1, x0, x1 in writer.windows():
        out = _read_window(readers, y0, y1, x0, x1)
        keep, land = _valid_pixels(readers, out, (y0, y1, x0, x1), masked)
        for name, check in checks.items():
            check.update(out[BAND_INDEX[name]][land if check.hist is not None else keep])
        if unit_factor is not None:
            out *= unit_factor
            if readers.b10_value is not None:  # the fill is given in output units
                out[BAND_INDEX["B10"]] = np.float32(readers.b10_value)
        out[:, ~keep] = np.nan
        writer.write(y0, x0, out, nodata=None)
    return masked


def _read_window(readers: _Readers, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The 14 layers of one window (physical units), before masking."""
    out = np.empty((N_BANDS, y1 - y0, x1 - x0), np.float32)
    scaling = readers.scaling
    for i, layer in enumerate(S2_LAYERS):
        if layer in readers.optical:
            reader, bidx = readers.optical[layer]
            raw = reader.read(bidx, y0, y1, x0, x1, f"layer {layer}")
            out[i] = raw * np.float32(scaling.mul[layer]) + np.float32(scaling.add[layer])
        else:
            out[i] = np.float32(readers.b10_value)
    elev, slope = readers.terrain.read(y0, y1, x0, x1)
    if readers.slope is not None:  # a slope file: the terrain reader computes none
        reader, bidx = readers.slope
        slope = reader.read(bidx, y0, y1, x0, x1, "slope")
    out[BAND_INDEX["slope"]] = slope
    out[BAND_INDEX["DEM"]] = elev
    return out


def _valid_pixels(
    readers: _Readers, out: np.ndarray, window: tuple[int, int, int, int], masked: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels inside the AOI, finite in every layer and not of a masked SCL class, and those of them
    not SCL water (for the reflectance statistics); counts the rest, and the pixels of the scene
    (optical layers valid) that the DEM or the SCL leave uncovered."""
    y0, y1, x0, x1 = window
    keep = np.ones(out.shape[1:], bool)
    if readers.aoi is not None:
        keep = readers.aoi.inside(y0, y1, x0, x1)
        masked["outside_aoi"] += int((~keep).sum())
    scene = keep & np.isfinite(out[: len(S2_LAYERS)]).all(axis=0)
    masked["scene"] += int(scene.sum())
    masked["dem_uncovered"] += int((scene & ~np.isfinite(out[BAND_INDEX["DEM"]])).sum())
    finite = np.isfinite(out).all(axis=0)
    masked["nodata"] += int((keep & ~finite).sum())
    keep &= finite
    land = keep
    if readers.scl is not None:
        reader, bidx = readers.scl
        scl = reader.read(bidx, y0, y1, x0, x1, "SCL")
        masked["scl_uncovered"] += int((scene & (scl == SCL_OUTSIDE)).sum())
        cloudy = np.isin(scl, readers.scl_classes)
        masked["scl"] += int((keep & cloudy).sum())
        keep &= ~cloudy
        land = keep & (scl != SCL_WATER)
    return keep, land


def _range_warnings(
    plan: SourcePlan, inputs: SceneInputs, scaling: Scaling, checks: dict[str, RangeCheck]
) -> list[str]:
    """Values outside their expected range, and the signs of unscaled or mis-offset reflectance."""
    warnings = []
    for name, check in checks.items():
        limit = inputs.reflectance.max_outside_fraction if name in plan.layers else 0.01
        if check.n and check.n_out > limit * check.n:
            frac = check.n_out / check.n
            hint = (
                "check inputs.reflectance (mode, boa_add_offset, quantification)"
                if name in plan.layers
                else "slope must be in degrees"
                if name == "slope"
                else "the DEM must be in metres"
            )
            warnings.append(
                f"layer {name}: {frac:.1%} of valid pixels outside the expected range "
                f"[{check.lo:g}, {check.hi:g}] (min {check.vmin:.4g}, max {check.vmax:.4g}, "
                f"mean {check.mean:.4g}); {hint}"
            )
        if name in plan.layers and check.n and check.mean > 5:
            warnings.append(
                f"layer {name}: mean {check.mean:.4g} looks like digital numbers, not reflectance "
                "(0..1); set inputs.reflectance.mode to 'l2a'"
            )
    b2 = checks.get("B2")
    if b2 is not None and b2.n >= 10000 and b2.vmin > 0.08 and scaling.mode == "l2a":
        warnings.append(
            f"layer B2: darkest valid pixel has reflectance {b2.vmin:.3f}; scenes usually hold "
            "darker ones (water, shadow, forest). A missing BOA_ADD_OFFSET (-1000) would do this"
        )
    return warnings


def _coverage_warnings(plan: SourcePlan, inputs: SceneInputs, masked: dict[str, int]) -> list[str]:
    """A DEM or SCL leaving part of the scene uncovered: an error, or with ``allow_partial_dem`` a warning."""
    found = []
    for name, what in (("dem_uncovered", f"DEM ({plan.dem.origin if plan.dem else ''})"), ("scl_uncovered", "SCL")):
        if masked[name]:
            share = masked[name] / max(masked["scene"], 1)
            found.append(f"the {what} does not cover {share:.2%} of the scene's valid area ({masked[name]} pixels)")
    if found and not inputs.allow_partial_dem:
        raise InputError(
            f"{plan.root}: {'; '.join(found)}. Give DEM tiles (inputs.dem: a list, a glob or a STAC "
            "ItemCollection) or an SCL that cover the scene, or --allow-partial-dem (inputs.allow_partial_dem: "
            "true) to map the covered part only (the rest is no data)"
        )
    return [f"{msg}: those pixels are no data (allow_partial_dem)" for msg in found]


def _scl_warnings(plan: SourcePlan, inputs: SceneInputs, masked: dict[str, int], n_total: int) -> list[str]:
    """SCL masking most of the scene (inside the AOI) is worth a look."""
    inside = max(n_total - masked["outside_aoi"], 1)
    if plan.scl is None or masked["scl"] <= 0.5 * inside:
        return []
    classes = ", ".join(map(str, inputs.scl_mask))
    return [f"SCL masks {masked['scl'] / inside:.0%} of the scene (classes {classes})"]


def _ingest_record(
    plan: SourcePlan,
    inputs: SceneInputs,
    grid: Grid,
    aoi: AOI | None,
    layer_info: dict[str, dict],
    scaling: Scaling,
    unit_factor: np.ndarray | None,
    masked: dict[str, int],
    checks: dict[str, RangeCheck],
) -> dict:
    """What was done (``attrs["ingest"]``): grid, AOI, per-layer sources, scaling, units, masking, stats."""
    return {
        "kind": plan.kind,
        "root": plan.root,
        "grid": {
            "reference": inputs.reference,
            "crs": grid.crs.to_string(),
            "resolution": grid.res,
            "width": grid.width,
            "height": grid.height,
            "transform": list(grid.transform)[:6],
            "reference_window": list(aoi.window) if aoi else None,
        },
        "aoi": aoi.description if aoi else None,
        "layers": layer_info,
        "reflectance": scaling.mode,
        "units": "l4s" if inputs.units == "l4s" else "physical",  # 'auto' unresolved (no job): physical
        "unit_factors": unit_factor.ravel().tolist() if unit_factor is not None else None,
        "processing_baseline": plan.processing_baseline,
        "baseline_from": plan.baseline_from,
        "acquired": plan.acquired.isoformat() if plan.acquired else None,
        "product_level": plan.product_level,
        "scl": {**plan.scl.describe(), "masked_classes": inputs.scl_mask} if plan.scl else None,
        "masked_pixels": masked,
        "coverage": {
            "dem_uncovered_share": masked["dem_uncovered"] / max(masked["scene"], 1),
            "scl_uncovered_share": masked["scl_uncovered"] / max(masked["scene"], 1),
        },
        "stats_physical_units": {k: c.summary() for k, c in checks.items()},
        "notes": plan.notes,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)
