"""Scheduled event maps with a pre-event reference (issue 28): ``pre_event: auto`` and
``event_date`` in a schedule over a loopback STAC API. The first pass picks the pre-event item by
the documented rule and maps it once; a later pass with a new post-event item keeps the pick and
the pre-event map; the schedule's summary gives each event's time to map and the median.

The world, the model and the L2A-like items are test_event_maps' (old scars before, old and new
after; a model that maps low NDVI as landslide)."""

from __future__ import annotations

import json
from statistics import median

import geopandas as gpd
import pytest
import yaml
from pyproj import Transformer
from shapely.geometry import box, mapping
from test_event_maps import NEW_SCARS, OLD_SCARS, SETTINGS, H, W, _aoi, _utm_origin, ndvi_model, world  # noqa: F401
from test_region import _l2a_item, _range_server
from test_stac_search import stac_api

from landslide_batch.errors import ConfigError
from landslide_batch.jobs.schedule import load_schedule, run_pass
from landslide_batch.jobs.submit import LocalRunner

# name, pre-event?, SCL cloud (20 m pixels), datetime, eo:cloud_cover
CANDIDATES = [
    ("A_20240301", True, (slice(0, 1), slice(0, 90)), "2024-03-01T05:00:00Z", 30.0),  # cloud outside the AOI
    ("B_20240410", True, (slice(20, 23), slice(20, 26)), "2024-04-10T05:00:00Z", 12.0),  # a little cloud
    ("C_20240425", True, (slice(0, 30), slice(0, 90)), "2024-04-25T05:00:00Z", 0.5),  # half the AOI
    ("D_20231101", True, None, "2023-11-01T05:00:00Z", 0.0),  # 182 days before the event
    ("POST_20240502", False, None, "2024-05-02T05:00:00Z", 1.0),
]
LATE = ("POST_20240507", False, None, "2024-05-07T05:00:00Z", 1.0)


def _schedule(tmp_path, api: str, model, **extra) -> str:
    spec = {
        "name": "event",
        "stac_search": {"url": api, "collections": ["sentinel-2-l2a"]},
        "asset": None,
        "event_date": "2024-05-01T00:00:00Z",
        "aois": [{"name": "valley", "geojson": str(_aoi(tmp_path / "aoi.geojson", _utm_origin()))}],
        "job": {"models": [str(model)], **SETTINGS},
        "output": {"root": "events"},
        **extra,
    }
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.slow
def test_pre_event_auto_is_picked_once_and_its_map_kept(tmp_path, ndvi_model):  # noqa: F811
    origin = _utm_origin()
    pre, post = world(OLD_SCARS, seed=1), world(OLD_SCARS + NEW_SCARS, seed=2)
    x0, y0 = origin
    to_degrees = Transformer.from_crs(32645, 4326, always_xy=True)
    footprint = box(*to_degrees.transform(x0, y0 - H * 10), *to_degrees.transform(x0 + W * 10, y0))
    root = tmp_path / "files"
    root.mkdir()
    with _range_server(root, tmp_path / "requests.log") as files:

        def item(name, is_pre, cloud, when, cover) -> dict:
            props = {"datetime": when, "eo:cloud_cover": cover, "published": when.replace("T05:", "T09:")}
            made = _l2a_item(root, name, pre if is_pre else post, slice(0, W), origin, cloud, props)
            made |= {"bbox": list(footprint.bounds), "geometry": mapping(footprint)}  # the scheduler reads it
            for asset in made["assets"].values():
                asset["href"] = f"{files}/{asset['href']}"
            return {**made, "collection": "sentinel-2-l2a"}

        items = [item(*c) for c in CANDIDATES]
        with stac_api(items) as (api, _):
            schedule = load_schedule(_schedule(tmp_path, api, ndvi_model, pre_event="auto"))
            event = schedule.event("valley")
            out = tmp_path / "events" / event
            assert len(run_pass(schedule, LocalRunner())) == 1
            pick = json.loads((schedule.events_dir / f"{event}.pre_event.json").read_text())
            pre_run = (out / "pre_event" / "run.json").read_text()

            items.append(item(*LATE))
            assert len(run_pass(schedule, LocalRunner())) == 1

    # the rule: in the 120 days before the event day, within 0.05 of the clearest, the most recent
    shares = {c["id"]: c["clear_share"] for c in pick["candidates"]}
    assert set(shares) == {"A_20240301", "B_20240410", "C_20240425"} and pick["picked"] == "B_20240410"
    assert json.loads((schedule.events_dir / f"{event}.pre_event.json").read_text()) == pick  # kept
    assert (out / "pre_event" / "run.json").read_text() == pre_run  # the pre-event map: made once
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["event"]["event_date"] == "2024-05-01"
    assert [s["id"].split("-")[0] for s in manifest["event"]["pre_event"]["scenes"]] == ["B_20240410"]
    assert [s["date"][:10] for s in manifest["scenes"]] == ["2024-05-02", "2024-05-07"]
    polygons = gpd.read_file(out / "landslides.gpkg")
    assert (polygons["status"] == "new").sum() == len(NEW_SCARS)

    summary = json.loads((schedule.events_dir / "summary.json").read_text())
    times = [s["time_to_map_s"] for s in manifest["scenes"]]
    assert all(t > 0 for t in times)
    assert summary["events"][event]["time_to_map"] == manifest["time_to_map"]
    assert summary["events"][event]["objects"] == len(NEW_SCARS) and summary["events"][event]["scenes"] == 2
    assert summary["time_to_map"] == {"scenes": 2, "median_s": pytest.approx(median(times))}


def test_schedule_event_keys_are_checked(tmp_path):
    base = {
        "name": "event",
        "catalog": "catalog.json",
        "event_date": "2024-05-01T00:00:00Z",
        "aois": [{"name": "valley", "bbox": [84.3, 28.1, 84.4, 28.2]}],
        "job": {"models": ["m"]},
        "output": {"root": "events"},
    }

    def load(**extra):
        path = tmp_path / "schedule.yaml"
        path.write_text(yaml.safe_dump({**base, **extra}))
        return load_schedule(path)

    with pytest.raises(ConfigError, match="not both"):
        load(pre_scenes=["pre.json"], pre_event="auto")
    with pytest.raises(ConfigError, match="job: leave out event_date, pre_scenes"):
        load(job={"models": ["m"], "pre_scenes": ["p.json"], "event_date": "2024-05-01"})
    plain, given = load(), load(pre_scenes=["pre/items.json"])
    assert plain.event("valley") != given.event("valley")  # another reference, another map
    assert given.event_keys("valley") == {"pre_scenes": [str(tmp_path / "pre/items.json")], "event_date": "2024-05-01"}
    assert plain.event_keys("valley") == {}
