"""``pre_event: auto``: the pre-event scene picked from the job's STAC search.

The rule (README, "Event maps"): the candidates are the items the job's ``stac_search`` finds
(its API, collections and cloud limit) over the AOI, dated in the ``pre_event_days`` (default
120) before ``event_date``. Each gets its clear share over the AOI: the share of the AOI's
pixels, on the item's SCL grid, whose SCL class is not in ``inputs.scl_mask`` (a pixel the SCL
does not cover is not clear); an item without an SCL asset gets ``1 − eo:cloud_cover / 100``.
The clearest are those within ``CLEAR_MARGIN`` of the best share; of them, the most recent is
the pre-event scene (closest to the event: the least change that is not the event's).
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import numpy as np
from rasterio.crs import CRS

from ..config import JobConfig
from ..errors import InputError
from ..ingest.aoi import aoi_in_crs
from ..ingest.inputs import DEFAULT_SCL_MASK
from ..storage import Location
from .scenes import HrefSigner
from .stac_search import api_items

log = logging.getLogger(__name__)

CLEAR_MARGIN = 0.05
SCL_ASSETS = ("scl", "SCL")
PICKED = "pre_event_auto.json"  # in OUT/.work: the picked item, as an ItemCollection


def pick_pre_event(cfg: JobConfig, aoi, crs: CRS, bbox_4326, work: Location, sign: HrefSigner) -> tuple[str, dict]:
    """-> (an ItemCollection file holding the picked item, the record of the choice for run.json)."""
    assert cfg.stac_search is not None and cfg.event_date is not None  # JobConfig checks both
    first = cfg.event_date - timedelta(days=cfg.pre_event_days)
    window = f"{first.isoformat()}T00:00:00Z/{(cfg.event_date - timedelta(days=1)).isoformat()}T23:59:59Z"
    items = api_items(cfg.stac_search.model_copy(update={"datetime": window}), bbox_4326)
    if not items:
        raise InputError(
            f"pre_event: auto: {cfg.stac_search.url} has no item of {cfg.stac_search.collections} over the AOI "
            f"in {window} (the {cfg.pre_event_days} days before event_date)"
        )
    scl_mask = cfg.inputs.scl_mask if cfg.inputs is not None else list(DEFAULT_SCL_MASK)
    chosen, record = rank(items, aoi, crs, scl_mask, sign)
    dest = work / PICKED
    dest.parent.makedirs()
    dest.write_text(json.dumps({"type": "FeatureCollection", "features": [items[chosen]]}))
    return str(dest), {"window": window, **record}


def rank(items: list[dict], aoi, crs: CRS, scl_mask: list[int], sign: HrefSigner) -> tuple[int, dict]:
    """The rule over candidate items (STAC dicts): -> (index of the pick, the record of the choice:
    the candidates with their clear shares, the margin, the pick)."""
    shares = [clear_share(item, aoi, crs, scl_mask, sign) for item in items]
    chosen = choose(items, shares)
    candidates = [
        {"id": i.get("id"), "datetime": i["properties"].get("datetime"), "clear_share": round(s, 4)}
        for i, s in zip(items, shares)
    ]
    log.info("pre_event: auto picked %s among %d candidate(s)", items[chosen].get("id"), len(items))
    return chosen, {"clear_margin": CLEAR_MARGIN, "candidates": candidates, "picked": items[chosen].get("id")}


def choose(items: list[dict], shares: list[float]) -> int:
    """Index of the most recent item among those within ``CLEAR_MARGIN`` of the clearest."""
    best = max(shares)
    clearest = [i for i, s in enumerate(shares) if s >= best - CLEAR_MARGIN]
    return max(clearest, key=lambda i: (items[i]["properties"].get("datetime") or "", str(items[i].get("id"))))


def clear_share(item: dict, aoi, crs: CRS, scl_mask: list[int], sign: HrefSigner) -> float:
    """The item's clear share over ``aoi`` (shapely, in ``crs``): see the module docstring."""
    import rasterio
    from rasterio.features import geometry_mask
    from rasterio.windows import from_bounds
    from shapely.geometry import mapping

    asset = next((item["assets"][k] for k in SCL_ASSETS if k in item.get("assets", {})), None)
    if asset is None:
        return 1 - float(item["properties"].get("eo:cloud_cover", 100)) / 100
    href = sign(asset["href"])
    try:
        with rasterio.open(href) as ds:
            area = aoi_in_crs(aoi, crs, ds.crs)
            window = from_bounds(*area.bounds, transform=ds.transform).round_offsets().round_lengths()
            scl = ds.read(1, window=window, boundless=True, fill_value=0)
            transform = ds.window_transform(window)
    except rasterio.RasterioIOError as exc:
        raise InputError(f"pre_event: auto: the SCL of item {item.get('id')} ({href}) cannot be read: {exc}") from None
    inside = geometry_mask([mapping(area)], out_shape=scl.shape, transform=transform, invert=True)
    clear = ~np.isin(scl, [*scl_mask, 0])  # 0: no data, or no SCL there
    return float((clear & inside).sum() / max(int(inside.sum()), 1))
