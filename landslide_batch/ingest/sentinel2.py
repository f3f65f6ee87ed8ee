"""Sentinel-2 band files: discovery in a folder / SAFE product, band mapping, reflectance scaling.

The 12 Sentinel-2 layers of an L4S scene are B1..B12 *with* B10 (cirrus) and *without*
B8A. Default mapping, L4S layer <- product band::

    B1<-B01 (60 m)  B2<-B02 (10 m)  B3<-B03 (10 m)  B4<-B04 (10 m)  B5<-B05 (20 m)
    B6<-B06 (20 m)  B7<-B07 (20 m)  B8<-B08 (10 m)  B9<-B09 (60 m)  B10<-B10 (60 m, L1C only)
    B11<-B11 (20 m) B12<-B12 (20 m)

B8A (narrow NIR, 20 m) is unused unless ``inputs.bands`` maps a layer to it. When a band is
available at several resolutions (L2A ships R10m/R20m/R60m copies) the finest is used.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..storage import is_uri, location, storage_errors
from .inputs import S2_LAYERS, ReflectanceScaling, SceneInputs, looks_like_path
from .layer_source import LayerSource

log = logging.getLogger(__name__)


#: Product band tokens, in the order of ``band_id`` in Sentinel-2 metadata (0..12).
PRODUCT_BANDS: tuple[str, ...] = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)
#: L4S layer -> default product band.
DEFAULT_BAND_FOR_LAYER: dict[str, str] = {layer: f"B{int(layer[1:]):02d}" for layer in S2_LAYERS}
#: STAC common names (and Earth Search asset keys) -> product band.
COMMON_NAMES: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}
NATIVE_RESOLUTION_M: dict[str, int] = {
    "B01": 60,
    "B02": 10,
    "B03": 10,
    "B04": 10,
    "B05": 20,
    "B06": 20,
    "B07": 20,
    "B08": 10,
    "B8A": 20,
    "B09": 60,
    "B10": 60,
    "B11": 20,
    "B12": 20,
    "SCL": 20,
}
RASTER_SUFFIXES = {".jp2", ".tif", ".tiff", ".vrt", ".img"}
#: Baseline 04.00 (BOA_ADD_OFFSET = -1000) became operational on this date.
BASELINE_0400_DATE = date(2022, 1, 25)

_BAND_TOKEN = re.compile(r"^B(0?[1-9]|1[0-2]|8A)$", re.IGNORECASE)
_RES_TOKEN = re.compile(r"^(\d{1,3})m$", re.IGNORECASE)
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})(?=_|\.|$)")
_DATE_IN_NAME = re.compile(r"(?<!\d)(20\d{2})(\d{2})(\d{2})T\d{6}")
_SKIP_DIRS = {"QI_DATA", "AUX_DATA", "HTML", "rep_info", "DATASTRIP"}
_DEM_TOKENS = {"dem", "dtm", "elevation", "srtm", "copdem", "alos"}


def canonical_band(token: str) -> str | None:
    """``"B2"``, ``"b02"``, ``"8a"``, ``"blue"``, ``"scl"`` -> ``"B02"`` / ``"B8A"`` / ``"SCL"``; else None."""
    t = str(token).strip()
    if t.upper() == "SCL":
        return "SCL"
    if t.lower() in COMMON_NAMES:
        return COMMON_NAMES[t.lower()]
    if re.fullmatch(r"0?[1-9]|1[0-2]|8A", t, re.IGNORECASE):
        t = "B" + t
    m = _BAND_TOKEN.match(t)
    if not m:
        return None
    num = m.group(1).upper()
    return "B8A" if num == "8A" else f"B{int(num):02d}"


@dataclass
class SourcePlan:
    """Everything found about the inputs of one scene, before any pixel is read."""

    kind: str  # sentinel2-folder | stac-item | stack
    root: str
    layers: dict[str, LayerSource] = field(default_factory=dict)  # L4S layer -> source (B10 may be absent)
    dem: LayerSource | None = None
    slope: LayerSource | None = None
    scl: LayerSource | None = None
    boa_add_offset: dict[str, float] = field(default_factory=dict)  # product band -> offset (metadata)
    quantification: float | None = None
    processing_baseline: str | None = None
    baseline_from: str = ""
    acquired: date | None = None
    product_level: str | None = None  # L2A | L1C | None
    default_scaling: str = "auto"  # what "auto" means for this kind of input
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- discovery


def _tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[_\-.\s]+", stem) if t]


def classify_file(path: Path) -> tuple[str | None, int | None]:
    """Band token (``B02``, ``B8A``, ``SCL``, ``DEM``, ``SLOPE``) and resolution in metres from a file name."""
    stem = path.stem
    if stem.upper().startswith(("MSK_", "PVI", "TCI")):
        return None, None
    toks = _tokens(stem)
    res = next((int(m.group(1)) for t in toks if (m := _RES_TOKEN.match(t))), None)
    if stem.lower() in COMMON_NAMES or stem.upper() == "SCL":
        return canonical_band(stem), res
    for t in toks:
        if t.upper() == "SCL" or _BAND_TOKEN.match(t):
            return canonical_band(t), res
    low = {t.lower() for t in toks}
    if "slope" in low:
        return "SLOPE", res
    if low & _DEM_TOKENS:
        return "DEM", res
    return None, res


def _file_resolution_m(path: Path) -> float | None:
    import rasterio

    try:
        with rasterio.open(path) as ds:
            factor = ds.crs.linear_units_factor[1] if ds.crs is not None and ds.crs.is_projected else None
            return abs(ds.transform.a) * factor if factor else None
    except rasterio.errors.RasterioError as exc:  # not a raster GDAL reads: the name alone decides
        log.warning("%s: not readable as a raster (%s); its resolution is taken from its name", path, exc)
        return None


def discover_files(folder: Path) -> dict[str, list[tuple[float, Path]]]:
    """Walk ``folder`` (a SAFE product or any folder of band files) -> token -> [(resolution m, path)]."""
    found: dict[str, list[tuple[float, Path]]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in RASTER_SUFFIXES or name.startswith("."):
                continue
            token, named_res = classify_file(path)
            if token is None:
                continue
            res = named_res if named_res is not None else _file_resolution_m(path)
            found.setdefault(token, []).append((float(res) if res else float("inf"), path))
    return found


def _pick(token: str, candidates: list[tuple[float, Path]]) -> tuple[Path, float]:
    best = min(r for r, _ in candidates)
    at_best = [p for r, p in candidates if r == best]
    if len(at_best) > 1:
        listing = "\n  ".join(str(p) for p in at_best)
        raise InputError(
            f"{len(at_best)} files could give band {token} at {best:g} m:\n  {listing}\n"
            "the folder holds several products (tiles or dates); keep one, or name the file for each "
            "layer in inputs.bands"
        )
    return at_best[0], best


# --------------------------------------------------------------------------- metadata


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_product_metadata(xml_path: Path) -> dict:
    """``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml`` -> baseline, quantification, per-band add-offset, start date."""
    out: dict = {"offsets": {}}
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{xml_path}: unreadable product metadata ({exc})") from None
    for el in root.iter():
        tag, text = _local(el.tag), (el.text or "").strip()
        if tag == "PROCESSING_BASELINE" and text:
            out["baseline"] = text
        elif tag in ("BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE") and text:
            out["quantification"] = float(text)
        elif tag in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and text:
            bid = int(el.attrib.get("band_id", -1))
            if 0 <= bid < len(PRODUCT_BANDS):
                out["offsets"][PRODUCT_BANDS[bid]] = float(text)
        elif tag == "PRODUCT_START_TIME" and len(text) >= 10:
            try:
                out["date"] = date.fromisoformat(text[:10])
            except ValueError:
                pass
        elif tag == "PRODUCT_TYPE" and text:
            out["level"] = "L2A" if "2A" in text else "L1C" if "1C" in text else None
    return out


def _find_metadata(folder: Path) -> Path | None:
    for cand in [folder, *list(folder.parents)[:5]]:
        for name in ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml"):
            if (cand / name).is_file():
                return cand / name
        if cand.suffix.upper() == ".SAFE":
            break
    return None


def baseline_from_name(text: str) -> str | None:
    """``..._N0511_...`` -> ``"05.11"``."""
    m = _BASELINE_IN_NAME.search(text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def date_from_name(text: str) -> date | None:
    m = _DATE_IN_NAME.search(text)
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def _fill_product_info(plan: SourcePlan, folder: Path, files: list[Path | str]) -> None:
    mtd = _find_metadata(folder)
    if mtd is not None:
        meta = parse_product_metadata(mtd)
        plan.boa_add_offset = meta["offsets"]
        plan.quantification = meta.get("quantification")
        if meta.get("baseline"):
            plan.processing_baseline, plan.baseline_from = meta["baseline"], mtd.name
        plan.acquired = meta.get("date")
        plan.product_level = meta.get("level")
        plan.notes.append(f"product metadata: {mtd}")
    names = [str(folder.resolve())] + [str(p) for p in files]
    if plan.processing_baseline is None:
        for text in names:
            if b := baseline_from_name(Path(text).name) or baseline_from_name(text):
                plan.processing_baseline, plan.baseline_from = b, f"product name ({Path(text).name})"
                break
    if plan.acquired is None:
        plan.acquired = next((d for t in names if (d := date_from_name(Path(t).name))), None)
    if plan.product_level is None:
        joined = " ".join(names).upper()
        plan.product_level = (
            "L2A"
            if "MSIL2A" in joined or "L2A" in joined
            else ("L1C" if "MSIL1C" in joined or "L1C" in joined else None)
        )
    if plan.product_level == "L1C":
        plan.notes.append("L1C product: top-of-atmosphere reflectance (RADIO_ADD_OFFSET), B10 present, no SCL")


# --------------------------------------------------------------------------- plans


def _resolve_file(value: str, what: str) -> Path | str:
    """An existing file: a local ``Path``, or the URI itself (GDAL reads it through /vsi*)."""
    if is_uri(value):
        with storage_errors(value, what):
            found = location(value).is_file()
        if not found:
            raise InputError(f"{what}: {value} does not exist")
        return value
    p = Path(value).expanduser()
    if not p.is_file():
        raise InputError(f"{what}: file {p} does not exist")
    return p


def plan_folder(folder: Path, inputs: SceneInputs) -> SourcePlan:
    """A SAFE product / folder of band files -> a source plan (which file gives each layer)."""
    found = discover_files(folder)
    plan = SourcePlan(kind="sentinel2-folder", root=str(folder))
    used: list[Path | str] = []
    for layer in S2_LAYERS:
        spec = inputs.bands.get(layer, DEFAULT_BAND_FOR_LAYER[layer])
        token = canonical_band(spec)
        if token is None or token == "SCL":
            if not looks_like_path(spec) and not Path(spec).exists():
                raise InputError(
                    f"inputs.bands.{layer}: {spec!r} is neither a Sentinel-2 band (B01..B12, B8A) nor a file path"
                )
            path = _resolve_file(spec, f"inputs.bands.{layer}")
            plan.layers[layer] = LayerSource(str(path), band=None, origin="inputs.bands (file)")
            used.append(path)
            continue
        if token not in found:
            if layer == "B10" and layer not in inputs.bands:
                continue  # L2A products drop B10; the B10 rule applies (assemble)
            have = sorted(k for k in found if k.startswith("B"))
            raise InputError(
                f"layer {layer} needs band {token}, but no file for it was found under {folder} "
                f"(bands found: {have or 'none'}). File names should carry the band, e.g. "
                f"T45RUL_20250101T050000_{token}_20m.jp2 or {token}.tif; or map the layer in inputs.bands"
            )
        path, res = _pick(token, found[token])
        origin = "default mapping" if layer not in inputs.bands else "inputs.bands"
        plan.layers[layer] = LayerSource(str(path), band=token, origin=f"{origin} ({res:g} m file)")
        used.append(path)
    # Terrain and SCL.
    for attr, token in (("dem", "DEM"), ("slope", "SLOPE")):
        spec = getattr(inputs, attr)
        if spec is not None and attr == "dem":
            from .dem_sources import dem_source

            plan.dem = dem_source(spec)
        elif spec is not None:
            setattr(plan, attr, LayerSource(str(_resolve_file(spec, f"inputs.{attr}")), origin=f"inputs.{attr}"))
        elif token in found:
            path, _ = _pick(token, found[token])
            setattr(plan, attr, LayerSource(str(path), origin=f"found in {folder.name}"))
    if inputs.use_scl:
        if inputs.scl is not None:
            plan.scl = LayerSource(str(_resolve_file(inputs.scl, "inputs.scl")), band="SCL", origin="inputs.scl")
        elif "SCL" in found:
            path, res = _pick("SCL", found["SCL"])
            plan.scl = LayerSource(str(path), band="SCL", origin=f"found ({res:g} m file)")
    _fill_product_info(plan, folder, used)
    return plan


def plan_stack(path: Path | str, inputs: SceneInputs) -> SourcePlan:
    """A 14-band L4S-ordered raster with ``inputs`` (AOI, SCL, DEM override...) -> a source plan."""
    import rasterio

    from ..bands import BAND_INDEX, N_BANDS

    with rasterio.open(path) as ds:
        if ds.count != N_BANDS:
            raise InputError(
                f"{path}: a single raster with 'inputs' must hold the {N_BANDS} L4S layers, "
                f"found {ds.count} bands; for band files give a folder or a STAC item"
            )
    from .dem_sources import dem_source

    plan = SourcePlan(kind="stack", root=str(path), default_scaling="none")
    for layer in S2_LAYERS:
        if layer in inputs.bands:
            raise InputError(f"inputs.bands cannot remap layer {layer} of a 14-band stack ({path})")
        plan.layers[layer] = LayerSource(str(path), bidx=BAND_INDEX[layer] + 1, origin="14-band stack")
    plan.dem = (
        dem_source(inputs.dem)
        if inputs.dem
        else LayerSource(str(path), bidx=BAND_INDEX["DEM"] + 1, origin="14-band stack")
    )
    if inputs.slope:
        plan.slope = LayerSource(str(_resolve_file(inputs.slope, "inputs.slope")), origin="inputs.slope")
    elif not inputs.dem:
        plan.slope = LayerSource(str(path), bidx=BAND_INDEX["slope"] + 1, origin="14-band stack")
    if inputs.use_scl and inputs.scl:
        plan.scl = LayerSource(str(_resolve_file(inputs.scl, "inputs.scl")), band="SCL", origin="inputs.scl")
    return plan


# --------------------------------------------------------------------------- scaling


@dataclass
class Scaling:
    """Per-layer ``reflectance = raw * mul + add``, plus how it was decided."""

    mode: str
    mul: dict[str, float]
    add: dict[str, float]
    how: dict[str, str]
    nodata_dn: float | None  # raw value meaning no data (L2A: 0)


def _baseline_offset(baseline: str) -> float:
    return -1000.0 if float(baseline) >= 4.0 else 0.0


def resolve_scaling(
    plan: SourcePlan, cfg: ReflectanceScaling, dtypes: dict[str, np.dtype], warnings: list[str]
) -> Scaling:
    """Decide ``raw -> reflectance`` for every Sentinel-2 layer in ``plan``; explain in ``how``."""
    layers = list(plan.layers)
    mode: str = cfg.mode
    if mode == "auto":
        if plan.default_scaling != "auto":
            mode = plan.default_scaling
        else:
            kinds = {np.dtype(dtypes[layer]).kind for layer in layers}
            if kinds <= {"u", "i"}:
                mode = "l2a"
            elif kinds <= {"f"}:
                mode = "none"
            else:
                raise InputError(
                    f"band files mix integer and float data ({ {k: str(v) for k, v in dtypes.items()} }); "
                    "set inputs.reflectance.mode to 'l2a' (digital numbers) or 'none' (reflectance)"
                )
    mul, add, how = {}, {}, {}
    if mode == "none":
        for layer in layers:
            mul[layer], add[layer], how[layer] = 1.0, 0.0, "values taken as reflectance (mode none)"
        return Scaling("none", mul, add, how, nodata_dn=None)

    q_meta = plan.quantification if "quantification" not in cfg.model_fields_set else None
    date_warned = False
    for layer in layers:
        src = plan.layers[layer]
        q = q_meta or cfg.quantification
        if cfg.boa_add_offset is not None:
            off, why = cfg.boa_add_offset, "inputs.reflectance.boa_add_offset"
        elif cfg.processing_baseline is not None:
            off, why = (
                _baseline_offset(cfg.processing_baseline),
                f"inputs.reflectance.processing_baseline {cfg.processing_baseline}",
            )
        elif src.scale is not None:
            off = float(src.offset or 0.0)
            mul[layer], add[layer] = float(src.scale), off
            how[layer] = f"DN * {src.scale:g} {'-' if off < 0 else '+'} {abs(off):g} from STAC {src.scaling_from}"
            continue
        elif src.band in plan.boa_add_offset:
            off, why = plan.boa_add_offset[src.band], "BOA_ADD_OFFSET in product metadata"
        elif plan.processing_baseline is not None:
            off, why = (
                _baseline_offset(plan.processing_baseline),
                f"processing baseline {plan.processing_baseline} ({plan.baseline_from})",
            )
        elif plan.acquired is not None:
            off = -1000.0 if plan.acquired >= BASELINE_0400_DATE else 0.0
            why = f"acquisition date {plan.acquired.isoformat()} (no processing baseline found)"
            if not date_warned:
                date_warned = True
                warnings.append(
                    f"reflectance offset {off:g} inferred from the acquisition date {plan.acquired.isoformat()} "
                    "alone (no processing baseline or BOA_ADD_OFFSET found). Products from 2022-01-25 on use "
                    "-1000; older ones 0 unless reprocessed (Collection-1, baseline >= 05.00 uses -1000). Set "
                    "inputs.reflectance.processing_baseline or boa_add_offset to be sure"
                )
        else:
            raise InputError(
                f"cannot tell the reflectance offset of {plan.root}: integer band files, but no processing "
                "baseline, BOA_ADD_OFFSET, STAC raster:bands or acquisition date was found. Set "
                "inputs.reflectance.processing_baseline (e.g. '05.11') or boa_add_offset (-1000 for baseline "
                ">= 04.00, 0 before), or mode 'none' when the files hold reflectance already"
            )
        mul[layer], add[layer] = 1.0 / q, off / q
        how[layer] = f"(DN {'-' if off < 0 else '+'} {abs(off):g}) / {q:g} from {why}"
    return Scaling("l2a", mul, add, how, nodata_dn=0.0)
