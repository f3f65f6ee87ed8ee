"""A STAC item (JSON) of a Sentinel-2 acquisition -> a source plan over its assets.

Assets are matched to product bands by key (``B02`` as on Planetary Computer, ``blue`` as on
Earth Search), then by ``eo:bands`` name / common name. ``-jp2`` duplicates are used only
when no other asset gives the band. Scale and offset declared in ``raster:bands`` are
honoured (``value = DN * scale + offset``); see ``docs/inputs.md`` for catalogs whose
declarations are known to be unreliable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage import location, storage_errors
from .inputs import S2_LAYERS, SceneInputs, looks_like_path
from .sentinel2 import (
    DEFAULT_BAND_FOR_LAYER,
    LayerSource,
    SourcePlan,
    baseline_from_name,
    canonical_band,
)

_DEM_KEYS = ("dem", "DEM", "elevation", "dtm")


def _file_exists(value: str, what: str) -> bool:
    """A local path or a URI (s3://, gs://, ...: GDAL reads those through /vsi*)."""
    where = location(value)
    with storage_errors(where, what):
        return where.is_file()


_SLOPE_KEYS = ("slope", "SLOPE")


def _asset_bands(key: str, asset) -> set[str]:
    """Product bands an asset carries, from its key and its eo:bands / bands entries."""
    out = set()
    base = key[:-4] if key.lower().endswith("-jp2") else key
    if tok := canonical_band(base):
        out.add(tok)
    ef = asset.extra_fields
    for entry in (ef.get("eo:bands") or []) + (ef.get("bands") or []):
        if not isinstance(entry, dict):
            continue
        for name in (entry.get("name"), entry.get("common_name"), entry.get("eo:common_name")):
            if name and (tok := canonical_band(str(name))):
                out.add(tok)
    return out


def _scale_offset(asset) -> tuple[float | None, float | None]:
    ef = asset.extra_fields
    for entry in (ef.get("raster:bands") or [])[:1]:
        if isinstance(entry, dict) and entry.get("scale") is not None:
            return float(entry["scale"]), float(entry.get("offset") or 0.0)
    for entry in (ef.get("bands") or [])[:1]:
        if isinstance(entry, dict):
            s = entry.get("raster:scale", entry.get("scale"))
            if s is not None:
                return float(s), float(entry.get("raster:offset", entry.get("offset")) or 0.0)
    if ef.get("raster:scale") is not None:
        return float(ef["raster:scale"]), float(ef.get("raster:offset") or 0.0)
    return None, None


def plan_stac(item_path: Path | str, inputs: SceneInputs) -> SourcePlan:
    """The source plan of a STAC item: its assets (or files in ``inputs``) for the 14 layers and SCL,
    and what its properties say about processing baseline, date and product level."""
    item = _ItemAssets.read(item_path)
    plan = SourcePlan(kind="stac-item", root=str(item_path))
    _plan_optical_layers(item, inputs, plan)
    _plan_terrain_and_scl(item, inputs, plan)
    _plan_from_properties(item.item, inputs, plan)
    plan.notes.append(f"STAC item {item.item.id}")
    return plan


@dataclass
class _ItemAssets:
    """A STAC item's assets, and the asset that gives each product band (``-jp2`` duplicates last)."""

    item: Any  # pystac.Item
    path: Path | str
    assets: dict[str, Any]
    by_band: dict[str, str]

    @classmethod
    def read(cls, item_path: Path | str) -> _ItemAssets:
        import pystac

        try:
            item = pystac.Item.from_file(str(item_path))
        except Exception as exc:
            raise InputError(f"{item_path}: not a readable STAC item ({type(exc).__name__}: {exc})") from None
        assets = dict(item.assets)
        by_band: dict[str, str] = {}
        for key in sorted(assets, key=lambda k: (k.lower().endswith("-jp2"), k)):
            for tok in _asset_bands(key, assets[key]):
                by_band.setdefault(tok, key)
        return cls(item, item_path, assets, by_band)

    def source(self, key: str, band: str | None, origin: str, scaled: bool = True) -> LayerSource:
        asset = self.assets[key]
        scale, offset = _scale_offset(asset) if scaled else (None, None)
        return LayerSource(
            asset.get_absolute_href(), band=band, scale=scale, offset=offset, origin=f"{origin} (asset {key!r})"
        )


def _plan_optical_layers(item: _ItemAssets, inputs: SceneInputs, plan: SourcePlan) -> None:
    """Layers B1..B12: ``inputs.bands`` (asset key, file or band name), else the default band's asset.
    A missing B10 is left to the B10 rule."""
    assets = item.assets
    for layer in S2_LAYERS:
        spec = inputs.bands.get(layer)
        origin = "inputs.bands" if spec else "default mapping"
        if spec and spec in assets:
            plan.layers[layer] = item.source(spec, canonical_band(spec), origin)
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
                f"asset for it (assets: {sorted(assets)}); map it in inputs.bands"
            )
        plan.layers[layer] = item.source(item.by_band[token], token, origin)


def _plan_terrain_and_scl(item: _ItemAssets, inputs: SceneInputs, plan: SourcePlan) -> None:
    """DEM, slope and SCL: the asset or file ``inputs`` names, else the item's own asset if any."""
    assets = item.assets
    for attr, keys in (("dem", _DEM_KEYS), ("slope", _SLOPE_KEYS)):
        spec = getattr(inputs, attr)
        if spec and spec in assets:
            setattr(plan, attr, item.source(spec, None, f"inputs.{attr}", scaled=False))
        elif spec:
            if not _file_exists(spec, f"inputs.{attr}"):
                raise InputError(f"inputs.{attr}: {spec!r} is neither an asset of {item.path} nor an existing file")
            setattr(plan, attr, LayerSource(spec, origin=f"inputs.{attr}"))
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
        plan.scl = item.source(item.by_band["SCL"], "SCL", "STAC item", scaled=False)


def _plan_from_properties(item: Any, inputs: SceneInputs, plan: SourcePlan) -> None:
    """Processing baseline, acquisition date and product level from the item's properties; a
    warning where its offset metadata contradicts itself."""
    props = item.properties
    baseline = props.get("s2:processing_baseline") or props.get("sentinel:processing_baseline")
    if baseline:
        plan.processing_baseline, plan.baseline_from = str(baseline), "STAC property s2:processing_baseline"
    else:
        for text in (props.get("s2:product_uri"), item.id):
            if text and (b := baseline_from_name(str(text))):
                plan.processing_baseline, plan.baseline_from = b, f"product name {text}"
                break
    when = item.datetime or (item.common_metadata.start_datetime if item.common_metadata else None)
    plan.acquired = when.date() if when else None
    ptype = str(props.get("s2:product_type", ""))
    plan.product_level = "L2A" if "2A" in ptype else "L1C" if "1C" in ptype else None
    applied = props.get("earthsearch:boa_offset_applied", props.get("sentinel:boa_offset_applied"))
    declared = {layer: s.offset for layer, s in plan.layers.items() if s.scale is not None and s.offset is not None}
    if applied is not None and declared and inputs.reflectance.boa_add_offset is None:
        plan.warnings.append(
            f"STAC item {item.id}: boa_offset_applied={applied} next to raster:bands offsets "
            f"{sorted(set(declared.values()))}; the raster:bands values are used. This catalog's offset "
            "metadata has been wrong for some items: check the reflectance range warnings, or set "
            "inputs.reflectance.boa_add_offset"
        )
