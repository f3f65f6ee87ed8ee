"""The scheduler on a STAC API (issue 25): ``stac_search:`` in the schedule, searched each pass over
the AOIs' bounds and the event window, on a loopback STAC API whose landing page offers the Query
extension, CQL2 filtering only, or neither (an API without the Query extension answers a ``query``
with HTTP 400, as real ones do): the cloud limit holds in every case."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler

import pytest
import yaml
from loopback_http import serving

from landslide_batch.errors import ConfigError
from landslide_batch.jobs.schedule import load_schedule, run_pass
from landslide_batch.jobs.submit import JobSubmission

EVENT = datetime(2015, 4, 25, tzinfo=timezone.utc)
BASE = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
QUERY = "https://api.stacspec.org/v1.0.0/item-search#query"
FILTER = "https://api.stacspec.org/v1.0.0/item-search#filter"
AOI = [84.30, 28.10, 84.32, 28.12]


def _item(name: str, day: int, cloud: float) -> dict:
    west, south, east, north = AOI
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": name,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[[84, 28], [85, 28], [85, 29], [84, 29], [84, 28]]]},
        "bbox": [84, 28, 85, 29],
        "properties": {"datetime": (EVENT + timedelta(days=day)).isoformat(), "eo:cloud_cover": cloud},
        "links": [],
        "assets": {"blue": {"href": f"https://example.invalid/{name}/B02.tif", "roles": ["data"]}},
    }


ITEMS = [_item("S2A_clear", 2, 5.0), _item("S2B_cloudy", 3, 80.0), _item("S2A_before", -10, 0.0)]


def _matches(item: dict, body: dict) -> bool:
    when = datetime.fromisoformat(item["properties"]["datetime"])
    start, _, end = body["datetime"].partition("/")
    if when < datetime.fromisoformat(start) or (end != ".." and when > datetime.fromisoformat(end)):
        return False
    cloud = item["properties"]["eo:cloud_cover"]
    if "query" in body and cloud > body["query"]["eo:cloud_cover"]["lte"]:
        return False
    if "filter" in body:
        assert body["filter"]["op"] == "<=" and body["filter"]["args"][0] == {"property": "eo:cloud_cover"}
        return cloud <= body["filter"]["args"][1]
    return True


def stac_api(conforms: list[str], searches: list[dict]):
    class Api(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, data: dict) -> None:
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            root = f"http://127.0.0.1:{self.server.server_port}/"
            links = [
                {"rel": "self", "href": root},
                {"rel": "root", "href": root},
                {"rel": "search", "href": root + "search", "method": "POST", "type": "application/geo+json"},
            ]
            landing = {"type": "Catalog", "id": "api", "description": "loopback", "stac_version": "1.0.0"}
            self._send(200, {**landing, "conformsTo": conforms, "links": links})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            searches.append(body)
            if "query" in body and QUERY not in conforms or "filter" in body and FILTER not in conforms:
                self._send(400, {"code": "BadRequest", "description": "unsupported search parameter"})
                return
            self._send(200, {"type": "FeatureCollection", "features": [i for i in ITEMS if _matches(i, body)]})

    return serving(Api)


class Recorder:
    """A submitter that keeps the jobs (the region jobs themselves are tested elsewhere)."""

    def __init__(self) -> None:
        self.jobs: list[JobSubmission] = []

    def submit(self, job: JobSubmission) -> str:
        self.jobs.append(job)
        return job.submission_id or ""


def _schedule(tmp_path, api: str, model) -> str:
    spec = {
        "name": "gorkha",
        "stac_search": {"url": api, "collections": ["sentinel-2-l2a"]},
        "asset": None,
        "event_date": EVENT.isoformat(),
        "max_cloud_cover": 20,
        "aois": [{"name": "valley", "bbox": AOI}],
        "job": {"models": [str(model)]},
        "output": {"root": "events"},
    }
    (tmp_path / "schedule.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "schedule.yaml")


@pytest.mark.parametrize(
    "conforms, sent",
    [(BASE + [QUERY], "query"), (BASE + [FILTER], "filter"), (BASE, None)],
    ids=["query-extension", "cql2-filter-only", "neither"],
)
def test_scheduler_over_a_stac_api_keeps_the_cloud_limit(tmp_path, tiny_model, conforms, sent):
    searches: list[dict] = []
    with stac_api(conforms, searches) as url:
        schedule = load_schedule(_schedule(tmp_path, url + "/", tiny_model))
        runner = Recorder()
        assert len(run_pass(schedule, runner)) == 1
    (job,) = runner.jobs
    (scene,) = job.job["scenes"]
    assert json.loads(open(scene).read())["id"] == "S2A_clear"  # not the cloudy one, not the one before
    assert job.stac is not None and job.stac.derived_from == (f"{url}/collections/sentinel-2-l2a/items/S2A_clear",)
    (body,) = searches  # one search a pass, accepted by the API
    assert body["collections"] == ["sentinel-2-l2a"] and body["bbox"] == pytest.approx(AOI)
    assert body["datetime"] == f"{EVENT.isoformat()}/.."
    assert {k for k in ("query", "filter") if k in body} == ({sent} if sent else set())
    if sent == "filter":
        assert body["filter-lang"] == "cql2-json"


def test_a_schedule_names_one_source_and_leaves_the_window_to_itself(tmp_path, tiny_model):
    path = _schedule(tmp_path, "http://127.0.0.1:9/", tiny_model)
    spec = yaml.safe_load(open(path).read())
    for bad, message in (
        ({"catalog": "catalog.json"}, "exactly one of 'catalog'"),
        ({"stac_search": {**spec["stac_search"], "datetime": "2015-01-01/.."}}, "leave out datetime"),
    ):
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, **bad}))
        with pytest.raises(ConfigError, match=message):
            load_schedule(tmp_path / "bad.yaml")
