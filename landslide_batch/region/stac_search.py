"""The scenes of a region from a STAC API search (collection, dates, the AOI, a cloud limit).

The search runs with pystac-client; its result is written as an ItemCollection file that the
region job then reads like any other (``scenes.find_scenes``): asset hrefs signed, one scene per
item. The cloud limit goes to the server in the form its landing page's ``conformsTo`` offers:
the Query extension (``query``), else CQL2 (``filter``, cql2-json); an API with neither gets an
unfiltered search, and items above the limit are dropped here (they are dropped here in any case).
The scheduler searches with :func:`api_items` too.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..config import StacSearch
from ..errors import InputError
from ..storage import Where, location

log = logging.getLogger(__name__)


def _cloud_filter(client: Any, limit: float | None) -> dict[str, Any]:
    """The search arguments that ask ``client``'s API for ``eo:cloud_cover <= limit``."""
    from pystac_client.conformance import ConformanceClasses

    if limit is None:
        return {}
    if client.conforms_to(ConformanceClasses.QUERY):
        return {"query": {"eo:cloud_cover": {"lte": limit}}}
    if client.conforms_to(ConformanceClasses.FILTER):
        cql2 = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, limit]}
        return {"filter": cql2, "filter_lang": "cql2-json"}
    return {}  # filtered on the client only


def api_items(search: StacSearch, bbox_4326: tuple[float, float, float, float]) -> list[dict]:
    """The items (dicts) of ``search`` over ``bbox_4326``, none above its cloud limit. An API
    that cannot be reached or searched is an InputError naming it."""
    from pystac_client import Client

    try:
        client = Client.open(search.url)
        how = _cloud_filter(client, search.max_cloud_cover)
        found = client.search(
            collections=search.collections,
            bbox=list(bbox_4326),
            datetime=search.datetime,
            max_items=search.max_items,
            **how,
        ).item_collection()
    except Exception as exc:  # requests' and pystac-client's errors alike: name the API and the cause
        raise InputError(
            f"stac_search: the STAC API {search.url} cannot be searched ({type(exc).__name__}: {exc})"
        ) from None
    items = [i.to_dict() for i in found]
    if search.max_cloud_cover is not None:
        items = [i for i in items if i["properties"].get("eo:cloud_cover", 0) <= search.max_cloud_cover]
    log.info(
        "stac_search: %d item(s) from %s (cloud limit: %s)",
        len(items),
        search.url,
        next(iter(how), "on the client" if search.max_cloud_cover is not None else "none"),
    )
    return items


def search_items(search: StacSearch, bbox_4326: tuple[float, float, float, float], dest: Where) -> str:
    """Run ``search`` over ``bbox_4326`` (the AOI's bounds); write the items to ``dest`` as an
    ItemCollection; -> its path. No item, or an API that cannot be reached, is an InputError."""
    items = api_items(search, bbox_4326)
    if not items:
        raise InputError(
            f"stac_search: {search.url} has no item of {search.collections} over the AOI "
            f"{[round(v, 5) for v in bbox_4326]}"
            + (f" in {search.datetime}" if search.datetime else "")
            + (f" with cloud cover <= {search.max_cloud_cover} %" if search.max_cloud_cover is not None else "")
        )
    return _write_items(items, dest)


def dem_items(search: StacSearch, bbox_4326: tuple[float, float, float, float], dest: Where, sign) -> str:
    """The tiles of ``search.dem_collection`` over ``bbox_4326`` (a scene's footprint), asset hrefs
    passed through ``sign``, written to ``dest`` as an ItemCollection (an ``inputs.dem``); -> its path."""
    assert search.dem_collection is not None
    dem_search = search.model_copy(
        update={"collections": [search.dem_collection], "datetime": None, "max_cloud_cover": None}
    )
    items = api_items(dem_search, bbox_4326)
    if not items:
        raise InputError(
            f"stac_search: {search.url} has no tile of the DEM collection {search.dem_collection!r} over "
            f"the scene's footprint {[round(v, 5) for v in bbox_4326]}"
        )
    for item in items:
        for asset in item.get("assets", {}).values():
            asset["href"] = sign(asset["href"])
    return _write_items(items, dest)


def _write_items(items: list[dict], dest: Where) -> str:
    """``items`` as an ItemCollection file at ``dest`` (a local path or on object storage); -> where."""
    where = location(dest)
    where.parent.makedirs()
    where.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return str(where)
