"""A job's models are read once: a region of five scenes opens each member's weights file and card
once (the region's resolved job travels to every scene's job), and a scene job does the same."""

from __future__ import annotations

import builtins
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_varying_model
from pyproj import Transformer

from landslide_batch.config import job_from_dict
from landslide_batch.models.card import CARD_FILE, WEIGHTS_FILE
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import synthetic_scene, write_geotiff

SETTINGS = {"tile": 64, "overlap": 0.5, "block": 128, "batch_size": 8, "threshold": 0.5}


@pytest.fixture(scope="module")
def five_scenes(tmp_path_factory, tiny_model):
    """Five overlapping 100 x 100 px crops of one UTM 45N world, an AOI over all of them, a model."""
    d = tmp_path_factory.mktemp("five")
    world, _ = synthetic_scene(100, 300, seed=5)
    x0, y0 = Transformer.from_crs(4326, 32645, always_xy=True).transform(84.0, 28.0)
    x0, y0 = round(x0, -1), round(y0, -1)
    for i in range(5):
        write_geotiff(d / f"S{i}.tif", world[:, :, 50 * i : 50 * i + 100], origin=(x0 + 500 * i, y0))
    west, south = Transformer.from_crs(32645, 4326, always_xy=True).transform(x0 + 100, y0 - 900)
    east, north = Transformer.from_crs(32645, 4326, always_xy=True).transform(x0 + 2900, y0 - 100)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    aoi = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    (d / "aoi.geojson").write_text(json.dumps(aoi))
    model = d / "model"
    make_varying_model(tiny_model, model, world)
    return d, model


@pytest.fixture
def opened(monkeypatch) -> Counter:
    """Counts the files opened by name (``weights.pt``, ``card.json``): every read of a local file,
    by ``open``, ``Path.read_bytes`` / ``read_text`` or ``Location``, goes through ``io.open``."""
    counts: Counter = Counter()
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            counts[Path(file).name] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    return counts


def test_a_region_of_five_scenes_reads_each_weights_file_once(five_scenes, opened):
    d, model = five_scenes
    job = {
        "scenes": [str(d / f"S{i}.tif") for i in range(5)],
        "aoi": str(d / "aoi.geojson"),
        "models": [str(model)],
        "out": str(d / "region"),
        **SETTINGS,
    }
    manifest = run_job(job_from_dict(job))
    assert len(manifest["scenes"]) == 5 and all(s["blocks"]["computed"] > 0 for s in manifest["scenes"])
    assert opened[WEIGHTS_FILE] == 1, f"weights.pt opened {opened[WEIGHTS_FILE]} times for one region job"
    assert opened[CARD_FILE] == 1, f"card.json opened {opened[CARD_FILE]} times for one region job"


def test_a_scene_job_reads_each_weights_file_once(tmp_path, scene_tif, varying_model, tiny_model, opened):
    cfg = {"scene": str(scene_tif), "out": str(tmp_path / "out"), "block": 128, "batch_size": 8}
    manifest = run_job(job_from_dict({**cfg, "models": [str(varying_model), str(tiny_model)]}))
    assert manifest["status"] == "complete" and manifest["blocks"]["computed"] > 0
    assert opened[WEIGHTS_FILE] == 2 and opened[CARD_FILE] == 2  # two members, each read once
