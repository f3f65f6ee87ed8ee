"""A region's scenes from a STAC API search: a real STAC API on loopback (landing page with
item-search conformance, POST /search filtering by collection, dates, bbox and cloud cover),
searched with pystac-client, its Sentinel-2 L2A-like items (one asset per band) mapped."""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import rasterio
from loopback_http import serving
from test_region import SETTINGS, _l2a_item, _range_server, l2a_world, region  # noqa: F401 (region: a fixture)

from landslide_batch.cli import main
from landslide_batch.config import job_from_dict
from landslide_batch.errors import InputError
from landslide_batch.pipeline import run_job

CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
]


def _matches(item: dict, body: dict) -> bool:
    props = item["properties"]
    if body.get("collections") and item["collection"] not in body["collections"]:
        return False
    if body.get("datetime"):
        start, _, end = body["datetime"].partition("/")
        when = datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
        if start not in ("", "..") and when < datetime.fromisoformat(start.replace("Z", "+00:00")):
            return False
        if end not in ("", "..") and when > datetime.fromisoformat(end.replace("Z", "+00:00")):
            return False
    limit = body.get("query", {}).get("eo:cloud_cover", {}).get("lte")
    if "filter" in body:  # the one CQL2 expression the project sends: eo:cloud_cover <= limit
        assert body["filter"]["op"] == "<=" and body["filter"]["args"][0] == {"property": "eo:cloud_cover"}
        limit = body["filter"]["args"][1]
    return limit is None or props["eo:cloud_cover"] <= limit


QUERY, FILTER = CONFORMS[2], "https://api.stacspec.org/v1.0.0/item-search#filter"


@contextmanager
def stac_api(items: list[dict], conforms: list[str] = CONFORMS):
    """A loopback STAC API over ``items`` whose landing page offers ``conforms``; a search with a
    ``query`` or a ``filter`` it does not offer is answered HTTP 400, as real APIs do.
    -> (root URL, the search bodies received)."""
    searches: list[dict] = []

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _json(self, data: dict, status: int = 200) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            root = f"http://127.0.0.1:{self.server.server_port}/"
            self._json(
                {
                    "type": "Catalog",
                    "id": "test-api",
                    "description": "loopback STAC API",
                    "stac_version": "1.0.0",
                    "conformsTo": conforms,
                    "links": [
                        {"rel": "self", "href": root},
                        {"rel": "root", "href": root},
                        {"rel": "search", "href": root + "search", "method": "POST", "type": "application/geo+json"},
                    ],
                }
            )

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            searches.append(body)
            if "query" in body and QUERY not in conforms or "filter" in body and FILTER not in conforms:
                self._json({"code": "BadRequest", "description": "unsupported search parameter"}, 400)
                return
            self._json({"type": "FeatureCollection", "features": [i for i in items if _matches(i, body)], "links": []})

    with serving(Api) as url:
        yield f"{url}/", searches


def test_region_from_a_stac_api_search(region, tmp_path):  # noqa: F811
    _, model = region
    world, (x0, y0), aoi, (west, south, east, north) = l2a_world(tmp_path)
    root = tmp_path / "files"
    root.mkdir()
    dated = [
        ("S2A_20150502", slice(0, 180), (x0, y0), "2015-05-02T05:00:00Z", 8.0),
        ("S2B_20150507", slice(120, 300), (x0 + 1200, y0), "2015-05-07T05:00:00Z", 0.5),
        ("S2A_20150512", slice(0, 180), (x0, y0), "2015-05-12T05:00:00Z", 85.0),  # too cloudy
        ("S2B_20150320", slice(120, 300), (x0 + 1200, y0), "2015-03-20T05:00:00Z", 0.0),
    ]  # before the event
    with _range_server(root, tmp_path / "requests.log") as files:
        items = []
        for name, cols, origin, when, cloud in dated:
            item = _l2a_item(root, name, world, cols, origin, None, {"datetime": when, "eo:cloud_cover": cloud})
            for asset in item["assets"].values():
                asset["href"] = f"{files}/{asset['href']}"  # an API serves absolute hrefs
            items.append({**item, "collection": "sentinel-2-l2a"})
        with stac_api(items) as (api, searches):
            search = {
                "url": api,
                "collections": ["sentinel-2-l2a"],
                "datetime": "2015-04-25/2015-06-30",
                "max_cloud_cover": 20,
            }
            manifest = run_job(
                job_from_dict(
                    {
                        "stac_search": search,
                        "aoi": str(aoi),
                        "models": [str(model)],
                        "out": str(tmp_path / "out"),
                        **SETTINGS,
                    }
                )
            )
    assert [s["date"] for s in manifest["scenes"]] == ["2015-05-02T05:00:00Z", "2015-05-07T05:00:00Z"]
    assert len(searches) == 1
    sent = searches[0]
    assert sent["collections"] == ["sentinel-2-l2a"] and sent["query"] == {"eo:cloud_cover": {"lte": 20}}
    # the search is over the AOI's bounds (the region grid's AOI, back in degrees)
    np.testing.assert_allclose(sent["bbox"], [west, south, east, north], atol=2e-3)
    with rasterio.open(tmp_path / "out" / "probability.tif") as ds:
        prob = ds.read(1)
        assert ds.crs.to_epsg() == 32645
    assert (prob >= 0).mean() > 0.9 and prob[prob >= 0].std() >= 0.05

    with stac_api(items) as (api, _):  # nothing in the window: a clear error, nothing written
        empty = {"url": api, "collections": ["sentinel-2-l2a"], "datetime": "2016-01-01/2016-02-01"}
        with pytest.raises(InputError, match="has no item of .*sentinel-2-l2a.* in 2016-01-01/2016-02-01"):
            run_job(
                job_from_dict(
                    {
                        "stac_search": empty,
                        "aoi": str(aoi),
                        "models": [str(model)],
                        "out": str(tmp_path / "none"),
                        **SETTINGS,
                    }
                )
            )
    assert not (tmp_path / "none" / "run.json").exists()


def test_unreachable_stac_api_is_a_clear_error(region, tmp_path, capsys):  # noqa: F811
    _, model = region
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        json.dumps(
            {"type": "Polygon", "coordinates": [[[84.3, 28.1], [84.4, 28.1], [84.4, 28.2], [84.3, 28.2], [84.3, 28.1]]]}
        )
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "stac_search": {"url": "http://127.0.0.1:9/", "collections": ["sentinel-2-l2a"]},
                "aoi": str(aoi),
                "models": [str(model)],
                "out": str(tmp_path / "out"),
            }
        )
    )
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "the STAC API http://127.0.0.1:9/ cannot be searched" in err
    assert not (tmp_path / "out" / "run.json").exists()
