"""A region job from S3 to S3 on a shared-nothing Ray cluster (issue 27): the worker node runs in
its own mount namespace and sees none of the driver's files (``test_shared_nothing``'s cluster),
so every scene store, scene map and merge store lives under ``OUT/.work`` on S3 (moto on
loopback). The driver is a subprocess, SIGKILLed once a scene's map is published and before the
region's is; the re-run computes only the blocks not finished then, and a fourth scene added
later is the only one mapped. ``--overwrite`` on object storage (no Ray) maps everything again.
"""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import rasterio
import yaml
from maps import KERNEL_ATOL, assert_same_map
from test_event_maps import NEW_SCARS, OLD_SCARS, _event_job, _pixel_box, ndvi_model, world  # noqa: F401
from test_jobs import _stop_session
from test_region import SETTINGS, _job, _l2a_item, l2a_world, region  # noqa: F401  (``region``: the fixture)
from test_shared_nothing import BIN, BUCKET, _can_unshare, cluster, s3  # noqa: F401  (fixtures)

from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import write_geotiff

OUT = f"{BUCKET}/regions/r1"


def _probability(data: bytes) -> np.ndarray:
    with rasterio.MemoryFile(data) as f, f.open() as ds:
        return ds.read(1)


def _job_file(tmp_path, d, gcs: str, scenes: list[str], name: str) -> str:
    """The region job as a user would submit it: scenes and model on S3, ``out`` on S3, Ray."""
    job = {
        **SETTINGS,
        "aoi": str(d / "aoi.geojson"),  # read by the driver only
        "scenes": [f"s3://{BUCKET}/scenes/{s}" for s in scenes],
        "models": [f"s3://{BUCKET}/models/varying"],
        "out": f"s3://{OUT}",
        "executor": "ray",
        "threads": 1,
        "ray": {"address": gcs, "num_actors": 1},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def _driver(job: str, env: dict[str, str], log) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(BIN / "landslide-batch"), "run", job],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _finished(proc: subprocess.Popen, log, timeout: float = 400) -> None:
    assert proc.wait(timeout) == 0, log.read_text()[-6000:]


def _scene_state(fs) -> dict[str, tuple[bool, int]]:
    """scene id -> (its map published, block markers in its working folder), as S3 holds them."""
    fs.invalidate_cache()
    state: dict[str, tuple[bool, int]] = {}
    if not fs.exists(f"{OUT}/.work/scenes"):
        return state
    for folder in fs.ls(f"{OUT}/.work/scenes", detail=False):
        sid = folder.rsplit("/", 1)[1]
        published = fs.exists(f"{folder}/map/run.json")
        markers = fs.ls(f"{folder}/map/.work/blocks", detail=False) if fs.exists(f"{folder}/map/.work/blocks") else []
        state[sid] = (published, sum(m.endswith(".done") for m in markers))
    return state


def _run_json(fs) -> dict:
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{OUT}/run.json"))


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not _can_unshare(),
    reason="needs Linux, root and `unshare -m` (mount namespaces) to hide the driver's disk from a Ray worker node",
)
def test_region_job_s3_to_s3_on_a_hidden_worker_resumes_after_a_killed_driver(
    cluster,  # noqa: F811
    s3,  # noqa: F811
    region,  # noqa: F811
    tmp_path,
):
    fs, _ = s3
    d, model = region
    with rasterio.open(d / "B.tif") as ds:  # the fourth scene: a crop of B, shifted south-west
        west, north = ds.transform @ (40, 120)
        write_geotiff(d / "D.tif", ds.read()[:, 120:250, 40:190], crs=str(ds.crs), origin=(west, north))
    for name in ("A.tif", "B.tif", "C.tif", "D.tif"):
        fs.put_file(str(d / name), f"{BUCKET}/scenes/{name}")
    for f in model.iterdir():
        fs.put_file(str(f), f"{BUCKET}/models/varying/{f.name}")
    three = ["A.tif", "B.tif", "C.tif"]
    expected = run_job(job_from_dict(_job(d, model, "reference", three)))  # local files, local executor
    job = _job_file(tmp_path, d, cluster.gcs, three, "three")

    # 1. The driver is killed once a scene's map is published, before the region's.
    log = tmp_path / "killed.log"
    driver = _driver(job, cluster.env, log)
    deadline = time.monotonic() + 400
    while not any(published for published, _ in _scene_state(fs).values()):
        assert driver.poll() is None, log.read_text()[-6000:]
        assert time.monotonic() < deadline, log.read_text()[-6000:]
        time.sleep(0.3)
    _stop_session(driver.pid)
    driver.wait()
    # What the dead driver's actor was writing settles (Ray ends the actors of a dead driver).
    before, settled = _scene_state(fs), None
    while settled != before:
        time.sleep(3)
        settled, before = before, _scene_state(fs)
    fs.invalidate_cache()
    assert not fs.exists(f"{OUT}/run.json")
    published = [sid for sid, (done, _) in before.items() if done]
    assert 1 <= len(published) < 3, before  # the kill hit the job in flight: some scenes mapped, not all

    # 2. The same job again: only the blocks without a marker are computed, all on the worker.
    log = tmp_path / "resumed.log"
    _finished(_driver(job, cluster.env, log), log)
    run = _run_json(fs)
    scenes = {s["id"]: s["blocks"] for s in run["scenes"]}
    assert len(scenes) == 3
    for sid, blocks in scenes.items():
        done, markers = before.get(sid, (False, 0))
        assert blocks["computed"] == (0 if done else blocks["total"] - markers), (sid, blocks, before)
    assert 0 < run["blocks"]["computed"] < run["blocks"]["total"]
    nodes = {n for blocks in scenes.values() for n in blocks["node_of"].values()}
    assert nodes == {cluster.node} and {a["node"] for a in run["actors"]} == {cluster.node}
    got = _probability(fs.cat_file(f"{OUT}/probability.tif"))
    want = _probability((d / "reference" / "probability.tif").read_bytes())
    assert (want >= 0).mean() > 0.5 and run["region"]["height"] == expected["region"]["height"]
    assert_same_map(got, want, atol=KERNEL_ATOL)
    fs.invalidate_cache()  # the merge state stays on S3 for the next pass; the products' staging copies do not
    assert fs.exists(f"{OUT}/.work/region/probability.zarr/zarr.json") and not fs.exists(f"{OUT}/.work/final")

    # 3. A fourth scene: only it is mapped; the merge kept on S3 merges only the blocks it touches.
    log = tmp_path / "four.log"
    _finished(_driver(_job_file(tmp_path, d, cluster.gcs, [*three, "D.tif"], "four"), cluster.env, log), log)
    four = _run_json(fs)
    (new,) = [s for s in four["scenes"] if s["source"].endswith("D.tif")]
    assert new["blocks"]["computed"] > 0 and four["blocks"]["computed"] == new["blocks"]["computed"]
    assert all(s["blocks"]["computed"] == 0 for s in four["scenes"] if s is not new)
    assert 0 < four["merge_blocks"]["computed"] < four["merge_blocks"]["total"]
    assert set(new["blocks"]["node_of"].values()) == {cluster.node}

    # 4. vectorize on the region map on S3 (no Ray, no model): the polygons at another threshold.
    again = subprocess.run(
        [str(BIN / "landslide-batch"), "vectorize", f"s3://{OUT}", "--threshold", "0.7"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert _run_json(fs)["derivations"][-1]["threshold"] == 0.7


def test_region_job_on_s3_overwrite_maps_and_merges_everything_again(s3, region, tmp_path):  # noqa: F811
    """``--overwrite`` on object storage, on the local executor: a finished region is found finished,
    then mapped and merged again from nothing and published, leaving no staging copies."""
    fs, _ = s3
    d, model = region
    fs.put_file(str(d / "C.tif"), f"{BUCKET}/scenes/C.tif")
    out = f"{BUCKET}/regions/overwrite"
    local = _job(d, model, "local", ["C.tif"])  # the region tests' job, its scene and out on S3
    job = job_from_dict({**local, "scenes": [f"s3://{BUCKET}/scenes/C.tif"], "out": f"s3://{out}"})
    first = run_job(job)
    assert first["blocks"]["computed"] == first["blocks"]["total"] > 0
    assert run_job(job)["blocks"]["computed"] == 0  # found finished
    again = run_job(job, overwrite=True)
    assert again["blocks"]["computed"] == first["blocks"]["computed"]
    assert again["merge_blocks"]["computed"] == again["merge_blocks"]["total"] == first["merge_blocks"]["total"]
    fs.invalidate_cache()
    assert json.loads(fs.cat_file(f"{out}/run.json"))["timings"] == again["timings"]
    assert not fs.exists(f"{out}/.work/final") and fs.exists(f"{out}/landslides.gpkg")


def test_a_stac_item_collection_on_s3_maps_a_region_on_s3(s3, region, tmp_path):  # noqa: F811
    """An ItemCollection on S3 whose relative hrefs name band files beside it: its item is written
    under ``OUT/.work/items/`` on S3, ingested from there, and gives the map of the same catalog
    and job on a local disk."""
    fs, _ = s3
    _, model = region
    world, origin, aoi, _ = l2a_world(tmp_path)
    root = tmp_path / "catalog"
    root.mkdir()
    item = _l2a_item(
        root, "S2A_45RUL_20150502", world, slice(0, 180), origin, None, {"datetime": "2015-05-02T05:00:00Z"}
    )
    (root / "collection.json").write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    fs.put(str(root), f"{BUCKET}/catalog", recursive=True)
    out = f"{BUCKET}/regions/stac"
    job = {"aoi": str(aoi), "models": [str(model)], **SETTINGS}
    on_s3 = run_job(job_from_dict({**job, "scenes": f"s3://{BUCKET}/catalog/collection.json", "out": f"s3://{out}"}))
    run_job(job_from_dict({**job, "scenes": str(root / "collection.json"), "out": str(tmp_path / "local")}))
    fs.invalidate_cache()
    (written,) = fs.ls(f"{out}/.work/items", detail=False)
    assert json.loads(fs.cat_file(written))["assets"]["scl"]["href"] == f"s3://{BUCKET}/catalog/{item['id']}/SCL.tif"
    assert [s["date"] for s in on_s3["scenes"]] == ["2015-05-02T05:00:00Z"]
    got = _probability(fs.cat_file(f"{out}/probability.tif"))
    assert_same_map(got, _probability((tmp_path / "local" / "probability.tif").read_bytes()), atol=KERNEL_ATOL)


def test_an_event_map_on_s3_finds_the_new_scars_and_vectorizes_there(s3, ndvi_model, tmp_path):  # noqa: F811
    """A region job with a pre-event map, ``out`` on S3: the pre-event map in ``OUT/pre_event`` and
    both merges stay on S3; the change-aware polygons find the new scars, not the old ones, and
    ``vectorize`` rebuilds them from those stores (at 0.9 no new object, the old ones remain)."""
    import geopandas as gpd

    fs, _ = s3
    out = f"{BUCKET}/events/e1"
    pre, post = world(OLD_SCARS, seed=1), world(OLD_SCARS + NEW_SCARS, seed=2)
    manifest, _, origin = _event_job(tmp_path, ndvi_model, pre, post, event_date="2024-05-01", out=f"s3://{out}")
    assert manifest["event"]["pre_event"]["folder"] == "pre_event"
    fs.invalidate_cache()
    assert fs.exists(f"{out}/pre_event/run.json") and fs.exists(f"{out}/pre_event/.work/region/scene.zarr/zarr.json")

    def polygons() -> gpd.GeoDataFrame:
        with fs.open(f"{out}/landslides.gpkg", "rb") as f:
            return gpd.read_file(f)

    found = polygons()
    new, old = found[found["status"] == "new"], found[found["status"] == "pre-existing"]
    assert all(new.intersects(_pixel_box(origin, s)).any() for s in NEW_SCARS)
    assert not any(new.intersects(_pixel_box(origin, s)).any() for s in OLD_SCARS) and len(old) > 0
    from landslide_batch.cli import main

    assert main(["vectorize", f"s3://{out}", "--threshold", "0.9"]) == 0
    fs.invalidate_cache()
    high = polygons()
    assert (high["status"] == "new").sum() == 0 and (high["status"] == "pre-existing").sum() == len(OLD_SCARS)
