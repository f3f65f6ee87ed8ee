"""The README's first command: ``landslide-batch demo`` (here shrunk: small scenes, 2 epochs)."""

from __future__ import annotations

import json

import pytest

from landslide_batch.infer.executors import shutdown_ray


@pytest.fixture
def local_ray():
    import ray

    started = not ray.is_initialized()
    yield
    if started and ray.is_initialized():
        shutdown_ray()


F1_FLOOR = 0.6  # measured 0.779 (precision 0.75, recall 0.81) with the small configuration below


@pytest.mark.slow
def test_demo_trains_maps_and_scores_honestly(tmp_path, local_ray, capsys):
    from landslide_training.demo import run_demo

    summary = run_demo(tmp_path / "demo", train_px=256, val_px=128, map_px=384, epochs=2)
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "F1" in printed
    demo = tmp_path / "demo"
    assert json.loads((demo / "demo.json").read_text()) == summary
    # Seeded: this configuration gave F1 0.779 on each of the runs measured; the floor leaves room
    # for other CPUs' and libraries' floats, not for a model that learned nothing.
    assert summary["synthetic"] is True and summary["map_scores"]["f1"] >= F1_FLOOR
    for name in ("run.json", "mask.tif", "probability.tif", "landslides.gpkg", "quicklook.png"):
        assert (demo / "map" / name).is_file()
    assert (demo / "model" / "card.json").is_file() and (demo / "scene.tif").is_file()
    run = json.loads((demo / "map" / "run.json").read_text())
    assert run["status"] == "complete" and run["models"][0]["trained"] is True
    # The units guard compared the demo's scene with its model's training statistics, and they match.
    assert [c["mismatch"] for c in run["checks"]["units"]] == [False]
