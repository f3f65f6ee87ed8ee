"""Cluster jobs and scheduled runs: submission specs, the scheduler over a static STAC catalog,
STAC items of finished jobs, and (slow) a real local Ray head running a submitted job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import yaml
from s3_server import s3_bucket
from shapely.geometry import box, mapping

from landslide_batch.cli import main
from landslide_batch.config import job_from_dict
from landslide_batch.errors import ConfigError, InputError
from landslide_batch.jobs.schedule import job_id, load_schedule, run_pass, run_schedule
from landslide_batch.jobs.stac import raster_footprint
from landslide_batch.jobs.state import SchedulerBusyError, SchedulerState
from landslide_batch.jobs.submit import (
    ClusterError,
    JobExistsError,
    JobSubmission,
    RaySubmitter,
    StacOptions,
    prepare_job,
)
from landslide_batch.storage import location
from landslide_batch.synthetic import synthetic_scene, write_geotiff

EVENT = datetime(2026, 7, 1, tzinfo=timezone.utc)
ORIGIN_A = (500000.0, 3100000.0)  # UTM 45N: about 87.0 E, 28.0 N
ORIGIN_B = (700000.0, 3100500.0)
ORIGIN_FAR = (600000.0, 3000000.0)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_scene(path: Path, origin: tuple[float, float], seed: int = 0, size: int = 96) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(path, synthetic_scene(size, size, seed=seed)[0], origin=origin)


def write_catalog(root: Path, scenes: list[dict]) -> Path:
    """(Re)write a static catalog: one item per scene, its GeoTIFF as asset ``image``."""
    catalog = pystac.Catalog("post-event", "post-event scenes")
    for s in scenes:
        geom, _, _ = raster_footprint(s["tif"])
        item = pystac.Item(
            s["id"],
            mapping(geom),
            list(geom.bounds),
            s["when"],
            {"eo:cloud_cover": s.get("cloud", 5)},
            collection=s.get("collection", "s2-l4s"),
        )
        item.add_asset("image", pystac.Asset(str(s["tif"]), media_type=pystac.MediaType.GEOTIFF))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.fixture
def scenes(tmp_path):
    """Six items; two pass every filter: s2-a (AOI "valley", in lon/lat) and s2-b (AOI "ridge", in UTM)."""
    d = tmp_path / "catalog"
    return [
        {
            "id": "s2-before",
            "when": EVENT - timedelta(days=2),
            "tif": make_scene(d / "s2-before" / "scene.tif", ORIGIN_A),
        },
        {"id": "s2-a", "when": EVENT + timedelta(days=1), "tif": make_scene(d / "s2-a" / "scene.tif", ORIGIN_A, 1)},
        {"id": "s2-far", "when": EVENT + timedelta(days=1), "tif": make_scene(d / "s2-far" / "scene.tif", ORIGIN_FAR)},
        {
            "id": "s1-a",
            "when": EVENT + timedelta(days=1),
            "collection": "s1",
            "tif": make_scene(d / "s1-a" / "scene.tif", ORIGIN_A),
        },
        {
            "id": "s2-cloudy",
            "when": EVENT + timedelta(days=1),
            "cloud": 90,
            "tif": make_scene(d / "s2-cloudy" / "scene.tif", ORIGIN_A),
        },
        {"id": "s2-b", "when": EVENT + timedelta(days=2), "tif": make_scene(d / "s2-b" / "scene.tif", ORIGIN_B, 2)},
    ]


def write_schedule(tmp_path: Path, catalog_href: str, model: Path, **extra) -> Path:
    spec = {
        "name": "test-event",
        "catalog": catalog_href,
        "collection": "s2-l4s",
        "asset": "image",
        "event_date": EVENT.isoformat(),
        "max_cloud_cover": 50,
        "aois": [
            {"name": "valley", "bbox": [86.99, 27.99, 87.05, 28.05]},
            {"name": "ridge", "crs": "EPSG:32645", "bbox": [699000, 3099000, 702000, 3101000]},
        ],
        "job": {"models": [str(model)], "tile": 64, "block": 96, "threads": 1, "batch_size": 8},
        "output": {"root": "outputs"},
        "submit": {"address": "http://127.0.0.1:1"},
        **extra,
    }
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class FakeCluster:
    """Records submissions and, like Ray, refuses a submission id it has seen; its jobs run until
    ``finish`` ends them (published: a complete ``run.json`` naming the job's scenes, as a region
    job writes; or failed before publishing)."""

    def __init__(self):
        self.jobs: list[JobSubmission] = []
        self.status: dict[str, tuple[str, str]] = {}

    def submit(self, job: JobSubmission) -> str:
        if job.submission_id in {j.submission_id for j in self.jobs}:
            raise JobExistsError(f"job {job.submission_id} exists")
        self.jobs.append(job)
        self.status[job.submission_id] = ("RUNNING", "")
        return job.submission_id

    def state(self, job_id: str, out: str) -> tuple[str, str]:
        return self.status.get(job_id, ("UNKNOWN", "not known to this cluster"))

    def finish(self, job_id: str, *, publish: bool = True) -> None:
        (job,) = [j for j in self.jobs if j.submission_id == job_id]
        if publish:
            run = {"status": "complete", "scenes": [{"source": s} for s in job.job["scenes"]]}
            out = location(job.job["out"])  # a path or an object-store URI
            out.makedirs()
            (out / "run.json").write_text(json.dumps(run))
        self.status[job_id] = ("SUCCEEDED", "") if publish else ("FAILED", "killed before publishing")


def test_scheduler_submits_one_region_job_per_event_and_each_item_once(tmp_path, scenes, tiny_model):
    write_catalog(tmp_path / "catalog", scenes)
    schedule = load_schedule(write_schedule(tmp_path, "catalog/catalog.json", tiny_model))
    valley, ridge = schedule.event("valley"), schedule.event("ridge")
    cluster = FakeCluster()

    first = run_pass(schedule, cluster)
    assert first == [job_id(valley, ["s2-a"]), job_id(ridge, ["s2-b"])]
    a, _ = cluster.jobs
    assert [j.metadata["event"] for j in cluster.jobs] == ["valley", "ridge"]
    assert a.job["scenes"] == [str(scenes[1]["tif"])] and Path(a.job["out"]) == tmp_path / "outputs" / valley
    spec = job_from_dict(a.job)  # a complete, valid region job spec
    assert spec.models == [tiny_model] and json.loads(spec.aoi.read_text())["properties"]["name"] == "valley"
    assert a.stac == StacOptions(
        item_id=valley, when=scenes[1]["when"], derived_from=(str(tmp_path / "catalog" / "s2-a" / "s2-a.json"),)
    )

    assert run_pass(schedule, cluster) == [] and len(cluster.jobs) == 2
    assert json.loads(schedule.state_path.read_text())["events"] == {}  # running: nothing mapped yet
    for job in cluster.jobs:
        cluster.finish(job.submission_id)

    late = {
        "id": "s2-late",
        "when": EVENT + timedelta(days=1, hours=12),  # older than the newest processed
        "tif": make_scene(tmp_path / "catalog" / "s2-late" / "scene.tif", ORIGIN_A),
    }
    new = {
        "id": "s2-c",
        "when": EVENT + timedelta(days=3),
        "tif": make_scene(tmp_path / "catalog" / "s2-c" / "scene.tif", ORIGIN_A, 3),
    }
    write_catalog(tmp_path / "catalog", scenes + [late, new])
    assert run_pass(schedule, cluster) == [job_id(valley, ["s2-a", "s2-late", "s2-c"])]
    assert cluster.jobs[-1].job["scenes"] == [str(s["tif"]) for s in (scenes[1], late, new)]  # oldest first
    state = json.loads(schedule.state_path.read_text())
    assert state["events"] == {valley: {"items": ["s2-a"]}, ridge: {"items": ["s2-b"]}} and len(state["jobs"]) == 3
    cluster.finish(cluster.jobs[-1].submission_id)
    assert run_pass(schedule, cluster) == []
    state = json.loads(schedule.state_path.read_text())
    assert state["events"][valley]["items"] == ["s2-a", "s2-c", "s2-late"]

    # State lost: the same items give the same submission ids, which the cluster refuses; its
    # jobs published them, so they are mapped without a new job.
    schedule.state_path.rm()
    assert run_pass(schedule, cluster) == [] and len(cluster.jobs) == 3
    state = json.loads(schedule.state_path.read_text())
    outcomes = {r["aoi"]: (r["outcome"], r["state"]) for r in state["jobs"].values()}
    assert outcomes == {
        "valley": ("already known to the cluster", "mapped"),
        "ridge": ("already known to the cluster", "mapped"),
    }
    assert state["events"][valley]["items"] == ["s2-a", "s2-c", "s2-late"]


def test_new_job_settings_give_new_event_ids(tmp_path, tiny_model):
    a = load_schedule(write_schedule(tmp_path, "catalog.json", tiny_model))
    b = load_schedule(
        write_schedule(
            tmp_path,
            "catalog.json",
            tiny_model,
            job={"models": [str(tiny_model)], "tile": 64, "block": 96, "threshold": 0.3},
        )
    )
    assert a.event("valley") == load_schedule(write_schedule(tmp_path, "catalog.json", tiny_model)).event("valley")
    assert a.event("valley") != b.event("valley") and a.event("valley") != a.event("ridge")
    later = load_schedule(write_schedule(tmp_path, "catalog.json", tiny_model, event_date="2026-08-01T00:00:00Z"))
    longer = load_schedule(write_schedule(tmp_path, "catalog.json", tiny_model, until="2026-12-01T00:00:00Z"))
    assert later.event("valley") != a.event("valley") == longer.event("valley")  # a later until: the same event
    assert a.event("valley").startswith("ev-valley-")
    ev = a.event("valley")
    assert job_id(ev, ["x", "y"]) == job_id(ev, ["y", "x"]) != job_id(ev, ["x"])


def test_failed_job_is_recorded_and_unreachable_cluster_retried(tmp_path, scenes, tiny_model):
    write_catalog(tmp_path / "catalog", scenes)
    schedule = load_schedule(write_schedule(tmp_path, "catalog/catalog.json", tiny_model))
    valley, ridge = schedule.event("valley"), schedule.event("ridge")

    class Broken:
        def submit(self, job):
            raise ClusterError("connection refused")

    with pytest.raises(ClusterError):
        run_pass(schedule, Broken())
    assert not schedule.state_path.exists()  # nothing recorded: the next pass starts over

    class BadFirstScene(FakeCluster):
        bad = True

        def submit(self, job):
            if self.bad and "s2-a" in job.metadata["items"].split(","):
                raise InputError("scene has 13 bands")
            return super().submit(job)

    cluster = BadFirstScene()
    assert run_pass(schedule, cluster) == [job_id(ridge, ["s2-b"])]
    outcomes = {r["aoi"]: r["outcome"] for r in json.loads(schedule.state_path.read_text())["jobs"].values()}
    assert outcomes == {"valley": "failed: scene has 13 bands", "ridge": "started"}
    # The failed event's items stay new: the next pass tries again (the running one is left alone).
    cluster.bad = False
    assert run_pass(schedule, cluster) == [job_id(valley, ["s2-a"])]


def test_an_event_gets_no_second_job_while_its_job_runs_and_is_mapped_once_published(tmp_path, scenes, tiny_model):
    """A scene arriving while the event's job runs waits for it; a job that ends without
    publishing (FAILED, or SUCCEEDED without its scenes in run.json) leaves its items new, and the
    retry gets a new submission id (the cluster keeps the old one)."""
    write_catalog(tmp_path / "catalog", scenes[:2])
    schedule = load_schedule(write_schedule(tmp_path, "catalog/catalog.json", tiny_model))
    valley = schedule.event("valley")
    cluster = FakeCluster()
    first = job_id(valley, ["s2-a"])
    assert run_pass(schedule, cluster) == [first]

    late = {"id": "s2-c", "when": EVENT + timedelta(days=3), "tif": make_scene(tmp_path / "c" / "c.tif", ORIGIN_A, 3)}
    write_catalog(tmp_path / "catalog", scenes[:2] + [late])
    failed: list[str] = []
    assert run_pass(schedule, cluster, failed=failed) == [] and len(cluster.jobs) == 1 and failed == []
    assert json.loads(schedule.state_path.read_text())["events"] == {}

    cluster.finish(first, publish=False)  # killed before it published
    second = job_id(valley, ["s2-a", "s2-c"])
    assert run_pass(schedule, cluster, failed=failed) == [second]
    assert failed == [f"{first}: FAILED: killed before publishing"]
    state = json.loads(schedule.state_path.read_text())
    assert state["events"] == {} and state["jobs"][first]["state"] == "failed"

    cluster.status[second] = ("SUCCEEDED", "")  # ended, but its run.json names none of its scenes
    assert run_pass(schedule, cluster) == [job_id(valley, ["s2-a", "s2-c"], 1)]
    state = json.loads(schedule.state_path.read_text())
    assert state["jobs"][second]["ended"].startswith("ended without publishing") and state["events"] == {}
    retry = cluster.jobs[-1].submission_id
    assert retry == f"{second}-2"
    cluster.finish(retry)
    assert run_pass(schedule, cluster) == [] and len(cluster.jobs) == 3
    assert json.loads(schedule.state_path.read_text())["events"][valley]["items"] == ["s2-a", "s2-c"]


def test_scheduler_stages_scenes_from_object_store(tmp_path, scenes, tiny_model):
    """Catalog and assets on object storage (moto's S3 on loopback): assets are staged once."""
    local = write_catalog(tmp_path / "catalog", scenes[1:3]).parent
    with s3_bucket(tmp_path, "sentinel") as (fs, _):
        fs.put(str(local), "sentinel/catalog", recursive=True)
        schedule = load_schedule(write_schedule(tmp_path, "s3://sentinel/catalog/catalog.json", tiny_model))
        cluster = FakeCluster()
        assert run_pass(schedule, cluster) == [job_id(schedule.event("valley"), ["s2-a"])]
    (staged,) = map(Path, cluster.jobs[0].job["scenes"])
    assert staged.parent == tmp_path / "outputs" / "_staging" / "s2-a"
    assert staged.read_bytes() == scenes[1]["tif"].read_bytes()


def test_scheduler_runs_locally_and_describes_outputs(tmp_path, scenes, tiny_model, capsys):
    write_catalog(tmp_path / "catalog", scenes)
    path = write_schedule(
        tmp_path, "catalog/catalog.json", tiny_model, output={"root": "outputs", "publish": "published"}
    )
    assert main(["schedule", str(path), "--once", "--local"]) == 0
    ids = capsys.readouterr().out.split()
    schedule = load_schedule(path)
    events = [schedule.event("valley"), schedule.event("ridge")]
    assert ids == [job_id(events[0], ["s2-a"]), job_id(events[1], ["s2-b"])]

    for name, event, scene in zip(("valley", "ridge"), events, (scenes[1], scenes[5]), strict=True):
        out = tmp_path / "outputs" / event
        with rasterio.open(out / "probability.tif") as prob, rasterio.open(scene["tif"]) as src:
            assert (prob.crs, prob.res) == (src.crs, src.res)  # the region grid: UTM 45N at 10 m
            shape, bounds = list(prob.shape), prob.bounds
        footprint, _, _ = raster_footprint(scene["tif"])
        item = pystac.Item.from_file(str(out / "item.json"))
        assert item.id == event and item.datetime == scene["when"]
        assert item.get_single_link("derived_from").href.endswith(f"{scene['id']}.json")
        assert item.assets["probability"].get_absolute_href() == str(out / "probability.tif")
        assert item.assets["probability"].media_type == pystac.MediaType.COG
        assert item.assets["polygons"].media_type == pystac.MediaType.GEOPACKAGE
        assert item.properties["proj:code"] == "EPSG:32645" and item.properties["proj:shape"] == shape
        np.testing.assert_allclose(item.properties["proj:bbox"], bounds)
        assert box(*item.bbox).buffer(1e-6).contains(footprint.intersection(schedule.aois[name]))
        run = json.loads((out / "run.json").read_text())
        assert [s["source"] for s in run["scenes"]] == [str(scene["tif"])] and run["kind"] == "region job"
        assert item.properties["landslide:objects"] == run["summary"]["objects"]
        published = pystac.Item.from_file(str(tmp_path / "published" / event / "item.json"))
        assert Path(published.assets["probability"].get_absolute_href()).is_file()

    assert main(["schedule", str(path), "--once", "--local"]) == 0
    assert capsys.readouterr().out == ""

    out = tmp_path / "outputs" / events[0]
    custom = tmp_path / "published" / "custom"
    for _ in range(2):  # published again over the first copy: replaced, not nested
        assert main(["stac-item", str(out), "--id", "custom", "--publish", str(custom)]) == 0
    assert json.loads((custom / "item.json").read_text())["id"] == "custom"
    assert (custom / "landslides.gpkg").is_file() and (custom / "probability.zarr" / "zarr.json").is_file()
    assert not (custom / "probability.zarr" / "probability.zarr").exists() and not (custom / ".work").exists()


def test_run_schedule_stops_after_until(tmp_path, scenes, tiny_model):
    write_catalog(tmp_path / "catalog", scenes)
    schedule = load_schedule(
        write_schedule(tmp_path, "catalog/catalog.json", tiny_model, until=(EVENT + timedelta(days=5)).isoformat())
    )
    cluster = FakeCluster()
    run_schedule(schedule, cluster)  # `until` has passed: one pass, no sleeping
    assert len(cluster.jobs) == 2


def test_stac_item_needs_a_finished_job(tmp_path):
    assert main(["stac-item", str(tmp_path)]) == InputError.exit_code


def test_scheduler_state_is_locked(tmp_path):
    with SchedulerState.open(tmp_path / "state.json"):  # a lease on object storage: test_schedule_object_storage
        with pytest.raises(SchedulerBusyError):
            with SchedulerState.open(
                tmp_path / "state.json"
            ):  # a lease on object storage: test_schedule_object_storage
                pass


@pytest.mark.parametrize(
    "change, message",
    [
        ({"aois": [{"name": "x", "bbox": [1, 1, 2, 2], "geojson": "a.geojson"}]}, "exactly one of bbox"),
        ({"aois": [{"name": "x", "bbox": [2, 1, 1, 2]}]}, "minx, miny, maxx, maxy"),
        ({"aois": [{"name": "x", "bbox": [1, 1, 2, 2], "crs": "EPSG:999999"}]}, "crs"),
        ({"job": {"models": ["m"], "scene": "s.tif"}}, "leave out scene, scenes, aoi and out"),
        ({"job": {"tile": 64}}, "exactly one of 'ensemble'"),
        ({"catalog": "nosuchfs://bucket/catalog.json"}, "unsupported scheme 'nosuchfs'"),
        ({"output": {"root": "https://example.invalid/out"}}, "read-only"),
        ({"submit": {"shared_fs": True, "upload_to": "s3://b/in"}}, "not both"),
        ({"submit": {"upload_to": "s3://b/in"}}, "output.root must be object storage"),
        ({"until": "2026-06-01T00:00:00Z"}, "until must be after event_date"),
    ],
)
def test_schedule_config_errors_are_clear(tmp_path, tiny_model, change, message):
    with pytest.raises(ConfigError, match=message):
        load_schedule(write_schedule(tmp_path, "catalog.json", tiny_model, **change))


def test_example_schedule_is_valid():
    schedule = load_schedule(CONFIGS / "schedule_example.yaml")
    assert set(schedule.aois) == {"melamchi-valley", "bhotekoshi"} and schedule.config.submit is not None
    assert schedule.aois["bhotekoshi"].bounds[0] == pytest.approx(85.57, abs=0.01)  # UTM 45N -> lon/lat


def test_example_job_is_valid_for_submission():
    spec = prepare_job(CONFIGS / "job_example.yaml")
    assert Path(spec["scene"]).is_absolute() and Path(spec["ensemble"]) == CONFIGS / "ensemble_zoo.yaml"


def test_submission_carries_a_resolved_job_spec(tmp_path, tiny_model):
    (tmp_path / "jobs").mkdir()
    path = tmp_path / "jobs" / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "scene": "../scene.tif",
                "out": "file:///data/out",
                "models": [str(tiny_model)],
                "ray": {"address": "ray://elsewhere:10001"},
            }
        )
    )
    spec = prepare_job(path)
    assert spec["scene"] == str(tmp_path / "jobs" / ".." / "scene.tif") and spec["out"] == "/data/out"

    job = JobSubmission(spec, "ls-x", StacOptions(publish_to="s3://bucket/x"))
    request = RaySubmitter("http://127.0.0.1:1", env={"OMP_NUM_THREADS": "1"}, ship_code=True).request(job, tmp_path)
    assert request["entrypoint"] == (
        "landslide-batch run job.yaml --executor ray && landslide-batch stac-item /data/out --publish s3://bucket/x"
    )
    env = request["runtime_env"]
    assert env["working_dir"] == str(tmp_path) and env["env_vars"] == {"OMP_NUM_THREADS": "1"}
    assert Path(env["py_modules"][0]).name == "landslide_batch"
    on_cluster = yaml.safe_load((tmp_path / "job.yaml").read_text())
    assert on_cluster["executor"] == "ray" and on_cluster["ray"]["address"] is None
    assert job_from_dict(on_cluster).scene == Path(spec["scene"])
    assert request["submission_id"] == "ls-x" and request["metadata"]["out"] == "/data/out"


def test_unreachable_cluster_is_a_clear_error(capsys):
    assert main(["status", "raysubmit_x", "--address", "http://127.0.0.1:9"]) == ClusterError.exit_code
    assert "cannot reach the Ray Job API at http://127.0.0.1:9" in capsys.readouterr().err


# --- a real local Ray head ------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now (all held at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Live processes of one session: a Ray head started with start_new_session (workers get
    their own process groups, but stay in the session)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def _stop_session(sid: int) -> None:
    """SIGKILL exactly the processes of our head (``ray stop --force`` would do it to every Ray
    process on the machine, other sessions' clusters included); repeated for late-forked workers."""
    deadline = time.monotonic() + 15
    while (pids := _session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


@pytest.fixture
def ray_head():
    """A local Ray head on loopback, 2 CPUs, token auth with a fresh token; -> (dashboard URL, env)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.urandom(32).hex(),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    # A port free when picked may be taken by another process before Ray binds it (the machine
    # runs other tests' Ray workers): a head that could not bind is started again on new ports.
    for attempt in range(3):
        temp = tempfile.mkdtemp(prefix="lsray", dir="/tmp")  # short: Ray's socket paths have a length limit
        gcs, dashboard, client, agent = _free_ports(4)
        cmd = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(client),
            "--dashboard-agent-listen-port",
            str(agent),
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(256 * 2**20),
            "--temp-dir",
            temp,
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output, _ = proc.communicate(timeout=120)
        if proc.returncode == 0 or "address already in use" not in output or attempt == 2:
            break
        _stop_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)
    try:
        assert proc.returncode == 0, output
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)


def _cli(env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "landslide-batch"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops the head through /proc")
def test_submit_region_job_to_local_ray_head(tmp_path, scene_tif, tiny_model, ray_head):
    address, env = ray_head
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "scene": str(scene_tif),
                "out": "out",
                "models": [str(tiny_model)],
                "block": 256,
                "threads": 1,
                "batch_size": 8,
            }
        )
    )

    secret = os.urandom(16).hex()  # object-storage credentials of this shell, handed to the job on request
    credentials = {"AWS_ACCESS_KEY_ID": "ls-test-key", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "eu-west-3"}
    submitted = _cli(
        {**env, **credentials},
        "submit",
        str(job),
        "--address",
        address,
        "--submission-id",
        "ls-test-region",
        "--env",
        "OMP_NUM_THREADS=1",
        "--forward-credentials",
        "--stac-item",
        "--shared-fs",
    )
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.split() == ["ls-test-region"]
    assert "forwarding AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION" in submitted.stderr
    assert secret not in submitted.stdout + submitted.stderr

    status = _cli(env, "status", "ls-test-region", "--address", address, "--wait", "--timeout", "240", timeout=260)
    logs = _cli(env, "logs", "ls-test-region", "--address", address).stdout
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stdout + status.stderr + logs
    assert "map written to" in logs

    out = tmp_path / "out"
    with rasterio.open(out / "probability.tif") as prob, rasterio.open(scene_tif) as src:
        assert (prob.shape, prob.crs, prob.transform) == (src.shape, src.crs, src.transform)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["config"]["executor"] == "ray"
    assert secret not in (out / "run.json").read_text() + logs
    # The job's runtime environment, which Ray gives its driver and every actor it starts (read in a
    # process of its own: Ray's client takes the head's token from the environment it starts with).
    ask = "import json, sys; from ray.job_submission import JobSubmissionClient as C; "
    ask += "print(json.dumps(C(sys.argv[1]).get_job_info('ls-test-region').runtime_env))"
    info = subprocess.run([sys.executable, "-c", ask, address], env=env, capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)["env_vars"] == {**credentials, "OMP_NUM_THREADS": "1"}
    assert pystac.Item.from_file(str(out / "item.json")).assets["probability"].get_absolute_href() == str(
        out / "probability.tif"
    )

    again = _cli(env, "submit", str(job), "--address", address, "--submission-id", "ls-test-region", "--shared-fs")
    assert again.returncode == JobExistsError.exit_code and "already submitted" in again.stderr


def test_schedule_once_exits_non_zero_when_a_job_of_the_pass_failed(tmp_path, scenes, capsys):
    """Cron sees a failed pass: both events' local jobs fail (no such model folder) -> exit 2,
    one line naming each failed job and its error; the state file records them as failed."""
    write_catalog(tmp_path / "catalog", scenes)
    path = write_schedule(tmp_path, "catalog/catalog.json", tmp_path / "no-model")
    assert main(["schedule", str(path), "--once", "--local"]) == 2
    captured = capsys.readouterr()
    schedule = load_schedule(path)
    ids = [job_id(schedule.event(a), [s]) for a, s in (("valley", "s2-a"), ("ridge", "s2-b"))]
    assert captured.out == ""  # no job started
    assert captured.err.startswith("landslide-batch schedule: error: 2 job(s) of this pass failed: ")
    assert all(f"{i}: " in captured.err for i in ids) and "no-model" in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    outcomes = [r["outcome"] for r in json.loads(schedule.state_path.read_text())["jobs"].values()]
    assert len(outcomes) == 2 and all(o.startswith("failed: ") for o in outcomes)


def test_pre_event_scenes_are_inputs_a_cluster_cannot_read_from_this_machine(tmp_path):
    """A change-aware event's ``pre_scenes`` are refused (or uploaded) like its scenes."""
    from landslide_batch.jobs.upload import job_paths, label, refuse_local_paths

    spec = {"scenes": ["s3://b/post.tif"], "pre_scenes": [str(tmp_path / "pre.tif")], "out": "s3://b/o"}
    assert [(label(k), v) for k, v in job_paths(spec) if k[0] == "pre_scenes"] == [
        ("pre_scenes[0]", spec["pre_scenes"][0])
    ]
    with pytest.raises(ConfigError, match=r"pre_scenes\[0\]"):
        refuse_local_paths(spec, "event")
