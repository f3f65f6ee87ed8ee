"""Assemble the 14-layer scene store from a source plan (band files / STAC assets / a stack + DEM).

Output grid: the reference band's grid (10 m for B2), cut to the AOI. Per chunk-aligned
window of that grid: every Sentinel-2 layer is read through a ``WarpedVRT`` (20/60 m bands
resampled, other CRSs reprojected), scaled to reflectance; B10 is filled by the B10 rule when
absent; elevation and slope come from the DEM (slope computed on the DEM's own grid unless
a slope file is given); SCL classes, nodata and the AOI polygon mark pixels invalid.
Nothing is held in memory beyond one window. Findings go to ``attrs["warnings"]`` (and the
log); what was done goes to ``attrs["ingest"]``.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bands import BAND_INDEX, N_BANDS
from ..errors import InputError
from ..gdal_env import bounded_gdal_cache
from .aoi import AOI
from .inputs import S2_LAYERS, SceneInputs
from .resample import open_raster, reference_grid, view
from .scene import SceneWriter
from .sentinel2 import NATIVE_RESOLUTION_M, SourcePlan, resolve_scaling
from .terrain import TerrainReader
from .units import scale_from_physical

log = logging.getLogger(__name__)

DEM_RANGE = (-450.0, 8900.0)  # metres: Dead Sea shore .. Everest
SLOPE_RANGE = (0.0, 90.0)  # degrees
SCL_OUTSIDE = 255  # SCL value for pixels the SCL file does not cover


@dataclass
class RangeCheck:
    lo: float
    hi: float
    n: int = 0
    n_out: int = 0
    total: float = 0.0
    vmin: float = np.inf
    vmax: float = -np.inf

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.n += values.size
        self.n_out += int(((values < self.lo) | (values > self.hi)).sum())
        self.total += float(values.sum(dtype=np.float64))
        self.vmin = min(self.vmin, float(values.min()))
        self.vmax = max(self.vmax, float(values.max()))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def summary(self) -> dict:
        return {
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


def _b10_fill(inputs: SceneInputs, b10_note: str | None) -> tuple[float, str]:
    if inputs.b10 == "error":
        raise InputError(
            "layer B10 (cirrus) is missing from the inputs (Sentinel-2 L2A products do not carry it) "
            "and inputs.b10 is 'error'; map B10 to a file in inputs.bands (e.g. from the L1C product) "
            "or choose another B10 rule (zero, constant, model_mean)"
        )
    if inputs.b10 == "model_mean":
        raise InputError("inputs.b10 'model_mean' needs the job's models: ingest through ingest_job(cfg, ...)")
    value = 0.0 if inputs.b10 == "zero" else float(inputs.b10_value)
    rule = b10_note or (
        "zero-filled (inputs.b10 = 'zero')"
        if inputs.b10 == "zero"
        else f"filled with {value:g} (inputs.b10 = 'constant')"
    )
    return value, rule


def assemble(
    plan: SourcePlan,
    dest: Path,
    *,
    chunk: int,
    inputs: SceneInputs,
    nodata: float | None = None,
    notes: list[str] | None = None,
    b10_note: str | None = None,
) -> SceneWriter:
    with bounded_gdal_cache():
        return _assemble(plan, dest, chunk=chunk, inputs=inputs, nodata=nodata, notes=notes, b10_note=b10_note)


def _assemble(
    plan: SourcePlan,
    dest: Path,
    *,
    chunk: int,
    inputs: SceneInputs,
    nodata: float | None,
    notes: list[str] | None,
    b10_note: str | None,
) -> SceneWriter:
    warnings: list[str] = list(notes or []) + list(plan.warnings)
    with ExitStack() as stack:
        datasets: dict[str, object] = {}

        def ds_for(path: str, what: str):
            if path not in datasets:
                datasets[path] = stack.enter_context(open_raster(path, what))
            return datasets[path]

        if inputs.reference not in plan.layers:
            raise InputError(f"reference layer {inputs.reference} has no source in {plan.root}")
        ref = plan.layers[inputs.reference]
        full_grid = reference_grid(ds_for(ref.path, f"reference layer {inputs.reference}"))
        res_m = full_grid.res_m()
        if res_m is None or abs(res_m - 10.0) > 1.0:
            warnings.append(
                f"reference layer {inputs.reference} ({ref.path}) has {full_grid.res:g} "
                f"{'m' if res_m else 'CRS units'} pixels; L4S models are trained on 10 m pixels"
            )
        aoi = None
        grid = full_grid
        if inputs.aoi is not None or inputs.bbox is not None:
            aoi = AOI(inputs, full_grid)
            grid = aoi.grid
            if aoi.partial:
                warnings.append(f"AOI {aoi.description} reaches beyond the scene; cut to the scene's extent")

        dtypes = {}
        for layer, src in plan.layers.items():
            ds = ds_for(src.path, f"layer {layer}")
            if src.bidx > ds.count:
                raise InputError(f"layer {layer}: {src.path} has {ds.count} band(s), band {src.bidx} requested")
            dtypes[layer] = np.dtype(ds.dtypes[src.bidx - 1])
        scaling = resolve_scaling(plan, inputs.reflectance, dtypes, warnings)

        # Views of every source on the output grid (one per file: bands of a stack share it).
        views: dict[tuple, object] = {}

        def view_for(path: str, what: str, **kw):
            key = (path, tuple(sorted(kw.items())))
            if key not in views:
                views[key] = view(ds_for(path, what), grid, **kw)
                stack.callback(views[key].close)
            return views[key]

        readers: dict[str, tuple] = {}
        layer_info: dict[str, dict] = {}
        for layer, src in plan.layers.items():
            ds = ds_for(src.path, f"layer {layer}")
            if inputs.nodata is not None:
                src_nd = inputs.nodata
            elif nodata is not None:
                src_nd = nodata
            elif ds.nodatavals[src.bidx - 1] is not None:
                src_nd = ds.nodatavals[src.bidx - 1]
            else:
                src_nd = scaling.nodata_dn
            readers[layer] = (
                view_for(src.path, f"layer {layer}", resampling=inputs.resampling, src_nodata=src_nd),
                src.bidx,
            )
            native = _res_m(ds)
            same = readers[layer][0].same_grid
            layer_info[layer] = {
                **src.describe(),
                "resolution": native if native else abs(ds.transform.a),
                "crs": ds.crs.to_string() if ds.crs else None,
                "resampling": "none (same grid)" if same else inputs.resampling,
                "scaling": scaling.how[layer],
                "nodata": src_nd,
            }
            if src.band and native and src.band in NATIVE_RESOLUTION_M and native > NATIVE_RESOLUTION_M[src.band] + 0.5:
                layer_info[layer]["note"] = f"coarser than the band's native {NATIVE_RESOLUTION_M[src.band]} m"

        b10_value = None
        if "B10" not in plan.layers:
            b10_value, rule = _b10_fill(inputs, b10_note)
            warnings.append(
                f"layer B10 (cirrus) is not in the inputs (Sentinel-2 L2A products drop it): {rule}; "
                "those pixels stay valid. Models that use B10 see a constant there, unlike their training data"
            )
            layer_info["B10"] = {"filled": b10_value, "rule": rule}

        if plan.dem is None:
            raise InputError(
                f"no DEM for {plan.root}: set inputs.dem to a DEM file (metres; any CRS and resolution, it is "
                "reprojected onto the scene grid, and slope is computed from it unless inputs.slope is given)"
            )
        # The job's nodata applies to every layer of a 14-band stack (as for a plain stack ingest).
        stack_nodata = nodata if plan.kind == "stack" else None
        dem_ds = ds_for(plan.dem.path, "DEM")
        terrain = TerrainReader(
            plan.dem.path,
            grid,
            bidx=plan.dem.bidx,
            compute_slope=plan.slope is None,
            resampling=inputs.resampling,
            nodata=stack_nodata,
        )
        stack.callback(terrain.close)
        layer_info["DEM"] = {
            **plan.dem.describe(),
            "crs": dem_ds.crs.to_string() if dem_ds.crs else None,
            "resolution": abs(dem_ds.transform.a),
            "reprojected": dem_ds.crs != grid.crs or dem_ds.transform.a != grid.res,
            "resampling": inputs.resampling,
        }
        slope_reader = None
        if plan.slope is not None:
            slope_nd = stack_nodata if stack_nodata is not None else ds_for(plan.slope.path, "slope").nodata
            slope_reader = (
                view_for(plan.slope.path, "slope", resampling=inputs.resampling, src_nodata=slope_nd),
                plan.slope.bidx,
            )
            layer_info["slope"] = {**plan.slope.describe(), "resampling": inputs.resampling}
        else:
            layer_info["slope"] = {
                "computed_from": plan.dem.path,
                "method": "Horn 3x3 on the DEM grid, degrees, pixel sizes in metres",
                "resampling": inputs.resampling,
            }
        scl_reader = None
        if plan.scl is not None:
            scl_reader = (
                view_for(
                    plan.scl.path, "SCL", resampling="nearest", src_nodata=None, dtype="uint8", nodata=SCL_OUTSIDE
                ),
                plan.scl.bidx,
            )
        elif inputs.use_scl and plan.kind != "stack":
            warnings.append(
                f"no SCL (scene classification) found for {plan.root}: clouds and cloud shadows are "
                "not masked; set inputs.scl, or inputs.use_scl: false to silence this"
            )

        writer = SceneWriter(
            dest,
            grid.height,
            grid.width,
            crs_wkt=grid.crs.to_wkt(),
            transform=tuple(grid.transform)[:6],
            chunk=chunk,
            source={"path": plan.root, "kind": plan.kind, "nodata": nodata},
        )
        lo, hi = inputs.reflectance.expected_range
        unit_factor = None
        if inputs.units == "l4s":  # physical -> L4S .h5 convention (reflectance as DN x 10000) / mean
            unit_factor = scale_from_physical("l4s").astype(np.float32)[:, None, None]
        checks = {layer: RangeCheck(lo, hi) for layer in plan.layers}
        checks["slope"] = RangeCheck(*SLOPE_RANGE)
        checks["DEM"] = RangeCheck(*DEM_RANGE)
        masked = {"outside_aoi": 0, "nodata": 0, "scl": 0}
        scl_mask = np.asarray(inputs.scl_mask + [SCL_OUTSIDE], dtype=np.int64)
        for y0, y1, x0, x1 in writer.windows():
            h, w = y1 - y0, x1 - x0
            out = np.empty((N_BANDS, h, w), np.float32)
            for i, layer in enumerate(S2_LAYERS):
                if layer in readers:
                    reader, bidx = readers[layer]
                    raw = reader.read(bidx, y0, y1, x0, x1, f"layer {layer}")
                    out[i] = raw * np.float32(scaling.mul[layer]) + np.float32(scaling.add[layer])
                else:
                    out[i] = np.float32(b10_value)
            elev, slope = terrain.read(y0, y1, x0, x1)
            if slope is None:
                reader, bidx = slope_reader
                slope = reader.read(bidx, y0, y1, x0, x1, "slope")
            out[BAND_INDEX["slope"]] = slope
            out[BAND_INDEX["DEM"]] = elev
            keep = np.ones((h, w), bool)
            if aoi is not None:
                keep = aoi.inside(y0, y1, x0, x1)
                masked["outside_aoi"] += int((~keep).sum())
            finite = np.isfinite(out).all(axis=0)
            masked["nodata"] += int((keep & ~finite).sum())
            keep &= finite
            if scl_reader is not None:
                reader, bidx = scl_reader
                cls = reader.read(bidx, y0, y1, x0, x1, "SCL")
                cloudy = np.isin(cls, scl_mask)
                masked["scl"] += int((keep & cloudy).sum())
                keep &= ~cloudy
            for name, check in checks.items():
                check.update(out[BAND_INDEX[name]][keep])
            if unit_factor is not None:
                out *= unit_factor
                if b10_value is not None:  # the fill is given in output units
                    out[BAND_INDEX["B10"]] = np.float32(b10_value)
            out[:, ~keep] = np.nan
            writer.write(y0, x0, out, nodata=None)

        n_total = grid.height * grid.width
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
        if plan.scl is not None and masked["scl"] > 0.5 * max(n_total - masked["outside_aoi"], 1):
            warnings.append(
                f"SCL masks {masked['scl'] / max(n_total - masked['outside_aoi'], 1):.0%} of the "
                "scene (classes " + ", ".join(map(str, inputs.scl_mask)) + ")"
            )

        for msg in warnings:
            log.warning("%s", msg)
        writer.group.attrs["warnings"] = warnings
        writer.group.attrs["ingest"] = _jsonable(
            {
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
                "stats_physical_units": {k: c.summary() for k, c in checks.items()},
                "notes": plan.notes,
            }
        )
    return writer


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
