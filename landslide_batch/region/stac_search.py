"""The scenes of a region from a STAC API search (collection, dates, the AOI, a cloud limit).

The search runs with pystac-client; its result is written as an ItemCollection file that the
region job then reads like any other (``scenes.find_scenes``): asset hrefs signed, one scene per
item. Servers without the Query extension still get the cloud limit: items above it are dropped
here too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config import StacSearch
from ..errors import InputError

log = logging.getLogger(__name__)


def search_items(search: StacSearch, bbox_4326: tuple[float, float, float, float], dest: Path) -> str:
    """Run ``search`` over ``bbox_4326`` (the AOI's bounds); write the items to ``dest`` as an
    ItemCollection; -> its path. No item, or an API that cannot be reached, is an InputError."""
    from pystac_client import Client

    query = {"eo:cloud_cover": {"lte": search.max_cloud_cover}} if search.max_cloud_cover is not None else None
    try:
        client = Client.open(search.url)
        found = client.search(
            collections=search.collections,
            bbox=list(bbox_4326),
            datetime=search.datetime,
            query=query,
            max_items=search.max_items,
        ).item_collection()
    except Exception as exc:  # requests' and pystac-client's errors alike: name the API and the cause
        raise InputError(
            f"stac_search: the STAC API {search.url} cannot be searched ({type(exc).__name__}: {exc})"
        ) from None
    items = [i.to_dict() for i in found]
    if search.max_cloud_cover is not None:
        items = [i for i in items if i["properties"].get("eo:cloud_cover", 0) <= search.max_cloud_cover]
    if not items:
        raise InputError(
            f"stac_search: {search.url} has no item of {search.collections} over the AOI "
            f"{[round(v, 5) for v in bbox_4326]}"
            + (f" in {search.datetime}" if search.datetime else "")
            + (f" with cloud cover <= {search.max_cloud_cover} %" if search.max_cloud_cover is not None else "")
        )
    log.info("stac_search: %d item(s) from %s", len(items), search.url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return str(dest)
