"""Region jobs on object storage: scene, DEM, AOI, model and products on a real S3 API (moto's
standalone server on loopback), configured only by the standard ``AWS_*`` variables.

Shows: the same map as the job on local files, products that open with rasterio straight from
S3, resume after a SIGKILLed driver and a refused second writer on an S3 ``out``, and a clear
error before any compute for each kind of bad location.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from maps import KERNEL_ATOL, assert_same_map
from polling import wait_for
from s3_server import _wait_until_up, clear_s3_clients, free_port, s3_bucket

from landslide_batch.cli import main as cli_main
from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import OUTPUTS, run_job
from landslide_batch.storage import gdal_options, location, storage_env
from landslide_batch.synthetic import synthetic_scene, write_geotiff

BUCKET = "maps"
CLI = str(Path(sys.executable).parent / "landslide-batch")
N_BLOCKS = 16  # the 512 x 512 scene in blocks of 128 px


def _upload_folder(fs, folder: Path, prefix: str) -> str:
    for f in folder.iterdir():
        fs.put_file(str(f), f"{prefix}/{f.name}")
    return f"s3://{prefix}"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with the bucket, its ``AWS_*`` variables set in this process."""
    with s3_bucket(tmp_path_factory.mktemp("moto"), BUCKET) as (fs, env):
        yield fs, env


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, s3, scene_arrays, varying_model):
    """Scene GeoTIFF, DEM GeoTIFF, AOI GeoJSON and model folder, each locally and on S3."""
    from landslide_batch.bands import BAND_INDEX

    fs, _ = s3
    here = tmp_path_factory.mktemp("inputs")
    bands = scene_arrays[0].copy()
    bands[:, 10:14, 20:30] = np.nan
    scene = write_geotiff(here / "scene.tif", bands)
    with rasterio.open(scene) as ds:
        profile, bounds = ds.profile, ds.bounds
    dem = here / "dem.tif"
    with rasterio.open(dem, "w", **{**profile, "count": 1}) as ds:
        ds.write(bands[BAND_INDEX["DEM"]] + 25.0, 1)  # not the stack's own DEM: the map shows which was used
    aoi = here / "aoi.geojson"
    x0, y0, x1, y1 = bounds
    ring = [[x0, y0], [x0 + 0.7 * (x1 - x0), y0], [x0, y0 + 0.8 * (y1 - y0)], [x0, y0]]
    aoi.write_text(
        json.dumps(
            {
                "type": "Polygon",
                "coordinates": [ring],
                "crs": {"type": "name", "properties": {"name": profile["crs"].to_string()}},
            }
        )
    )
    local = {"scene": scene, "dem": dem, "aoi": aoi, "model": varying_model}
    remote = {k: f"s3://{BUCKET}/in/{p.name}" for k, p in local.items() if k != "model"}
    for k, uri in remote.items():
        fs.put_file(str(local[k]), uri)
    remote["model"] = _upload_folder(fs, varying_model, f"{BUCKET}/in/model")
    return local, remote


def _cli_env(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**base, **env, "OMP_NUM_THREADS": "1"}


def _read_s3_raster(uri: str) -> np.ndarray:
    with storage_env(), rasterio.open(uri) as ds:
        return ds.read(1)


def _job(scene, out, model, **kw):
    return job_from_dict(
        {"scene": str(scene), "out": str(out), "models": [str(model)], "block": 128, "batch_size": 8, **kw}
    )


def test_gdal_options_map_the_standard_variables():
    env = {
        "AWS_ENDPOINT_URL": "http://minio.local:9000",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "sk",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_SESSION_TOKEN": "tok",
    }
    assert gdal_options(env) == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "sk",
        "AWS_SESSION_TOKEN": "tok",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_S3_ENDPOINT": "minio.local:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
    }
    https = gdal_options(
        {"AWS_ENDPOINT_URL": "https://s3.example.org/", "AWS_ENDPOINT_URL_S3": "https://s3b.example.org"}
    )
    assert (https["AWS_S3_ENDPOINT"], https["AWS_HTTPS"]) == ("s3b.example.org", "YES")  # botocore's precedence
    assert gdal_options({"AZURE_STORAGE_ACCOUNT_NAME": "acct", "AZURE_STORAGE_ACCOUNT_KEY": "k"}) == {
        "AZURE_STORAGE_ACCOUNT": "acct",
        "AZURE_STORAGE_ACCESS_KEY": "k",
    }


def test_locations_keep_uris_and_rebase_local_paths(tmp_path):
    cfg = job_from_dict(
        {"scene": "s3://b/scene.tif", "out": "out", "models": ["gs://b/m", "file:///opt/m", "m"]}, tmp_path
    )
    assert cfg.scene == "s3://b/scene.tif"
    assert cfg.out == tmp_path / "out" and cfg.models[1:] == [Path("/opt/m"), tmp_path / "m"]
    assert location("s3://b/p").join("x", "y.tif").gdal_path() == "/vsis3/b/p/x/y.tif"
    assert location("https://h/a.tif").gdal_path() == "/vsicurl/https://h/a.tif"
    with pytest.raises(Exception, match="'gcsfs'.*pip install gcsfs"):
        location("gs://b/m").exists()


@pytest.mark.slow
def test_cli_job_from_s3_to_s3_equals_the_local_job(tmp_path, s3, inputs):
    """``landslide-batch run --scene s3:// --model s3:// --out s3://``, configured only by AWS_* variables."""
    fs, env = s3
    local, remote = inputs
    want_manifest = run_job(_job(local["scene"], tmp_path / "local", local["model"]))
    with rasterio.open(tmp_path / "local" / "probability.tif") as ds:
        want = ds.read(1)
    out = f"s3://{BUCKET}/runs/cli"
    done = subprocess.run(
        [
            CLI,
            "run",
            "--scene",
            remote["scene"],
            "--model",
            remote["model"],
            "--out",
            out,
            "--block",
            "128",
            "--batch-size",
            "8",
        ],
        check=False,
        env=_cli_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    got = _read_s3_raster(f"{out}/probability.tif")  # rasterio straight from S3
    valid = want >= 0
    assert valid.sum() == want.size - 40
    assert_same_map(got, want, atol=KERNEL_ATOL)
    run = json.loads(fs.cat_file(f"{out}/run.json"))
    assert run["inputs"]["scene"]["path"] == remote["scene"] and run["models"][0]["path"] == remote["model"]
    assert run["blocks"]["computed"] == want_manifest["blocks"]["computed"]
    listed = {p.rsplit("/", 1)[1] for p in fs.ls(out, refresh=True)}
    assert listed == set(OUTPUTS.values()) | {"run.json"}, "no .work, no .lock, no temporary key left"
    np.testing.assert_array_equal(
        _read_s3_raster(f"{out}/mask.tif"), rasterio.open(tmp_path / "local" / "mask.tif").read(1)
    )
    import geopandas as gpd
    import zarr

    polygons = gpd.read_file(io.BytesIO(fs.cat_file(f"{out}/landslides.gpkg")))
    assert len(polygons) == run["summary"]["objects"] and polygons.crs is not None
    store = zarr.open_group(f"{out}/probability.zarr", mode="r")
    assert_same_map(store["probability"][:], got)


@pytest.mark.slow
def test_dem_and_aoi_read_from_s3_equal_local_files(tmp_path, s3, inputs):
    local, remote = inputs
    maps = {}
    for name, src, out in (("local", local, tmp_path / "local"), ("s3", remote, f"s3://{BUCKET}/runs/dem-aoi")):
        manifest = run_job(
            _job(src["scene"], out, src["model"], inputs={"dem": str(src["dem"]), "aoi": str(src["aoi"])})
        )
        assert manifest["blocks"]["computed"] > 0
        maps[name] = _read_s3_raster(f"{out}/probability.tif")
    valid = maps["local"] >= 0
    assert 0.3 < valid.mean() < 0.7, "the AOI (a triangle) masks part of the scene"
    assert_same_map(maps["s3"], maps["local"], atol=KERNEL_ATOL)
    stack_dem = run_job(_job(local["scene"], tmp_path / "stack-dem", local["model"], inputs={"aoi": str(local["aoi"])}))
    assert stack_dem["job_hash"] != manifest["job_hash"]
    with rasterio.open(tmp_path / "stack-dem" / "probability.tif") as ds:
        assert np.abs(ds.read(1)[valid] - maps["local"][valid]).max() > 1e-3, "the DEM given in inputs was used"


@pytest.mark.slow
def test_ray_job_reads_blocks_from_s3_and_gets_models_from_the_driver(tmp_path, monkeypatch, s3, inputs):
    """Ray executor, every location on S3: the working store is under OUT/.work on S3 (no local
    folder to check), the actors get the weights the driver read through Ray's object store."""
    import ray

    from landslide_batch.infer.stages import PredictorSpec

    fs, _ = s3
    local, remote = inputs
    local_run = run_job(_job(local["scene"], tmp_path / "local", local["model"]))
    with rasterio.open(tmp_path / "local" / "probability.tif") as ds:
        want = ds.read(1)
    shipped, ship = [], PredictorSpec.shipped
    monkeypatch.setattr(PredictorSpec, "shipped", lambda self: shipped.append(ship(self)) or shipped[-1])
    out = f"s3://{BUCKET}/runs/ray"
    manifest = run_job(_job(remote["scene"], out, remote["model"], executor="ray"))
    assert manifest["blocks"]["computed"] == local_run["blocks"]["computed"] == 9
    assert len(shipped) == 1 and isinstance(shipped[0].model_files, ray.ObjectRef)
    assert not fs.exists(f"{BUCKET}/runs/ray/.work")
    got = _read_s3_raster(f"{out}/probability.tif")
    assert_same_map(got, want, atol=KERNEL_ATOL)  # Ray may batch shared tiles differently


# --- resume and the lock on object storage ---------------------------------------------------------------


def _markers(fs, out: str) -> list[str]:
    try:
        return fs.ls(f"{out.removeprefix('s3://')}/.work/blocks", refresh=True)
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_killed_driver_resumes_and_second_writer_is_refused_on_s3(tmp_path, s3, varying_model):
    fs, env = s3
    scene = write_geotiff(tmp_path / "scene512.tif", synthetic_scene(512, 512, seed=5)[0])
    run_job(_job(scene, tmp_path / "reference", varying_model))
    with rasterio.open(tmp_path / "reference" / "probability.tif") as ds:
        want = ds.read(1)
    fs.put_file(str(scene), f"{BUCKET}/in/scene512.tif")
    out = f"s3://{BUCKET}/runs/resume"
    command = [
        CLI,
        "run",
        "--scene",
        f"s3://{BUCKET}/in/scene512.tif",
        "--model",
        str(varying_model),
        "--out",
        out,
        "--block",
        "128",
        "--batch-size",
        "8",
    ]
    log = tmp_path / "first.log"
    with log.open("w") as stderr:
        first = subprocess.Popen(command, env=_cli_env(env), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(lambda: len(_markers(fs, out)) >= 3 or first.poll() is not None, 300, "three finished blocks")
            first.send_signal(signal.SIGSTOP)  # mid-job, lease held
            second = subprocess.run(
                command, check=False, env=_cli_env(env), capture_output=True, text=True, timeout=300
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
    assert second.returncode == 3, second.stderr
    assert f"{out} is being written by another job" in second.stderr and "Traceback" not in second.stderr
    done_at_kill = {m.rsplit("/", 1)[1].removesuffix(".done") for m in _markers(fs, out)}
    finished = len(done_at_kill)
    assert 3 <= finished < N_BLOCKS, f"the kill should land mid-job; its log:\n{log.read_text()}"
    assert not fs.exists(f"{out.removeprefix('s3://')}/run.json")
    assert fs.exists(f"{out.removeprefix('s3://')}/.lock"), "the killed driver's lease is left behind"
    bands_meta = json.loads(fs.cat_file(f"{out}/.work/scene.zarr/bands/zarr.json"))
    assert [c["name"] for c in bands_meta["codecs"]] == ["bytes", "zstd"], "the working store on S3 is compressed"

    again = subprocess.run(command, check=False, env=_cli_env(env), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr  # the dead driver's lease (this host, its pid gone) is taken over
    run = json.loads(fs.cat_file(f"{out}/run.json"))
    assert (run["blocks"]["resumed"], run["blocks"]["computed"]) == (finished, N_BLOCKS - finished)
    # The re-run computed exactly the blocks unfinished at the kill, the one in flight among them.
    recomputed = set(run["blocks"]["node_of"])
    assert len(recomputed) == N_BLOCKS - finished and not recomputed & done_at_kill
    got = _read_s3_raster(f"{out}/probability.tif")
    assert_same_map(got, want, atol=KERNEL_ATOL)  # see docs/reliability.md: tiles recomputed after a restart


def test_lease_on_s3_refuses_a_live_holder_and_takes_over_an_expired_one(s3):
    """The lock on object storage: a conditional create, an owner, an expiry."""
    from landslide_batch.storage.lease import exclusive_location

    lock = location(f"s3://{BUCKET}/runs/lease/.lock")

    def busy():
        return RuntimeError("busy")

    other = {"host": "another-machine", "pid": 1, "token": "theirs"}
    lock.write_bytes(json.dumps({**other, "expires": time.time() + 60}).encode())
    with pytest.raises(RuntimeError, match="busy"), exclusive_location(lock, busy):
        pass
    assert json.loads(lock.read_bytes())["token"] == "theirs", "a live holder's lease is left alone"
    lock.write_bytes(json.dumps({**other, "expires": time.time() - 1}).encode())
    with exclusive_location(lock, busy):
        held = json.loads(lock.read_bytes())
        assert held["token"] != "theirs" and held["pid"] == os.getpid()
        with pytest.raises(RuntimeError, match="busy"), exclusive_location(lock, busy):
            pass  # the same process, a second job: refused too
    assert not lock.exists(), "released on exit"


# --- bad locations: a clear error before any compute, nothing half-published ----------------------------


def _run_cli(capsys, *args: str) -> tuple[int, str]:
    clear_s3_clients()
    code = cli_main(["run", *args, "--block", "128", "--batch-size", "8"])
    return code, capsys.readouterr().err


@pytest.fixture
def env_of(monkeypatch, s3):
    """Set variables for this test (s3fs clients made afresh)."""

    def apply(**values: str | None) -> None:
        for k, v in values.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        clear_s3_clients()

    yield apply
    clear_s3_clients()


@pytest.mark.parametrize("case", ["missing object", "missing bucket", "missing model"])
def test_missing_input_on_s3_fails_before_compute(capsys, tmp_path, s3, inputs, case):
    _, remote = inputs
    scene, model = remote["scene"], remote["model"]
    if case == "missing object":
        scene = f"s3://{BUCKET}/in/nothing-here.tif"
    elif case == "missing bucket":
        scene = "s3://no-such-bucket/scene.tif"
    else:
        model = f"s3://{BUCKET}/in/no-model"
    code, err = _run_cli(capsys, "--scene", scene, "--model", model, "--out", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err
    expected = {
        "missing object": f"scene {scene} does not exist",
        "missing bucket": f"scene {scene}: the bucket 'no-such-bucket' does not exist",
        "missing model": f"{model}: not a model folder",
    }[case]
    assert expected in err
    assert not (tmp_path / "out" / "run.json").exists() and not (tmp_path / "out" / ".work").exists()


def test_out_in_a_missing_bucket_fails_before_compute(capsys, s3, inputs):
    local, _ = inputs
    code, err = _run_cli(
        capsys, "--scene", str(local["scene"]), "--model", str(local["model"]), "--out", "s3://no-such-bucket/out"
    )
    assert code == 2 and "out s3://no-such-bucket/out: the bucket does not exist" in err


def test_http_out_is_refused(capsys, tmp_path, inputs):
    local, _ = inputs
    code, err = _run_cli(
        capsys, "--scene", str(local["scene"]), "--model", str(local["model"]), "--out", "https://example.org/maps"
    )
    assert code == 2 and "out https://example.org/maps: http(s):// locations are read-only" in err


def test_unreachable_endpoint_fails_with_the_cause(capsys, env_of, tmp_path, inputs):
    local, remote = inputs
    env_of(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_MAX_ATTEMPTS="1")
    code, err = _run_cli(
        capsys, "--scene", remote["scene"], "--model", str(local["model"]), "--out", str(tmp_path / "o")
    )
    assert code == 2 and f"scene {remote['scene']}: cannot connect to the endpoint" in err
    assert not (tmp_path / "o" / ".work").exists()


def test_no_credentials_fails_with_the_cause(capsys, env_of, tmp_path, inputs):
    local, remote = inputs
    env_of(
        AWS_ACCESS_KEY_ID=None,
        AWS_SECRET_ACCESS_KEY=None,
        AWS_PROFILE=None,
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    code, err = _run_cli(
        capsys, "--scene", remote["scene"], "--model", str(local["model"]), "--out", str(tmp_path / "o")
    )
    assert code == 2 and f"scene {remote['scene']}: no credentials found" in err


@pytest.fixture(scope="module")
def read_only_user(tmp_path_factory):
    """A second moto server that checks IAM: a user allowed to read, not to write, and an
    administrator. -> {"reader": its AWS_* variables, "admin": the administrator's}."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto-iam") / "moto.log"
    with open(log, "wb") as sink:  # the first 8 requests (the readiness probe, the set-up below) go unchecked
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "8"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(endpoint, proc)
        admin = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "admin",
            "aws_secret_access_key": "admin",
        }
        iam = boto3.client("iam", **admin)
        users = {"reader": ["s3:GetObject", "s3:ListBucket"], "admin": ["s3:*"]}
        variables = {}
        for user, actions in users.items():
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
            variables[user] = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                "AWS_REGION": "us-east-1",
            }
        boto3.client("s3", **admin).create_bucket(Bucket="archive")
        yield variables
    finally:
        proc.kill()
        proc.wait()


def test_permission_denied_on_out_fails_before_compute(capsys, env_of, read_only_user, inputs):
    local, _ = inputs
    env_of(**read_only_user["reader"])
    out = "s3://archive/maps"
    code, err = _run_cli(capsys, "--scene", str(local["scene"]), "--model", str(local["model"]), "--out", out)
    assert code == 2 and f"out {out}: access denied" in err
    env_of(**read_only_user["admin"])  # the reader may not list the whole bucket under moto's IAM rules
    assert location("s3://archive").ls_names() == [], "nothing written"
