"""A shared-nothing Ray cluster on this machine: a head without CPUs, and one worker node in its
own mount namespace with tmpfs over ``/tmp`` and pytest's temporary root, so it sees no file of
the driver (scene, models, outputs, the head's session folder). A region job from S3 to S3 runs
all its blocks on that worker and equals the local map; the same job with its scene and ``out``
on the driver's disk fails before any block is computed, saying why.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from maps import KERNEL_ATOL, assert_same_map
from s3_server import free_port, s3_bucket
from test_jobs import _stop_session

from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job

BIN = Path(sys.executable).parent
BUCKET = "shared-nothing"
JOB = {"block": 128, "threads": 1, "batch_size": 8}


def _hide(hidden: list[str], keep: list[str]) -> str:
    """Shell commands (for a fresh mount namespace) laying a tmpfs over each ``hidden`` folder,
    while ``keep`` (this checkout, its Python) stays visible when it lies below one of them, as a
    clone in /tmp does: bound aside first, then bound back over the tmpfs."""

    def below(p: str, d: str) -> bool:
        return p == d or p.startswith(d.rstrip("/") + "/")

    keep = [p for p in dict.fromkeys(keep) if any(below(p, d) for d in hidden)]
    keep = [p for p in keep if not any(p != q and below(p, q) for q in keep)]  # the outermost only
    script = "mount -t tmpfs tmpfs /mnt && " if keep else ""
    script += "".join(f"mkdir /mnt/k{i} && mount --bind {shlex.quote(p)} /mnt/k{i} && " for i, p in enumerate(keep))
    script += "".join(f"mount -t tmpfs tmpfs {shlex.quote(d)} && " for d in hidden)
    script += "".join(
        f"mkdir -p {shlex.quote(p)} && mount --bind /mnt/k{i} {shlex.quote(p)} && " for i, p in enumerate(keep)
    )
    return script


def _can_unshare() -> bool:
    """Root and a kernel that lets us make a mount namespace with a private tmpfs."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not _can_unshare(),
        reason="needs Linux, root and `unshare -m` (mount namespaces) to hide the driver's disk from a Ray worker node",
    ),
]


def _ray_ports() -> list[str]:
    """A node's listening ports, all free ones of this machine's: other Ray users run beside us."""
    return [
        "--dashboard-agent-listen-port",
        str(free_port()),
        "--dashboard-agent-grpc-port",
        str(free_port()),
        "--runtime-env-agent-port",
        str(free_port()),
        "--metrics-export-port",
        str(free_port()),
        "--node-manager-port",
        str(free_port()),
        "--object-manager-port",
        str(free_port()),
    ]


@contextmanager
def _session(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own session; on exit SIGKILL every process of that session (the Ray
    processes it forked included), whatever happened."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop_session(proc.pid)
        proc.wait()


def _alive_nodes(gcs: str, env: dict[str, str]) -> dict[str, float]:
    """Node id -> CPUs of the cluster's alive nodes, asked by a short-lived driver."""
    code = (
        f"import json, ray; ray.init(address={gcs!r}, log_to_driver=False); "
        "print(json.dumps({n['NodeID']: n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}))"
    )
    asked = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if asked.returncode:
        raise ConnectionError(asked.stderr[-2000:])
    return json.loads(asked.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Cluster:
    gcs: str  # the head's GCS address, for drivers
    job_api: str  # the head's dashboard, for `submit`
    node: str  # the worker node's id
    env: dict[str, str]  # for processes that talk to the cluster and to S3


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with the bucket, its ``AWS_*`` variables set in this process."""
    with s3_bucket(tmp_path_factory.mktemp("moto"), BUCKET) as (fs, env):
        yield fs, env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3):
    """A head with 0 CPUs on loopback (its dashboard serves the Job API), and a 1-CPU worker that
    sees neither /tmp nor pytest's temporary root; token authentication with a fresh token, as
    Ray 2.60 clusters default to."""
    _, s3_env = s3
    logs = tmp_path_factory.mktemp("ray-logs")
    head_tmp = tempfile.mkdtemp(prefix="lssn", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard = f"127.0.0.1:{free_port()}", free_port()
    env = {
        **os.environ,
        **s3_env,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.urandom(32).hex(),
    }
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        gcs.rsplit(":", 1)[1],
        "--num-cpus",
        "0",
        "--num-gpus",
        "0",
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--ray-client-server-port",
        str(free_port()),
        "--object-store-memory",
        str(256 * 2**20),
        "--temp-dir",
        head_tmp,
        "--disable-usage-stats",
        *_ray_ports(),
    ]
    # The worker's own view: tmpfs over pytest's root (model, scene, outputs of the driver), then over
    # /tmp (the head's session folder, everything else); its Ray folder inside that tmpfs.
    hidden = [str(tmp_path_factory.getbasetemp().parent), "/tmp"]
    worker = [
        str(BIN / "ray"),
        "start",
        "--block",
        "--address",
        gcs,
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--object-store-memory",
        str(256 * 2**20),
        "--temp-dir",
        "/tmp/lsw",
        "--disable-usage-stats",
        *_ray_ports(),
    ]
    script = _hide(hidden, keep=[str(Path(__file__).resolve().parents[1]), sys.prefix])
    script += "mkdir -p /tmp/lsw && exec " + shlex.join(worker)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, head_tmp, True)
        head_proc = stack.enter_context(_session(head, env, logs / "head.log"))
        worker_proc = stack.enter_context(
            _session(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                {**env, "RAY_TMPDIR": "/tmp/lsw"},
                logs / "worker.log",
            )
        )
        deadline, nodes, asked = time.monotonic() + 180, {}, ""
        while len(nodes) < 2:
            for proc, name in ((head_proc, "head"), (worker_proc, "worker")):
                assert proc.poll() is None, f"the {name} exited:\n" + (logs / f"{name}.log").read_text()
            assert time.monotonic() < deadline, f"no 2-node cluster after 180 s; last answer: {asked}\n" + "\n".join(
                (logs / f"{name}.log").read_text() for name in ("head", "worker")
            )
            try:  # the head's GCS refuses drivers while it starts
                nodes = asked = _alive_nodes(gcs, env)
            except ConnectionError as exc:
                asked = str(exc)
            time.sleep(1)
        (node,) = [n for n, cpus in nodes.items() if cpus > 0]  # the head has none
        yield Cluster(gcs, f"http://127.0.0.1:{dashboard}", node, env)


def _run(env: dict[str, str], gcs: str, scene: str, model: str, out: str) -> subprocess.CompletedProcess:
    args = [
        "run",
        "--scene",
        scene,
        "--model",
        model,
        "--out",
        out,
        "--executor",
        "ray",
        "--ray-address",
        gcs,
        *(x for k, v in JOB.items() for x in (f"--{k.replace('_', '-')}", str(v))),
    ]
    return subprocess.run([str(BIN / "landslide-batch"), *args], env=env, capture_output=True, text=True, timeout=300)


def _probability(data: bytes | Path) -> np.ndarray:
    with rasterio.MemoryFile(data if isinstance(data, bytes) else data.read_bytes()) as f, f.open() as ds:
        return ds.read(1)


def test_worker_sees_no_file_of_the_driver(cluster, tmp_path, varying_model):
    """The premise: files of the driver (under pytest's root, /tmp) do not exist on the worker."""
    gcs, node, env = cluster.gcs, cluster.node, cluster.env
    probe = tmp_path / "probe.txt"
    probe.write_text("driver")
    paths = [str(probe), str(varying_model / "card.json"), "/work"]
    code = (
        "import os, ray; from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as A; "
        f"ray.init(address={gcs!r}, log_to_driver=False); "
        "f = ray.remote(num_cpus=0)(lambda ps: [os.path.exists(p) for p in ps]); "
        f"print(ray.get(f.options(scheduling_strategy=A({node!r}, soft=False)).remote({paths!r})))"
    )
    seen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip().splitlines()[-1] == "[False, False, True]"  # the installed project: there


def test_region_job_s3_to_s3_runs_on_the_hidden_worker(cluster, s3, tmp_path, scene_tif, varying_model):
    gcs, node, env = cluster.gcs, cluster.node, cluster.env
    fs, _ = s3
    fs.put_file(str(scene_tif), f"{BUCKET}/scenes/scene.tif")
    for f in varying_model.iterdir():
        fs.put_file(str(f), f"{BUCKET}/models/varying/{f.name}")

    done = _run(
        env, gcs, f"s3://{BUCKET}/scenes/scene.tif", f"s3://{BUCKET}/models/varying", f"s3://{BUCKET}/maps/event1"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    fs.invalidate_cache()
    run = json.loads(fs.cat_file(f"{BUCKET}/maps/event1/run.json"))
    blocks = run["blocks"]
    assert run["status"] == "complete" and blocks["computed"] == blocks["total"] == 9  # 300 x 260 in 128 px blocks
    assert set(blocks["node_of"].values()) == {node} and blocks["per_node"] == {node: 9}
    remote = _probability(fs.cat_file(f"{BUCKET}/maps/event1/probability.tif"))

    local = tmp_path / "local"
    run_job(job_from_dict({"scene": str(scene_tif), "models": [str(varying_model)], "out": str(local), **JOB}))
    expected = _probability(local / "probability.tif")
    valid = expected >= 0
    assert valid.mean() > 0.9
    assert_same_map(remote, expected, atol=KERNEL_ATOL)


def test_job_on_the_drivers_disk_fails_before_any_compute(cluster, tmp_path, scene_tif, varying_model):
    gcs, node, env = cluster.gcs, cluster.node, cluster.env
    out = tmp_path / "out"
    failed = _run(env, gcs, str(scene_tif), str(varying_model), str(out))
    assert failed.returncode == 2, failed.stdout + failed.stderr
    message = failed.stderr
    assert f"the job's working folder {out / '.work'} is on the driver's local disk" in message
    assert "1 Ray node(s) cannot read it" in message and node[:12] in message
    assert "put 'out' on object storage" in message
    blocks = out / ".work" / "blocks"
    assert not (out / "run.json").exists() and not (blocks.is_dir() and any(blocks.iterdir()))
    assert " done (" not in failed.stderr  # no block was logged as computed


def test_scene_on_the_drivers_disk_travels_through_the_working_store(cluster, s3, scene_tif, varying_model):
    """A local scene with a remote ``out``: the driver ingests it into ``OUT/.work`` on S3, which
    is what the worker reads its blocks from; the model still comes from S3."""
    gcs, node, env = cluster.gcs, cluster.node, cluster.env
    fs, _ = s3
    for f in varying_model.iterdir():
        fs.put_file(str(f), f"{BUCKET}/models/local-scene/{f.name}")
    done = _run(env, gcs, str(scene_tif), f"s3://{BUCKET}/models/local-scene", f"s3://{BUCKET}/maps/local-scene")
    assert done.returncode == 0, done.stdout + done.stderr
    fs.invalidate_cache()
    run = json.loads(fs.cat_file(f"{BUCKET}/maps/local-scene/run.json"))
    # Every block computed on the worker, which cannot open this scene file (the premise test).
    assert run["inputs"]["scene"]["path"] == str(scene_tif) and run["blocks"]["per_node"] == {node: 9}


def test_submit_upload_to_sends_a_workstation_job_as_uris(cluster, s3, tmp_path, scene_tif, varying_model):
    """``submit --upload-to`` through the Job API: the job YAML names this machine's scene and model;
    they go to S3 first, the cluster receives URIs only, its driver runs on the head and every
    block on the worker that cannot see our files."""
    from landslide_batch.hashing import sha256_file

    fs, _ = s3
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {"scene": str(scene_tif), "models": [str(varying_model)], "out": f"s3://{BUCKET}/maps/submitted", **JOB}
        )
    )
    submit = [
        str(BIN / "landslide-batch"),
        "submit",
        str(job),
        "--address",
        cluster.job_api,
        "--upload-to",
        f"s3://{BUCKET}/staging",
        "--submission-id",
        "ls-shared-nothing",
        "--wait",
        "--timeout",
        "240",
    ]
    done = subprocess.run(submit, env=cluster.env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        logs = subprocess.run(
            [str(BIN / "landslide-batch"), "logs", "ls-shared-nothing", "--address", cluster.job_api],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        pytest.fail(done.stdout + done.stderr + logs.stdout + logs.stderr)
    assert f"uploaded {1 + len(list(varying_model.iterdir()))} file(s)" in done.stderr
    fs.invalidate_cache()
    run = json.loads(fs.cat_file(f"{BUCKET}/maps/submitted/run.json"))
    assert run["blocks"]["per_node"] == {cluster.node: 9}
    assert run["inputs"]["scene"]["path"] == f"s3://{BUCKET}/staging/sha256/{sha256_file(scene_tif)}/scene.tif"
    assert str(tmp_path) not in json.dumps(run) and str(varying_model) not in json.dumps(run)
