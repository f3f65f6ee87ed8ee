"""``submit`` to a cluster without a shared disk: paths of this machine are refused, each named,
unless ``--upload-to`` uploads them (content-addressed, once) to a real S3 API on loopback."""

from __future__ import annotations

import json

import pytest
import yaml
from s3_server import s3_bucket

from landslide_batch.cli import main
from landslide_batch.config import job_from_dict, load_yaml
from landslide_batch.errors import ConfigError
from landslide_batch.hashing import sha256_file, sha256_tree
from landslide_batch.jobs.submit import ClusterError, JobSubmission, RaySubmitter, prepare_job
from landslide_batch.jobs.upload import cluster_locations, local_paths

BUCKET = "cluster-store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with the bucket, its ``AWS_*`` variables set in this process."""
    with s3_bucket(tmp_path_factory.mktemp("moto"), BUCKET) as (fs, env):
        yield fs


@pytest.fixture
def job(tmp_path, scene_tif, tiny_model, tiny_plain_model):
    """A job on this machine's files: a scene, an ensemble YAML of two model folders, an AOI."""
    (tmp_path / "aoi.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [[[86.9, 27.9], [87.1, 27.9], [87.1, 28.1], [86.9, 27.9]]],
                        },
                    }
                ],
            }
        )
    )
    (tmp_path / "ensemble.yaml").write_text(
        yaml.safe_dump(
            {"members": [{"model": str(tiny_model), "weight": 2.0}, {"model": str(tiny_plain_model)}], "threshold": 0.4}
        )
    )
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "scene": "scene.tif",
                "ensemble": "ensemble.yaml",
                "out": "maps/event1",
                "inputs": {"aoi": "aoi.geojson"},
                "block": 256,
            }
        )
    )
    return path


def test_local_paths_are_refused_each_named(job, tmp_path, capsys):
    spec = prepare_job(job)
    with pytest.raises(ConfigError) as err:
        cluster_locations(spec, str(job))
    message = str(err.value)
    for key, value in (
        ("scene", tmp_path / "scene.tif"),
        ("ensemble", tmp_path / "ensemble.yaml"),
        ("inputs.aoi", tmp_path / "aoi.geojson"),
        ("out", tmp_path / "maps" / "event1"),
    ):
        assert f"  {key}: {value}" in message
    assert "--upload-to" in message and "--shared-fs" in message
    assert "maps/event1 (not on this machine either)" in message  # out: to be written, not uploaded

    # Through the CLI: refused before the cluster is asked anything (the address is unreachable).
    assert main(["submit", str(job), "--address", "http://127.0.0.1:9"]) == ConfigError.exit_code
    assert f"scene: {tmp_path / 'scene.tif'}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="exclude each other"):
        cluster_locations(spec, str(job), upload_to=f"s3://{BUCKET}/x", shared_fs=True)
    assert cluster_locations(spec, str(job), shared_fs=True) == (spec, None)  # a shared volume: as is


def test_upload_to_sends_inputs_once_and_the_spec_names_only_uris(
    job, tmp_path, s3, scene_tif, tiny_model, tiny_plain_model
):
    stage = f"s3://{BUCKET}/staging"
    spec = prepare_job(job)
    with pytest.raises(ConfigError, match="out .*maps/event1 is a path of this machine; with --upload-to, out must"):
        cluster_locations(spec, str(job), upload_to=stage)
    spec["out"] = f"s3://{BUCKET}/maps/event1"

    remote, first = cluster_locations(spec, str(job), upload_to=stage)
    assert local_paths(remote) == [] and str(tmp_path) not in json.dumps(remote)
    assert remote["scene"] == f"{stage}/sha256/{sha256_file(scene_tif)}/scene.tif"
    assert remote["inputs"]["aoi"] == f"{stage}/sha256/{sha256_file(tmp_path / 'aoi.geojson')}/aoi.geojson"
    assert s3.cat_file(remote["scene"]) == scene_tif.read_bytes()
    ensemble = yaml.safe_load(s3.cat_file(remote["ensemble"]))
    assert ensemble["threshold"] == 0.4 and [m["weight"] for m in ensemble["members"]] == [2.0, 1.0]
    for member, folder in zip(ensemble["members"], (tiny_model, tiny_plain_model), strict=True):
        assert member["model"] == f"{stage}/sha256/{sha256_tree(folder)}/{folder.name}"
        for f in folder.iterdir():
            assert s3.cat_file(f"{member['model']}/{f.name}") == f.read_bytes()
    assert job_from_dict(remote).out == remote["out"]  # a valid job spec, URIs kept as URIs
    # What the cluster receives: the job file of the submission's working_dir names no path of ours.
    (tmp_path / "workdir").mkdir()
    request = RaySubmitter("http://127.0.0.1:9").request(JobSubmission(remote, "ls-up"), tmp_path / "workdir")
    sent = (tmp_path / "workdir" / "job.yaml").read_text()
    assert (
        str(tmp_path) not in sent + json.dumps(request["metadata"]) and yaml.safe_load(sent)["scene"] == remote["scene"]
    )
    # Files: scene, AOI, the rewritten ensemble YAML and each model folder's files.
    n_files = 3 + sum(len(list(f.iterdir())) for f in (tiny_model, tiny_plain_model))
    assert len(first.uploaded) == n_files and first.reused == [] and first.bytes > scene_tif.stat().st_size
    modified = {p: s3.info(p)["LastModified"] for p in s3.find(f"{BUCKET}/staging")}

    # The same inputs again: nothing is sent, every object is found by its content address.
    s3.invalidate_cache()
    again, second = cluster_locations(prepare_job(job) | {"out": spec["out"]}, str(job), upload_to=stage)
    assert again == remote and second.uploaded == [] and len(second.reused) == n_files and second.bytes == 0
    assert {p: s3.info(p)["LastModified"] for p in s3.find(f"{BUCKET}/staging")} == modified
    assert "uploaded 0 file(s)" in second.summary()

    # A changed input is a new address; the unchanged ones are reused.
    (tmp_path / "aoi.geojson").write_text((tmp_path / "aoi.geojson").read_text() + "\n")
    changed, third = cluster_locations(prepare_job(job) | {"out": spec["out"]}, str(job), upload_to=stage)
    assert third.uploaded == [changed["inputs"]["aoi"]] and changed["scene"] == remote["scene"]


def test_cli_reaches_the_cluster_before_uploading(job, tmp_path, s3, capsys):
    raw = load_yaml(job) | {"out": f"s3://{BUCKET}/maps/cli"}
    job.write_text(yaml.safe_dump(raw))
    code = main(["submit", str(job), "--upload-to", f"s3://{BUCKET}/cli-staging", "--address", "http://127.0.0.1:9"])
    assert code == ClusterError.exit_code and "cannot reach the Ray Job API" in capsys.readouterr().err
    s3.invalidate_cache()
    assert not s3.exists(f"{BUCKET}/cli-staging")


def test_upload_expands_scene_globs_and_refuses_stac_json(tmp_path, s3, tiny_model):
    from landslide_batch.synthetic import synthetic_scene, write_geotiff

    (tmp_path / "tiles").mkdir()
    tiles = [write_geotiff(tmp_path / "tiles" / f"t{i}.tif", synthetic_scene(64, 64, seed=i)[0]) for i in (1, 2)]
    (tmp_path / "aoi.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    spec = {
        "scenes": [str(tmp_path / "tiles" / "*.tif")],
        "aoi": str(tmp_path / "aoi.geojson"),
        "models": [str(tiny_model)],
        "out": f"s3://{BUCKET}/maps/region",
    }
    stage = f"s3://{BUCKET}/globs"
    remote, report = cluster_locations(spec, "job.yaml", upload_to=stage)
    assert remote["scenes"] == [f"{stage}/sha256/{sha256_file(t)}/{t.name}" for t in tiles]
    assert remote["aoi"].startswith(f"{stage}/sha256/") and local_paths(remote) == []
    assert len(report.uploaded) == 3 + len(list(tiny_model.iterdir()))
    with pytest.raises(ConfigError, match=r"scenes '.*nothing/\*\.tif' matches no file"):
        cluster_locations({**spec, "scenes": [str(tmp_path / "nothing" / "*.tif")]}, "job.yaml", upload_to=stage)
    (tmp_path / "item.json").write_text("{}")
    with pytest.raises(ConfigError, match="scene .*item.json: a STAC item or collection names its assets by links"):
        cluster_locations({**spec, "scenes": None, "scene": str(tmp_path / "item.json")}, "job.yaml", upload_to=stage)
