"""A folder says which job wrote it: ``run.json``'s ``kind`` is ``scene job`` or ``region job``,
read by one function (``outputs.manifest.job_kind``) that also reads older folders (``region``
for a region job, no ``kind`` for a scene job). ``vectorize`` takes the output folder's one lock:
while a job holds the folder it is refused with the very message a second job gets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pyproj import Transformer
from test_vectorize import snapshot

from landslide_batch.cli import main as cli_main
from landslide_batch.config import ExecutionSettings, MapSettings, job_from_dict
from landslide_batch.errors import InputError, OutputLockedError
from landslide_batch.outputs.folder import output_lock
from landslide_batch.outputs.manifest import REGION_JOB, SCENE_JOB, job_kind, read_manifest
from landslide_batch.outputs.metadata import manifest_scenes
from landslide_batch.outputs.vectorize import Derivation, vectorize
from landslide_batch.pipeline import run_job
from landslide_batch.resolved import MAP_SETTINGS
from landslide_batch.storage import location
from landslide_batch.synthetic import write_geotiff

SETTINGS = {"tile": 64, "overlap": 0.5, "block": 128, "batch_size": 8, "threshold": 0.5}


def _aoi(path: Path) -> Path:
    """A GeoJSON polygon (lon/lat) well inside ``conftest.scene_tif``'s footprint (UTM 45N,
    x 500000..502600, y 3097000..3100000)."""
    to_lonlat = Transformer.from_crs(32645, 4326, always_xy=True).transform
    ring = [to_lonlat(x, y) for x, y in [(500500, 3097500), (502000, 3097500), (502000, 3099500), (500500, 3099500)]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}))
    return path


@pytest.fixture(scope="module")
def scene_tif(tmp_path_factory, scene_arrays) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", scene_arrays[0])


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, scene_tif, tiny_model) -> dict[str, Path]:
    """A finished scene job and a finished region job over the same scene."""
    d = tmp_path_factory.mktemp("jobs")
    scene_out, region_out = d / "scene_job", d / "region_job"
    run_job(job_from_dict({"scene": str(scene_tif), "out": str(scene_out), "models": [str(tiny_model)], **SETTINGS}))
    aoi = _aoi(d / "aoi.geojson")
    region = {"scenes": [str(scene_tif)], "aoi": str(aoi), "out": str(region_out), "models": [str(tiny_model)]}
    run_job(job_from_dict({**region, **SETTINGS}))
    return {SCENE_JOB: scene_out, REGION_JOB: region_out}


@pytest.fixture
def finished(tmp_path, jobs) -> dict[str, Path]:
    """Copies of the finished jobs, without their work folders, for a test to change."""
    ignore = shutil.ignore_patterns(".work")
    return {kind: Path(shutil.copytree(out, tmp_path / out.name, ignore=ignore)) for kind, out in jobs.items()}


def _set_kind(out: Path, kind: str | None) -> None:
    """Make ``out``'s run.json say ``kind`` (None: no kind at all), as an older version wrote it."""
    run = json.loads((out / "run.json").read_text())
    run.pop("kind")
    (out / "run.json").write_text(json.dumps(run if kind is None else {**run, "kind": kind}))


def test_each_job_says_its_kind_and_older_folders_are_read_alike(finished, scene_tif):
    for kind, out in finished.items():
        run = read_manifest(out)
        assert run is not None and run["kind"] == kind == job_kind(run)
        assert [s["source"] for s in manifest_scenes(run)] == [str(scene_tif)]
    # The folders as older versions wrote them: a region job's kind "region", a scene job's none.
    for kind, old in ((REGION_JOB, "region"), (SCENE_JOB, None)):
        _set_kind(finished[kind], old)
        run = read_manifest(finished[kind])
        assert job_kind(run) == kind and [s["source"] for s in manifest_scenes(run)] == [str(scene_tif)]
        # vectorize reads the map's grid by the kind (a region job's ``region``, a scene job's ``scene``)
        rebuilt = vectorize(finished[kind], Derivation(threshold=0.7))
        assert rebuilt["summary"]["threshold"] == 0.7 and rebuilt.get("kind") == old


def test_a_region_maps_its_scenes_as_scene_jobs_with_its_map_and_execution_settings(jobs):
    """The two kinds share MapSettings and ExecutionSettings: each scene of a region job is a scene
    job with the region's (but ``inputs``, which the region's own ingest applied), and the job's
    identity hashes map settings only."""
    region = read_manifest(jobs[REGION_JOB])
    (scene_folder,) = (jobs[REGION_JOB] / ".work" / "scenes").glob("*/map")
    scene = read_manifest(scene_folder)
    assert region is not None and scene is not None and job_kind(scene) == SCENE_JOB
    shared = (set(MapSettings.model_fields) | set(ExecutionSettings.model_fields)) - {"inputs"}
    assert {k: scene["config"][k] for k in shared} == {k: region["config"][k] for k in shared}
    assert region["config"]["tile"] == SETTINGS["tile"] != MapSettings.model_fields["tile"].default
    assert MAP_SETTINGS <= set(MapSettings.model_fields)


@pytest.mark.parametrize("kind", ["region job ", "tile", 3, ["region"]])
def test_a_kind_no_version_wrote_is_refused_by_name(kind):
    with pytest.raises(InputError, match=r"run.json's kind is .*; expected 'scene job' or 'region job'"):
        job_kind({"status": "complete", "kind": kind})


def test_vectorize_while_a_job_holds_the_folder_is_refused_as_a_second_job_is(finished, scene_tif, tiny_model, capsys):
    out = finished[SCENE_JOB]  # a finished job: vectorize would rebuild it, the job find it finished
    before = snapshot(out)
    names = sorted(p.name for p in out.iterdir())
    second = job_from_dict({"scene": str(scene_tif), "out": str(out), "models": [str(tiny_model)], **SETTINGS})
    with output_lock(location(out)):  # a job writing the folder
        with pytest.raises(OutputLockedError) as by_job:
            run_job(second)
        with pytest.raises(OutputLockedError) as by_vectorize:
            vectorize(out, Derivation(threshold=0.7))
        assert cli_main(["vectorize", str(out), "--threshold", "0.7"]) == 3  # docs/reliability.md: busy
    assert str(by_vectorize.value) == str(by_job.value)
    assert capsys.readouterr().err.strip().endswith(str(by_job.value))
    assert f"{out} is being written by another job" in str(by_job.value)
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == names, "nothing touched"
    # The lock released, vectorize runs.
    assert vectorize(out, Derivation(threshold=0.7))["summary"]["threshold"] == 0.7
