"""A local job builds and loads each model once per process, beside hashing and ingesting its
scene; a model that fails to load there stops the ingest in flight and fails the job at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rasterio

import landslide_batch.models.card as card_module
from landslide_batch.config import job_from_dict
from landslide_batch.errors import ModelError
from landslide_batch.ingest.scene import INGEST_THREADS, IngestStopped, SceneWriter
from landslide_batch.pipeline import run_job


def test_a_local_job_builds_each_member_once(tmp_path, scene_tif, varying_model, tiny_model, monkeypatch):
    built: list[str] = []
    build = card_module.build_model

    def counting_build(arch: str, encoder: str, in_channels: int):
        built.append(f"{arch}/{encoder}")
        return build(arch, encoder, in_channels)

    monkeypatch.setattr(card_module, "build_model", counting_build)
    cfg = {"scene": str(scene_tif), "out": str(tmp_path / "out"), "block": 128, "batch_size": 8}
    manifest = run_job(job_from_dict({**cfg, "models": [str(varying_model), str(tiny_model)]}))
    assert manifest["status"] == "complete"
    assert len(built) == 2  # one build per member, which the predictor then used
    with rasterio.open(tmp_path / "out" / "probability.tif") as ds:
        prob = ds.read(1, masked=True)
    assert float(prob.std()) >= 0.05  # a varying map: the modules built once really predicted it
    assert np.isfinite(prob.compressed()).all()


def test_a_model_failing_beside_the_ingest_stops_it_in_flight(tmp_path, scene_tif, tiny_model, monkeypatch):
    """The model fails once the ingest has written a window (of 9): the job raises the model's
    error, the ingest stops at a later window (in each of its threads: ``INGEST_THREADS`` windows
    are read and written at once), and no scene store is left, finished or partial."""
    written, stopped, windows = threading.Event(), [], []
    write = SceneWriter.write

    def slow_write(self, y0, x0, *args, **kwargs):
        try:
            write(self, y0, x0, *args, **kwargs)
        except IngestStopped:
            stopped.append((y0, x0))
            raise
        windows.append((y0, x0))
        written.set()
        time.sleep(0.2)  # keeps the ingest in flight while the model fails

    def failing_build(arch: str, encoder: str, in_channels: int):
        assert written.wait(60), "the ingest never wrote a window"
        raise ModelError("weights.pt does not fit its card (planted)")

    monkeypatch.setattr(SceneWriter, "write", slow_write)
    monkeypatch.setattr(card_module, "build_model", failing_build)
    cfg = {"scene": str(scene_tif), "out": str(tmp_path / "out"), "block": 128, "models": [str(tiny_model)]}
    with pytest.raises(ModelError, match="planted"):
        run_job(job_from_dict(cfg))
    assert 1 <= len(stopped) <= INGEST_THREADS and (0, 0) not in stopped  # stopped part-way ...
    assert len(windows) + len(stopped) < 9  # ... the windows not yet started never were
    work = tmp_path / "out" / ".work"
    assert not (work / "scene.zarr").exists() and not (work / "scene.zarr.partial").exists()
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_fresh_job_ingests_its_scene_while_hashing_it(tmp_path, scene_tif, varying_model, monkeypatch):
    """With nothing to resume in ``out``, the ingest starts before the scene's hash is known (both
    read the scene: once from disk, not one after the other); the job's work is still claimed
    under its hash, and the map is the same as a job that hashed first (a rerun resumes nothing)."""
    import landslide_batch.scene_job as pipeline  # the scene job's own module

    written, hashed_while_writing = threading.Event(), []
    write, sha256_tree = SceneWriter.write, pipeline.sha256_tree

    def noting_write(self, *args, **kwargs):
        write(self, *args, **kwargs)
        written.set()

    def hash_after_a_window(path):
        hashed_while_writing.append(written.wait(60))
        return sha256_tree(path)

    monkeypatch.setattr(SceneWriter, "write", noting_write)
    monkeypatch.setattr(pipeline, "sha256_tree", hash_after_a_window)
    cfg = {"scene": str(scene_tif), "out": str(tmp_path / "out"), "block": 128, "models": [str(varying_model)]}
    manifest = run_job(job_from_dict(cfg))
    assert hashed_while_writing == [True]  # the ingest wrote a window before the hash was done
    with rasterio.open(tmp_path / "out" / "probability.tif") as ds:
        first = ds.read(1)
    assert float(first[first >= 0].std()) >= 0.05
    monkeypatch.setattr(SceneWriter, "write", write)
    monkeypatch.setattr(pipeline, "sha256_tree", sha256_tree)
    again = run_job(job_from_dict(cfg))  # the same job: its hash finds the finished result
    assert again["job_hash"] == manifest["job_hash"] and again["blocks"]["computed"] == 0
