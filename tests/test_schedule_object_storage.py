"""The scheduler without a shared disk (issue 27): ``output.root: s3://...`` holds the state (its
lock a lease object), the staged scenes, the events' AOI files and the event maps; nothing is
written on this machine. On moto's S3 server on loopback (``s3_server.py``).

- a pass while an event's job runs submits nothing; a job's items count as mapped once it has
  published them; ``submit.upload_to`` uploads the jobs' local inputs as ``submit --upload-to``;
- end to end, with the region jobs on S3: two passes over a growing catalog update the event
  map; a pass while the event's job holds its output lease submits nothing; a job that fails
  before publishing leaves its items unmapped for the next pass.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import rasterio
import yaml
from s3_server import s3_bucket
from test_jobs import EVENT, ORIGIN_A, ORIGIN_B, FakeCluster, make_scene, write_catalog, write_schedule
from test_jobs import scenes as scenes  # noqa: F401  (a fixture)
from test_region import SETTINGS, region  # noqa: F401  (a fixture)

from landslide_batch.cli import main
from landslide_batch.jobs.schedule import job_id, load_schedule, run_pass
from landslide_batch.jobs.stac import raster_footprint
from landslide_batch.jobs.state import SchedulerBusyError, SchedulerState
from landslide_batch.jobs.submit import ClusterError, JobExistsError, LocalRunner
from landslide_batch.outputs.folder import output_lock
from landslide_batch.storage import location

BUCKET = "maps"
ROOT = f"s3://{BUCKET}/events"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_the_state_on_object_storage_is_held_by_a_lease(tmp_path):
    state = f"{ROOT}/_scheduler/s.json"
    with s3_bucket(tmp_path, BUCKET) as (fs, _):
        with SchedulerState.open(state) as held:
            assert fs.exists(f"{BUCKET}/events/_scheduler/s.json.lock")  # the lease object
            with pytest.raises(SchedulerBusyError, match="another scheduler pass holds"):
                with SchedulerState.open(state):
                    pass
            held.record("job-1", "ev", ["a"], {"out": f"{ROOT}/ev", "scenes": ["s3://x/a.tif"]}, submitted=True)
        assert not fs.exists(f"{BUCKET}/events/_scheduler/s.json.lock")  # released
        with SchedulerState.open(state) as again:
            assert again.last_job("ev") == (
                "job-1",
                json.loads(fs.cat(f"{BUCKET}/events/_scheduler/s.json"))["jobs"]["job-1"],
            )
            assert again.event_items("ev") == set()  # running: not mapped yet


def test_a_cluster_schedule_on_object_storage_uploads_and_waits_for_the_job(tmp_path, scenes, tiny_model):  # noqa: F811
    """State, staging, AOI files and outputs on S3, the model uploaded (``submit.upload_to``):
    the submitted job names URIs only; a second pass while it runs submits nothing; its items are
    mapped once it has published them."""
    catalog = write_catalog(tmp_path / "catalog", scenes[1:3]).parent
    path = write_schedule(
        tmp_path,
        f"s3://{BUCKET}/catalog/catalog.json",
        tiny_model,
        aois=[{"name": "valley", "bbox": [86.99, 27.99, 87.05, 28.05]}],
        output={"root": ROOT},
        submit={"address": "http://127.0.0.1:1", "upload_to": f"s3://{BUCKET}/inputs"},
    )
    with s3_bucket(tmp_path, BUCKET) as (fs, _):
        fs.put(str(catalog), f"{BUCKET}/catalog", recursive=True)
        before = _files(tmp_path)
        schedule = load_schedule(path)
        event = schedule.event("valley")
        cluster = FakeCluster()
        assert run_pass(schedule, cluster, remote=True) == [job_id(event, ["s2-a"])]
        (job,) = cluster.jobs
        spec = job.job
        assert spec["out"] == f"{ROOT}/{event}" and spec["aoi"] == f"{ROOT}/_scheduler/test-event/{event}.geojson"
        assert spec["scenes"] == [f"{ROOT}/_staging/s2-a/scene.tif"]
        assert fs.cat(f"{BUCKET}/events/_staging/s2-a/scene.tif") == scenes[1]["tif"].read_bytes()
        (model,) = spec["models"]
        assert model.startswith(f"s3://{BUCKET}/inputs/sha256/") and sorted(location(model).ls_names()) == sorted(
            p.name for p in tiny_model.iterdir()
        )

        assert run_pass(schedule, cluster, remote=True) == [] and len(cluster.jobs) == 1  # still running
        state = json.loads(location(schedule.state_path).read_text())
        assert str(schedule.state_path) == f"{ROOT}/_scheduler/test-event.json" and state["events"] == {}
        cluster.finish(job.submission_id)
        assert run_pass(schedule, cluster, remote=True) == []
        state = json.loads(schedule.state_path.read_text())
        assert state["events"] == {event: {"items": ["s2-a"]}} and state["jobs"][job.submission_id]["state"] == "mapped"
        assert _files(tmp_path) - before == set()  # nothing written on this machine (but moto's log)


def test_an_unreachable_cluster_stops_the_schedule_before_anything_is_uploaded(tmp_path, scenes, tiny_model, capsys):  # noqa: F811
    write_catalog(tmp_path / "catalog", scenes[:2])
    submit = {"address": "http://127.0.0.1:1", "upload_to": f"s3://{BUCKET}/inputs"}
    path = write_schedule(tmp_path, "catalog/catalog.json", tiny_model, output={"root": ROOT}, submit=submit)
    with s3_bucket(tmp_path, BUCKET) as (fs, _):
        assert main(["schedule", str(path), "--once"]) == ClusterError.exit_code
        assert fs.find(BUCKET) == []  # no state, no upload
    assert "cannot reach the Ray Job API at http://127.0.0.1:1" in capsys.readouterr().err


def test_items_of_a_stac_api_are_staged_on_object_storage_and_mapped_once_their_run_json_names_them(
    tmp_path, tiny_model
):
    """Items searched on a STAC API (one asset per band: the item is the scene) are written to
    ``ROOT/_scheduler/<name>/items/`` on S3 for the job; a region's run.json names such a scene
    ``<item file>#<item id>``, which counts as published."""
    from test_schedule_stac_api import ITEMS, _item
    from test_schedule_stac_api import _schedule as api_schedule
    from test_stac_search import CONFORMS, stac_api

    items = list(ITEMS)
    with stac_api(items, CONFORMS) as (api, _), s3_bucket(tmp_path, BUCKET):
        path = api_schedule(tmp_path, api, tiny_model)
        spec = yaml.safe_load(Path(path).read_text())
        (tmp_path / "schedule.yaml").write_text(yaml.safe_dump({**spec, "output": {"root": ROOT}}))
        schedule = load_schedule(tmp_path / "schedule.yaml")
        event = schedule.event("valley")
        cluster = FakeCluster()
        (first,) = run_pass(schedule, cluster)
        (scene,) = cluster.jobs[0].job["scenes"]
        assert scene == f"{ROOT}/_scheduler/gorkha/items/S2A_clear.json"
        assert json.loads(location(scene).read_text())["id"] == "S2A_clear"

        run = {"status": "complete", "scenes": [{"source": f"{scene}#S2A_clear"}]}  # as a region job names it
        location(f"{ROOT}/{event}/run.json").write_text(json.dumps(run))
        cluster.status[first] = ("SUCCEEDED", "")
        items.append(_item("S2B_later", 4, 3.0))  # arrives on the API
        assert run_pass(schedule, cluster) == [job_id(event, ["S2A_clear", "S2B_later"])]
        state = json.loads(schedule.state_path.read_text())
        assert state["events"][event]["items"] == ["S2A_clear"] and state["jobs"][first]["ended"] == "published"


def test_a_local_run_waits_while_the_events_output_lease_is_held(tmp_path, scenes, tiny_model):  # noqa: F811
    """Locally-run jobs: the event's output lease (held by a job of another process) tells that
    its job runs; the pass runs nothing and records nothing until it is released."""
    write_catalog(tmp_path / "catalog", scenes[:2])
    aois = [{"name": "valley", "bbox": [86.99, 27.99, 87.05, 28.05]}]
    path = write_schedule(tmp_path, "catalog/catalog.json", tiny_model, aois=aois, output={"root": ROOT})
    with s3_bucket(tmp_path, BUCKET):
        schedule = load_schedule(path)
        out = location(f"{ROOT}/{schedule.event('valley')}")
        cluster = FakeCluster()
        (first,) = run_pass(schedule, cluster)
        cluster.finish(first)
        assert run_pass(schedule, cluster) == []  # settled: s2-a mapped
        late = {"id": "s2-c", "when": EVENT + timedelta(days=3), "tif": scenes[1]["tif"]}
        write_catalog(tmp_path / "catalog", scenes[:2] + [late])
        runner = LocalRunner()
        with output_lock(out):
            assert runner.state(first, out.uri)[0] == "RUNNING"
            assert run_pass(schedule, runner) == []
        state = json.loads(schedule.state_path.read_text())
        assert list(state["jobs"]) == [first] and state["events"][schedule.event("valley")]["items"] == ["s2-a"]
        assert runner.state(first, out.uri)[0] == "UNKNOWN"  # released, and not a job of this runner


def test_an_event_raster_replaced_on_object_storage_is_read_afresh(tmp_path):
    """A later job replaces an event's products by server-side copies (as publishing does): the
    STAC item of the next job, in the same scheduler process, reads the new raster, not GDAL's
    cached first version."""
    first, second = (
        make_scene(tmp_path / f"{i}.tif", origin, size=64) for i, origin in enumerate((ORIGIN_A, ORIGIN_B))
    )
    with s3_bucket(tmp_path, BUCKET):
        target = location(f"{ROOT}/ev/probability.tif")
        bounds = []
        for tif in (first, second):
            staged = location(f"{ROOT}/ev/.tmp-probability.tif")
            staged.put_file(tif)
            staged.move_to(target)  # copy on the store, then the temporary key removed
            bounds.append(raster_footprint(target)[2])
    assert bounds == [raster_footprint(first)[2], raster_footprint(second)[2]] and bounds[0] != bounds[1]


def _schedule(tmp_path: Path, d: Path, model: Path) -> str:
    spec = {
        "name": "gorkha",
        "catalog": f"s3://{BUCKET}/catalog/catalog.json",
        "event_date": EVENT.isoformat(),
        "aois": [{"name": "valley", "geojson": str(d / "aoi.geojson")}],
        "job": {"models": [str(model)], **SETTINGS},
        "output": {"root": ROOT},
    }
    (tmp_path / "schedule.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "schedule.yaml")


def _arrive(tmp_path: Path, fs, d: Path, names: list[str]) -> None:
    """The catalog on S3 now holds the scenes ``names`` (tif copied beside each item), a day apart."""
    local = tmp_path / "catalog"
    shutil.rmtree(local, ignore_errors=True)
    items = []
    for day, name in enumerate(names, start=1):
        (local / name).mkdir(parents=True)
        shutil.copy(d / f"{name}.tif", local / name / f"{name}.tif")
        items.append({"id": name, "when": EVENT + timedelta(days=day), "tif": local / name / f"{name}.tif"})
    write_catalog(local, items)
    fs.rm(f"{BUCKET}/catalog", recursive=True) if fs.exists(f"{BUCKET}/catalog") else None
    fs.put(str(local), f"{BUCKET}/catalog", recursive=True)
    fs.invalidate_cache()


def _valid(out) -> int:
    """Mapped pixels of the event map on object storage, read from its bytes: GDAL's /vsis3/ in
    this process kept answering the first version it read of the replaced object."""
    with rasterio.MemoryFile(out.join("probability.tif").read_bytes()) as mem, mem.open() as ds:
        return int((ds.read(1) >= 0).sum())


def _blocks(run: dict) -> dict[str, dict]:
    return {s["source"].rsplit("/", 1)[-1].removesuffix(".tif"): s["blocks"] for s in run["scenes"]}


class ThreadCluster:
    """A job API as Ray's, in this process: each submitted job runs (``LocalRunner``) in its own
    thread, PENDING until ``hold`` is cleared, RUNNING while it runs, then SUCCEEDED or FAILED
    with its error; a known submission id is refused."""

    def __init__(self) -> None:
        self.threads: dict[str, threading.Thread] = {}
        self.ended: dict[str, tuple[str, str]] = {}
        self.hold = threading.Event()  # set: jobs wait before they start

    def submit(self, job) -> str:
        if job.submission_id in self.threads:
            raise JobExistsError(job.submission_id)

        def run() -> None:
            while self.hold.is_set():
                time.sleep(0.05)
            try:
                LocalRunner().submit(job)
                self.ended[job.submission_id] = ("SUCCEEDED", "")
            except Exception as exc:  # noqa: BLE001  (the job's error is its status, as on a cluster)
                self.ended[job.submission_id] = ("FAILED", f"{type(exc).__name__}: {exc}")

        self.threads[job.submission_id] = threading.Thread(target=run, daemon=True)
        self.threads[job.submission_id].start()
        return job.submission_id

    def state(self, job_id: str, out: str) -> tuple[str, str]:
        if job_id in self.ended:
            return self.ended[job_id]
        if job_id not in self.threads:
            return "UNKNOWN", ""
        return ("PENDING", "") if self.hold.is_set() else ("RUNNING", "")

    def wait(self) -> None:
        for thread in self.threads.values():
            thread.join(timeout=600)
            assert not thread.is_alive()


@pytest.mark.slow
def test_scheduled_event_on_object_storage_end_to_end(region, tmp_path, monkeypatch):  # noqa: F811
    """Region jobs on S3 as a cluster runs them (``ThreadCluster``): scene A, then B arrives; the
    job over both waits (a pass then submits nothing), fails before publishing (B stays new, the
    map stays A's), and the next pass's job maps B into the event map (A resumed)."""
    d, model = region
    cluster = ThreadCluster()
    with s3_bucket(tmp_path, BUCKET) as (fs, _):
        _arrive(tmp_path, fs, d, ["A"])
        schedule = load_schedule(_schedule(tmp_path, d, model))
        event = schedule.event("valley")
        out = location(f"{ROOT}/{event}")
        assert run_pass(schedule, cluster) == [job_id(event, ["A"])]
        cluster.wait()
        valid_a = _valid(out)

        _arrive(tmp_path, fs, d, ["A", "B"])
        both = job_id(event, ["A", "B"])

        def crash(*args, **kwargs):
            raise OSError("the driver's node was lost before publishing")

        with monkeypatch.context() as m:
            m.setattr("landslide_batch.region.job.publish_products", crash)
            cluster.hold.set()
            assert run_pass(schedule, cluster) == [both]  # the first job published A
            one = json.loads((out / "run.json").read_text())
            assert _blocks(one)["A"]["computed"] == _blocks(one)["A"]["total"] > 0
            assert json.loads(schedule.state_path.read_text())["events"][event]["items"] == ["A"]
            assert run_pass(schedule, cluster) == [] and len(cluster.threads) == 2  # pending: nothing new
            cluster.hold.clear()
            cluster.wait()
        assert json.loads((out / "run.json").read_text()) == one  # nothing published

        failed: list[str] = []
        assert run_pass(schedule, cluster, failed=failed) == [job_id(event, ["A", "B"], 1)]  # B is still new
        assert failed == [f"{both}: FAILED: OSError: the driver's node was lost before publishing"]
        cluster.wait()
        assert run_pass(schedule, cluster) == []
        two = json.loads((out / "run.json").read_text())
        # B's blocks were mapped by the job that failed (kept in OUT/.work on S3): resumed, not computed again
        assert [_blocks(two)[s]["computed"] for s in "AB"] == [0, 0] and _blocks(two)["B"]["resumed"] > 0
        assert _blocks(two)["B"]["resumed"] + _blocks(two)["B"]["skipped_nodata"] == _blocks(two)["B"]["total"]
        assert _valid(out) > valid_a > 0  # the event map on S3 now covers B's part too
        state = json.loads(schedule.state_path.read_text())
        assert state["events"][event]["items"] == ["A", "B"]
        assert [r["state"] for r in state["jobs"].values()] == ["mapped", "failed", "mapped"]
