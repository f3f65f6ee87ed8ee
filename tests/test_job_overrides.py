"""Command-line flags override a job YAML key by key: nested settings keep what the flag does not set."""

from __future__ import annotations

import pytest
import yaml

import landslide_batch.pipeline as pipeline
from landslide_batch.cli import main


class Captured(Exception):
    """Raised in place of running the job: carries the configuration it was given."""


@pytest.mark.parametrize(
    "flags, actors, most", [(["--num-actors", "2"], 2, 8), (["--num-actors", "auto", "--max-actors", "3"], "auto", 3)]
)
def test_num_actors_on_the_command_line_keeps_the_files_ray_settings(
    tmp_path, monkeypatch, tiny_model, scene_tif, flags, actors, most
):
    job = tmp_path / "job.yaml"
    ray = {"address": "ray://head.example:10001", "gpus_per_actor": 0.5, "cpus_per_actor": 3}
    job.write_text(
        yaml.safe_dump(
            {
                "scene": str(scene_tif),
                "models": [str(tiny_model)],
                "out": str(tmp_path / "out"),
                "executor": "ray",
                "ray": ray,
            }
        )
    )

    def capture(cfg, **_):
        raise Captured(cfg)

    monkeypatch.setattr(pipeline, "run_job", capture)
    with pytest.raises(Captured) as ran:
        main(["run", str(job), *flags, "--threshold", "0.7"])
    cfg = ran.value.args[0]
    assert (cfg.ray.num_actors, cfg.ray.max_actors) == (actors, most) and cfg.threshold == 0.7
    assert (cfg.ray.address, cfg.ray.gpus_per_actor, cfg.ray.cpus_per_actor) == (ray["address"], 0.5, 3)
    assert cfg.executor == "ray" and str(cfg.scene) == str(scene_tif)
