"""A STAC item (JSON) of a Sentinel-2 acquisition -> a source plan over its assets.

Only data assets give layers: an asset whose roles are ``overview``, ``visual`` or
``thumbnail`` (or whose key names a preview, a true-colour image or a thumbnail) is never
read as a band, whatever its ``eo:bands`` say. Assets are matched to product bands by key
(``B02`` on Planetary Computer, ``blue`` on Earth Search, ``B02_10m`` on CDSE), then by a
single ``eo:bands`` / ``bands`` name or common name; among several assets of one band the one
at the band's native resolution is read (then the finest, then non-``-jp2``).

How digital numbers become reflectance is decided per asset from what the item says, in
order: ``earthsearch:boa_offset_applied: true`` (the DNs are harmonised already: the declared
scale, no offset), the asset's ``raster:bands`` / STAC 1.1 ``bands`` / asset-level
``raster:scale`` and ``raster:offset``; without them ``sentinel2.resolve_scaling`` falls back on
``s2:processing_baseline`` / ``processing:version``, then the product name. See ``docs/inputs.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage import location, storage_errors
from .inputs import S2_LAYERS, SceneInputs, looks_like_path
from .sentinel2 import (
    DEFAULT_BAND_FOR_LAYER,
    NATIVE_RESOLUTION_M,
    LayerSource,
    SourcePlan,
    baseline_from_name,
    canonical_band,
)

_DEM_KEYS = ("dem", "DEM", "elevation", "dtm")
_SLOPE_KEYS = ("slope", "SLOPE")
_NOT_DATA_ROLES = {"overview", "visual", "thumbnail"}
#: Keys of rendered images, never data whatever their roles (Planetary Computer's ``visual`` has role data).
_NOT_DATA_KEY = re.compile(r"(^|[_-])(preview|rendered|visual|thumbnail|overview|tci)([_-]|$)", re.IGNORECASE)
_KEY_RES = re.compile(r"^(.+?)[_-](\d{1,3})m$", re.IGNORECASE)
#: Item properties that say Earth Search harmonised the DNs (the baseline >= 04.00 offset removed).
_OFFSET_APPLIED = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")


def _file_exists(value: str, what: str) -> bool:
    """A local path or a URI (s3://, gs://, ...: GDAL reads those through /vsi*)."""
    where = location(value)
    with storage_errors(where, what):
        return where.is_file()


def is_data_asset(key: str, asset: Any) -> bool:
    """A raster of measurements: role ``data`` (or no roles), not an overview, visual or thumbnail."""
    roles = {str(r).lower() for r in (asset.roles or [])}
    if roles & _NOT_DATA_ROLES or _NOT_DATA_KEY.search(key):
        return False
    return not roles or "data" in roles


def _key_band(key: str) -> tuple[str | None, float | None]:
    """``"B02_10m"`` -> ``("B02", 10)``; ``"blue-jp2"`` -> ``("B02", None)``; ``"aot"`` -> ``(None, None)``."""
    base = key[:-4] if key.lower().endswith("-jp2") else key
    m = _KEY_RES.match(base)
    return (canonical_band(m.group(1)), float(m.group(2))) if m else (canonical_band(base), None)


def _asset_bands(key: str, asset: Any) -> dict[str, int]:
    """Product bands an asset carries -> their band index (1-based): its key's band, or each of its
    ``eo:bands`` / ``bands`` entries by name or common name."""
    if tok := _key_band(key)[0]:
        return {tok: 1}
    ef = asset.extra_fields
    out: dict[str, int] = {}
    for entries in (ef.get("eo:bands"), ef.get("bands")):
        for i, entry in enumerate(entries or []):
            if not isinstance(entry, dict):
                continue
            for name in (entry.get("name"), entry.get("common_name"), entry.get("eo:common_name")):
                if name and (tok := canonical_band(str(name))):
                    out.setdefault(tok, i + 1)
    return out


def _asset_resolution(key: str, asset: Any) -> float | None:
    """Pixel size in metres an asset declares: its key's ``_20m``, ``gsd``, ``raster:bands``
    ``spatial_resolution``, or a projected ``proj:transform``."""
    if (res := _key_band(key)[1]) is not None:
        return res
    ef = asset.extra_fields
    if ef.get("gsd") is not None:
        return float(ef["gsd"])
    for entry in (ef.get("raster:bands") or ef.get("bands") or [])[:1]:
        if isinstance(entry, dict) and entry.get("spatial_resolution") is not None:
            return float(entry["spatial_resolution"])
    t, code = ef.get("proj:transform"), str(ef.get("proj:epsg") or ef.get("proj:code") or "")
    if t and code.removeprefix("EPSG:").startswith(("326", "327")):  # UTM: metres
        return abs(float(t[0]))
    return None


def _native_first(band: str, key: str, asset: Any) -> tuple:
    """Sort key of an asset for ``band``: its native resolution, then finer, then coarser; ``-jp2`` last."""
    native, res = NATIVE_RESOLUTION_M.get(band), _asset_resolution(key, asset)
    if native is None or res is None:
        rank, gap = 1, 0.0
    else:
        rank, gap = (0 if abs(res - native) < 0.5 else 2 if res < native else 3), abs(res - native)
    return rank, gap, key.lower().endswith("-jp2"), key


@dataclass(frozen=True)
class Declared:
    """``value = DN * scale + offset`` of one asset, and which field of the item says so."""

    scale: float
    offset: float
    source: str


def declared_scaling(item: Any, key: str, asset: Any, bidx: int = 1) -> Declared | None:
    """What the item declares about band ``bidx`` of asset ``key``, in order of trust; None: nothing."""
    ef = asset.extra_fields
    found: tuple[float, float, str] | None = None
    entries = ef.get("raster:bands") or []
    entry = entries[bidx - 1] if len(entries) >= bidx else None
    if isinstance(entry, dict) and entry.get("scale") is not None:
        found = float(entry["scale"]), float(entry.get("offset") or 0.0), f"raster:bands of asset {key!r}"
    entries = ef.get("bands") or []
    entry = entries[bidx - 1] if len(entries) >= bidx else None
    if found is None and isinstance(entry, dict):
        s = entry.get("raster:scale", entry.get("scale"))
        if s is not None:
            off = entry.get("raster:offset", entry.get("offset"))
            found = float(s), float(off or 0.0), f"bands[{bidx - 1}] raster:scale/offset of asset {key!r}"
    if found is None and ef.get("raster:scale") is not None:
        found = (
            float(ef["raster:scale"]),
            float(ef.get("raster:offset") or 0.0),
            f"raster:scale/offset of asset {key!r}",
        )
    applied = next((name for name in _OFFSET_APPLIED if item.properties.get(name) is True), None)
    if applied:  # DNs harmonised already: a declared offset would be subtracted twice
        scale = found[0] if found else 1e-4
        dropped = f"; declared offset {found[1]:g} not applied" if found and found[1] else ""
        return Declared(scale, 0.0, f"{applied}: true (scale from {found[2] if found else 'L2A default'}{dropped})")
    return Declared(*found) if found else None


def plan_stac(item_path: Path | str, inputs: SceneInputs) -> SourcePlan:
    """The source plan of a STAC item: its assets (or files in ``inputs``) for the 14 layers and SCL,
    and what its properties say about processing baseline, date and product level."""
    item = _ItemAssets.read(item_path)
    plan = SourcePlan(kind="stac-item", root=str(item_path))
    _plan_optical_layers(item, inputs, plan)
    _plan_terrain_and_scl(item, inputs, plan)
    _plan_from_properties(item.item, plan)
    plan.notes.append(f"STAC item {item.item.id}")
    return plan


@dataclass
class _ItemAssets:
    """A STAC item's assets, and the data asset (and band index) that gives each product band."""

    item: Any  # pystac.Item
    path: Path | str
    assets: dict[str, Any]
    by_band: dict[str, tuple[str, int]]

    @classmethod
    def read(cls, item_path: Path | str) -> _ItemAssets:
        import pystac

        where = location(item_path)
        try:
            if where.is_remote and where.writable:  # pystac reads files and http(s) itself, not object stores
                data = json.loads(where.read_text())
                for asset in data.get("assets", {}).values():
                    asset["href"] = where.parent.resolve(str(asset.get("href", "")))
                item = pystac.Item.from_dict(data)
            else:
                item = pystac.Item.from_file(str(item_path))
        except Exception as exc:
            raise InputError(f"{item_path}: not a readable STAC item ({type(exc).__name__}: {exc})") from None
        assets = dict(item.assets)
        candidates: dict[str, list[tuple[tuple, str, int]]] = {}
        for key, asset in assets.items():
            if not is_data_asset(key, asset):
                continue
            for tok, bidx in _asset_bands(key, asset).items():
                candidates.setdefault(tok, []).append((_native_first(tok, key, asset), key, bidx))
        by_band = {tok: min(found)[1:] for tok, found in candidates.items()}
        return cls(item, item_path, assets, by_band)

    def source(self, key: str, band: str | None, origin: str, bidx: int = 1, scaled: bool = True) -> LayerSource:
        asset = self.assets[key]
        declared = declared_scaling(self.item, key, asset, bidx) if scaled else None
        return LayerSource(
            asset.get_absolute_href(),
            bidx=bidx,
            band=band,
            scale=declared.scale if declared else None,
            offset=declared.offset if declared else None,
            scaling_from=declared.source if declared else "",
            origin=f"{origin} (asset {key!r})",
        )


def _plan_optical_layers(item: _ItemAssets, inputs: SceneInputs, plan: SourcePlan) -> None:
    """Layers B1..B12: ``inputs.bands`` (asset key, file or band name), else the default band's asset.
    A missing B10 is left to the B10 rule."""
    assets = item.assets
    for layer in S2_LAYERS:
        spec = inputs.bands.get(layer)
        origin = "inputs.bands" if spec else "default mapping"
        if spec and spec in assets:
            plan.layers[layer] = item.source(spec, _key_band(spec)[0], origin)
            continue
        if spec and looks_like_path(spec):
            if not _file_exists(spec, f"inputs.bands.{layer}"):
                raise InputError(f"inputs.bands.{layer}: file {spec} does not exist")
            plan.layers[layer] = LayerSource(spec, origin="inputs.bands (file)")
            continue
        token = canonical_band(spec or DEFAULT_BAND_FOR_LAYER[layer])
        if token is None:
            raise InputError(
                f"inputs.bands.{layer}: {spec!r} is not an asset of {item.path} "
                f"(assets: {sorted(assets)}), a band name or a file"
            )
        if token not in item.by_band:
            if layer == "B10" and not spec:
                continue
            raise InputError(
                f"layer {layer} needs band {token}, but STAC item {item.item.id} ({item.path}) has no "
                f"data asset for it (assets: {sorted(assets)}; overviews, previews and thumbnails are "
                "never data); map it in inputs.bands"
            )
        key, bidx = item.by_band[token]
        plan.layers[layer] = item.source(key, token, origin, bidx)


def _plan_terrain_and_scl(item: _ItemAssets, inputs: SceneInputs, plan: SourcePlan) -> None:
    """DEM, slope and SCL: the asset or file ``inputs`` names, else the item's own asset if any.
    A DEM ``inputs`` gives as several tiles or a STAC source is left to ``terrain.dem_tiles``."""
    assets = item.assets
    for attr, keys in (("dem", _DEM_KEYS), ("slope", _SLOPE_KEYS)):
        spec = getattr(inputs, attr)
        if isinstance(spec, str) and spec in assets:
            setattr(plan, attr, item.source(spec, None, f"inputs.{attr}", scaled=False))
        elif spec:
            setattr(plan, attr, _terrain_file(attr, spec, item.path))
        elif key := next((k for k in keys if k in assets), None):
            setattr(plan, attr, item.source(key, None, "STAC item", scaled=False))
    if not inputs.use_scl:
        return
    if inputs.scl and inputs.scl in assets:
        plan.scl = item.source(inputs.scl, "SCL", "inputs.scl", scaled=False)
    elif inputs.scl:
        if not _file_exists(inputs.scl, "inputs.scl"):
            raise InputError(f"inputs.scl: {inputs.scl!r} is neither an asset of {item.path} nor an existing file")
        plan.scl = LayerSource(inputs.scl, band="SCL", origin="inputs.scl")
    elif "SCL" in item.by_band:
        key, bidx = item.by_band["SCL"]
        plan.scl = item.source(key, "SCL", "STAC item", bidx, scaled=False)


def _terrain_file(attr: str, spec: Any, item_path: Path | str) -> LayerSource:
    """``inputs.dem`` / ``inputs.slope`` naming files rather than an asset of the item."""
    from .dem_sources import dem_source

    if attr == "dem":
        return dem_source(spec)
    if not _file_exists(spec, f"inputs.{attr}"):
        raise InputError(f"inputs.{attr}: {spec!r} is neither an asset of {item_path} nor an existing file")
    return LayerSource(spec, origin=f"inputs.{attr}")


def _plan_from_properties(item: Any, plan: SourcePlan) -> None:
    """Processing baseline (``s2:processing_baseline``, CDSE's ``processing:version``, else the
    product name), acquisition date and product level from the item's properties."""
    props = item.properties
    for name in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        if props.get(name) and re.fullmatch(r"\d{1,2}\.\d{1,2}", str(props[name]).strip()):
            plan.processing_baseline, plan.baseline_from = str(props[name]).strip(), f"STAC property {name}"
            break
    else:
        for text in (props.get("s2:product_uri"), props.get("product:name"), item.id):
            if text and (b := baseline_from_name(str(text))):
                plan.processing_baseline, plan.baseline_from = b, f"product name {text}"
                break
    when = item.datetime or (item.common_metadata.start_datetime if item.common_metadata else None)
    plan.acquired = when.date() if when else None
    ptype = str(props.get("s2:product_type") or props.get("product:type") or "")
    plan.product_level = "L2A" if "2A" in ptype else "L1C" if "1C" in ptype else None
