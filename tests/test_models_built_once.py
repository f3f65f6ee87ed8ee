"""A local job builds and loads each model once per process: the predictor takes the modules its
preflight loaded to check the checkpoints, rather than building them a second time."""

from __future__ import annotations

import numpy as np
import rasterio

import landslide_batch.models.card as card_module
from landslide_batch.config import job_from_dict
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
    assert len(built) == 2  # one build per member: the preflight's, which the predictor then used
    with rasterio.open(tmp_path / "out" / "probability.tif") as ds:
        prob = ds.read(1, masked=True)
    assert float(prob.std()) >= 0.05  # a varying map: the preflight's modules really predicted it
    assert np.isfinite(prob.compressed()).all()
