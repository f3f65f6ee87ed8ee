"""A region job on an already running Ray: one pool of warm predictor actors maps every scene."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import rasterio
from maps import KERNEL_ATOL, assert_same_map
from ray_nodes import local_cluster
from test_region import _job, region  # noqa: F401  (``region``: the fixture)

from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.slow
def test_ray_region_job_loads_models_once_per_actor_and_equals_the_local_map(region, caplog):  # noqa: F811
    d, model = region
    scenes = ["A.tif", "B.tif", "C.tif"]
    local = run_job(job_from_dict(_job(d, model, "region_local", scenes)))
    with local_cluster(1, num_cpus=2), caplog.at_level("INFO"):
        ray_run = run_job(
            job_from_dict(_job(d, model, "region_ray", scenes, executor="ray", threads=1, ray={"num_actors": 2}))
        )

    # Two actors, each loaded its models once, and every scene was mapped by those same two.
    actors = ray_run["actors"]
    assert len(actors) == 2 and [a["models_loaded"] for a in actors] == [1, 1]
    assert ray_run["models_loaded"] == 2 and local["models_loaded"] == 1
    per_scene = [
        json.loads(p.read_text()) for p in sorted((d / "region_ray" / ".work" / "scenes").glob("*/map/run.json"))
    ]
    assert len(per_scene) == 3 and sum(m["blocks"]["computed"] for m in per_scene) == ray_run["blocks"]["computed"]
    for m in per_scene:
        assert {a["actor"] for a in m["actors"]} <= {a["actor"] for a in actors}
        assert all(a["models_loaded"] == 1 for a in m["actors"])
        assert set(m["blocks"]["node_of"].values()) <= {a["node"] for a in actors}

    # The scenes take turns on the actors: one sends its first block once the one before it has
    # sent its last, so no actor mixes two scenes' blocks; and the next scene is ready by then, so
    # the actors never wait between scenes: the second scene's blocks are sent while the first
    # scene's last results are still being computed.
    records = [(r.threadName, r.getMessage()) for r in caplog.records]
    turns = [(t, m) for t, m in records if re.match(r"ray: (sending the blocks|every block) of ", m)]
    assert len(turns) == 6 and all(
        taken.startswith("ray: sending") and given == taken.replace("sending the blocks", "every block") + " sent"
        for (_, taken), (_, given) in zip(turns[::2], turns[1::2])
    )
    first, second = turns[0][0], turns[2][0]  # the threads mapping the first two scenes
    assert first != second
    sent_second = records.index(turns[2])
    last_of_first = max(
        i for i, (t, m) in enumerate(records[: records.index(turns[4])]) if t == first and " done (" in m
    )
    assert sent_second < last_of_first

    # The same map as the local executor's, on a map that varies.
    got, want = _read(d / "region_ray" / "probability.tif"), _read(d / "region_local" / "probability.tif")
    assert_same_map(got, want, atol=KERNEL_ATOL)

    # Progress over the whole region: blocks done / total and a rate in km²/h, ending at all blocks.
    done = [tuple(map(int, m.groups())) for m in re.finditer(r"region: (\d+)/(\d+) blocks", caplog.text)]
    total = sum(m["blocks"]["total"] for m in per_scene)
    assert done and done[-1] == (total, total) and all(t == total for _, t in done)
    assert [n for n, _ in done] == sorted(n for n, _ in done)
    assert re.search(r"\d+\.\d km²/h, ETA \d+:\d\d:\d\d", caplog.text)
