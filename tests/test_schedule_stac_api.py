"""The scheduler on a STAC API (issue 25): ``stac_search:`` in the schedule, searched each pass over
the AOIs' bounds and the event window, on a loopback STAC API whose landing page offers the Query
extension, CQL2 filtering only, or neither (an API without the Query extension answers a ``query``
with HTTP 400, as real ones do): the cloud limit holds in every case."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from test_stac_search import CONFORMS, FILTER, QUERY, stac_api

from landslide_batch.errors import ConfigError
from landslide_batch.jobs.schedule import load_schedule, run_pass
from landslide_batch.jobs.submit import JobSubmission

EVENT = datetime(2015, 4, 25, tzinfo=timezone.utc)
BASE = CONFORMS[:2]
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


class Recorder:
    """A submitter that keeps the jobs (the region jobs themselves are tested elsewhere)."""

    def __init__(self) -> None:
        self.jobs: list[JobSubmission] = []

    def submit(self, job: JobSubmission) -> str:
        self.jobs.append(job)
        return job.submission_id or ""

    def state(self, job_id: str, out: str) -> tuple[str, str]:
        return "PENDING", ""


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
    with stac_api(ITEMS, conforms) as (api, searches):
        url = api.rstrip("/")
        schedule = load_schedule(_schedule(tmp_path, api, tiny_model))
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
