"""Scheduled runs map events: an AOI + date window is one region job, updated pass after pass.

The scenes are test_region's (two UTM zones, a model whose maps vary); the catalog is a local
static STAC catalog the test rewrites as scenes "arrive".
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import rasterio
import yaml
from maps import KERNEL_ATOL, assert_same_map
from test_jobs import EVENT, FakeCluster, write_catalog
from test_region import SETTINGS, _job, region  # noqa: F401  (region: the fixture)

from landslide_batch.cli import main
from landslide_batch.config import job_from_dict
from landslide_batch.errors import ConfigError
from landslide_batch.jobs.schedule import job_id, load_schedule, run_pass
from landslide_batch.jobs.submit import LocalRunner
from landslide_batch.pipeline import run_job


def _schedule_yaml(tmp_path, d, model, **extra) -> str:
    spec = {
        "name": "gorkha",
        "catalog": "catalog/catalog.json",
        "event_date": EVENT.isoformat(),
        "max_cloud_cover": 50,
        "aois": [{"name": "valley", "geojson": str(d / "aoi.geojson")}],
        "job": {"models": [str(model)], **SETTINGS},
        "output": {"root": "events"},
        **extra,
    }
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _items(d) -> list[dict]:
    """Scene A (EPSG:32644) first, B (EPSG:32645) a day later, and a cloudy copy of B that the
    cloud cover limit keeps out."""
    return [
        {"id": "s2-a", "when": EVENT + timedelta(days=1), "tif": d / "A.tif"},
        {"id": "s2-b", "when": EVENT + timedelta(days=2), "tif": d / "B.tif"},
        {"id": "s2-b-cloudy", "when": EVENT + timedelta(days=2), "tif": d / "B.tif", "cloud": 95},
    ]


def _blocks(manifest: dict) -> dict[str, dict]:
    return {s["source"].rsplit("/", 1)[-1]: s["blocks"] for s in manifest["scenes"]}


@pytest.mark.slow
def test_two_passes_update_the_event_map_with_the_new_scene_only(region, tmp_path):  # noqa: F811
    d, model = region
    items = _items(d)
    write_catalog(tmp_path / "catalog", items[:1] + items[2:])
    schedule = load_schedule(_schedule_yaml(tmp_path, d, model))
    event = schedule.event("valley")
    out = tmp_path / "events" / event

    first = run_pass(schedule, LocalRunner())
    assert first == [job_id(event, ["s2-a"])]
    one = json.loads((out / "run.json").read_text())
    assert _blocks(one)["A.tif"]["computed"] == _blocks(one)["A.tif"]["total"] > 0 and len(one["scenes"]) == 1

    assert run_pass(schedule, LocalRunner()) == []  # no new item: nothing runs, run.json untouched
    assert json.loads((out / "run.json").read_text()) == one

    write_catalog(tmp_path / "catalog", items)  # scene B arrives
    second = run_pass(schedule, LocalRunner())
    assert second == [job_id(event, ["s2-a", "s2-b"])]
    two = json.loads((out / "run.json").read_text())
    assert _blocks(two)["A.tif"]["computed"] == 0  # resumed, not mapped again
    assert _blocks(two)["A.tif"]["resumed"] == _blocks(two)["A.tif"]["total"]
    assert _blocks(two)["B.tif"]["computed"] == _blocks(two)["B.tif"]["total"] > 0
    assert 0 < two["merge_blocks"]["computed"] <= two["merge_blocks"]["total"]

    state = json.loads(schedule.state_path.read_text())
    assert state["events"][event]["items"] == ["s2-a", "s2-b"]
    assert [(j["items"], j["new"]) for j in state["jobs"].values()] == [
        (["s2-a"], ["s2-a"]),
        (["s2-a", "s2-b"], ["s2-b"]),
    ]
    item = json.loads((out / "item.json").read_text())
    assert item["id"] == event and item["properties"]["datetime"].startswith(items[1]["when"].date().isoformat())
    assert sorted(link["href"].rsplit("/", 1)[-1] for link in item["links"] if link["rel"] == "derived_from") == [
        "s2-a.json",
        "s2-b.json",
    ]
    collection = json.loads((tmp_path / "events" / "collection.json").read_text())  # the pass gathers the events
    assert collection["type"] == "Collection" and collection["id"] == schedule.config.name
    assert [link["href"] for link in collection["links"] if link["rel"] == "item"] == [f"./{event}/item.json"]

    # The event's map is the map of one fresh region job over both scenes.
    run_job(job_from_dict(_job(d, model, "fresh-event", ["A.tif", "B.tif"])))
    with rasterio.open(out / "probability.tif") as got, rasterio.open(d / "fresh-event" / "probability.tif") as ref:
        assert (got.crs, got.transform, got.shape) == (ref.crs, ref.transform, ref.shape)
        event_map, fresh = got.read(1), ref.read(1)
    assert_same_map(event_map, fresh, atol=KERNEL_ATOL)


def test_cluster_submission_of_an_event_follows_the_shared_fs_rule(region, tmp_path, capsys):  # noqa: F811
    d, model = region
    write_catalog(tmp_path / "catalog", _items(d))
    cluster = FakeCluster()
    refused = load_schedule(_schedule_yaml(tmp_path, d, model, submit={"address": "http://127.0.0.1:1"}))
    with pytest.raises(ConfigError, match=r"(?s)cannot read paths of this machine.*scenes\[0\]"):
        run_pass(refused, cluster, remote=True)
    assert cluster.jobs == [] and not refused.state_path.exists()  # nothing recorded

    shared = load_schedule(
        _schedule_yaml(tmp_path, d, model, submit={"address": "http://127.0.0.1:1", "shared_fs": True})
    )
    event = shared.event("valley")
    assert run_pass(shared, cluster, remote=True) == [job_id(event, ["s2-a", "s2-b"])]
    (job,) = cluster.jobs
    spec = job_from_dict(job.job)
    assert spec.scenes == [str(d / "A.tif"), str(d / "B.tif")] and spec.out == tmp_path / "events" / event
    assert run_pass(shared, cluster, remote=True) == [] and len(cluster.jobs) == 1

    # State lost: the same items give the same submission id, which the cluster refuses.
    shared.state_path.rm()
    assert run_pass(shared, cluster, remote=True) == [] and len(cluster.jobs) == 1
    assert [j["outcome"] for j in json.loads(shared.state_path.read_text())["jobs"].values()] == [
        "already known to the cluster"
    ]

    # The CLI refuses the same way, with the config error's exit code.
    assert (
        main(
            [
                "schedule",
                _schedule_yaml(tmp_path, d, model, submit={"address": "http://127.0.0.1:1"}, state="other.json"),
                "--once",
            ]
        )
        == ConfigError.exit_code
    )
    assert "cannot read paths of this machine" in capsys.readouterr().err


@pytest.mark.slow
def test_scheduled_sentinel2_items_with_one_asset_per_band(region, tmp_path):  # noqa: F811
    """Real L2A catalogs have one asset per band: with ``asset: null`` each item is the scene,
    ingested as a STAC item (bands resampled to 10 m, SCL clouds masked), and a second pass maps
    only the item that arrived."""
    import pystac
    from shapely.geometry import mapping
    from test_region import _l2a_item, l2a_world

    from landslide_batch.jobs.stac import raster_footprint

    _, model = region
    world, (x0, y0), aoi, _ = l2a_world(tmp_path)
    files = tmp_path / "files"
    files.mkdir()
    items = []
    for name, cols, origin, day in (
        ("S2A_20150502", slice(0, 180), (x0, y0), 1),
        ("S2B_20150507", slice(120, 300), (x0 + 1200, y0), 2),
    ):
        d = _l2a_item(files, name, world, cols, origin, None, {"eo:cloud_cover": 1.0})
        for asset in d["assets"].values():
            asset["href"] = str(files / asset["href"])
        geom, _, bounds = raster_footprint(files / name / "B02.tif")
        d.update(
            geometry=mapping(geom),
            bbox=list(geom.bounds),
            properties={**d["properties"], "datetime": (EVENT + timedelta(days=day)).isoformat()},
        )
        items.append(pystac.Item.from_dict(d))

    def catalog(with_items):
        cat = pystac.Catalog("l2a", "per-band items")
        for item in with_items:
            cat.add_item(item.clone())
        cat.normalize_hrefs(str(tmp_path / "catalog"))
        cat.save(pystac.CatalogType.SELF_CONTAINED)

    spec = {
        "name": "l2a",
        "catalog": "catalog/catalog.json",
        "asset": None,
        "event_date": EVENT.isoformat(),
        "aois": [{"name": "valley", "geojson": str(aoi)}],
        "job": {"models": [str(model)], **SETTINGS},
        "output": {"root": "events"},
    }
    (tmp_path / "schedule.yaml").write_text(yaml.safe_dump(spec))

    catalog(items[:1])
    schedule = load_schedule(str(tmp_path / "schedule.yaml"))
    out = tmp_path / "events" / schedule.event("valley")
    assert run_pass(schedule, LocalRunner()) == [job_id(schedule.event("valley"), ["S2A_20150502"])]
    catalog(items)
    assert run_pass(schedule, LocalRunner()) == [job_id(schedule.event("valley"), ["S2A_20150502", "S2B_20150507"])]
    run = json.loads((out / "run.json").read_text())
    blocks = {
        name: s["blocks"] for s in run["scenes"] for name in ("S2A_20150502", "S2B_20150507") if name in s["source"]
    }
    assert blocks["S2A_20150502"]["computed"] == 0 < blocks["S2A_20150502"]["resumed"]
    assert blocks["S2B_20150507"]["computed"] == blocks["S2B_20150507"]["total"] > 0
    with rasterio.open(out / "probability.tif") as ds:
        prob = ds.read(1)
        assert ds.crs.to_epsg() == 32645
    assert (prob >= 0).mean() > 0.9 and prob[prob >= 0].std() >= 0.05
