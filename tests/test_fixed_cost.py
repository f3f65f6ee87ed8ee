"""A job's fixed cost (process wall − pure model time) and where its seconds go: ``run.json``
records the timings, ``benchmarks/fixed_cost.py`` breaks the cost down from them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_fixed_cost():
    spec = importlib.util.spec_from_file_location("fixed_cost", ROOT / "benchmarks" / "fixed_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def manifest(**timings: float) -> dict:
    return {"timings": timings, "tiles": {"grid": 300}}


def test_breakdown_splits_the_wall_into_named_steps():
    fc = load_fixed_cost()
    t = dict(process_age_at_job_s=0.8, preflight_s=0.1, hash_s=0.2, models_s=2.5, ingest_s=1.0)
    t |= dict(models_ready_s=2.6, prepare_s=2.7, infer_s=7.0, finish_s=1.2, total_s=11.0)
    cost = fc.fixed_cost(manifest(**t), wall_s=12.5, raw_tiles_per_s=50.0)  # model: 300 / 50 = 6 s
    assert cost["model_s"] == pytest.approx(6.0) and cost["fixed_s"] == pytest.approx(6.5)
    rows = dict(cost["breakdown"])
    expected = [0.8, 0.1, 2.7, 1.0, 1.2, 0.1, 0.6]  # ... inference beyond 6 s, manifest 11-2.7-7-1.2, exit 12.5-11.9
    assert list(rows.values()) == pytest.approx(expected)
    assert sum(rows.values()) == pytest.approx(cost["fixed_s"])
    assert [s for _, s in cost["beside"]] == [0.2, 1.0, 2.5]  # hashing, ingest, models: not summed
    # Where the job timed its own forward passes, that is the model time, whatever the raw rate.
    timed = fc.fixed_cost(manifest(**t, forward_s=6.8), wall_s=12.5, raw_tiles_per_s=50.0)
    assert timed["model_s"] == 6.8 and timed["fixed_s"] == pytest.approx(5.7)


def test_older_run_json_gets_one_row_outside_the_job_and_too_little_is_refused():
    fc = load_fixed_cost()
    cost = fc.fixed_cost(manifest(prepare_s=3.0, infer_s=10.0, finish_s=1.0, total_s=14.5), 16.0, 30.0)
    assert cost["breakdown"][-1] == ("outside the job's timings: start-up, preflight, publishing, exit", 1.5)
    assert sum(s for _, s in cost["breakdown"]) == pytest.approx(16.0 - 10.0)
    with pytest.raises(ValueError, match=r"run.json timings lack infer_s, total_s: found \['finish_s', 'prepare_s'\]"):
        fc.fixed_cost(manifest(prepare_s=3.0, finish_s=1.0), 16.0, 30.0)


@pytest.mark.slow
def test_a_cli_job_records_its_timings_and_they_fit_its_process_wall(tmp_path, scene_tif, tiny_model):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from landslide_batch.cli import entry; entry()", "run", "--scene", str(scene_tif)]
    cmd += ["--model", str(tiny_model), "--out", str(out), "--block", "128", "--batch-size", "8", "--threads", "1"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True)
    wall = time.perf_counter() - t
    timings = json.loads((out / "run.json").read_text())["timings"]
    for key in ("process_age_at_job_s", "preflight_s", "hash_s", "models_s", "ingest_s", "models_ready_s"):
        assert timings[key] >= 0, key
    # The interpreter and imports come before the job; the models load inside the job's preparation.
    assert 0.05 < timings["process_age_at_job_s"] < wall
    assert timings["models_ready_s"] <= timings["prepare_s"] < timings["total_s"]
    assert 0 < timings["forward_s"] < timings["infer_s"]  # the model's share of the inference stage
    assert timings["process_age_at_job_s"] + timings["preflight_s"] + timings["total_s"] < wall
    cost = load_fixed_cost().fixed_cost(json.loads((out / "run.json").read_text()), wall, raw_tiles_per_s=1e9)
    after_the_job = cost["breakdown"][-1]
    # After the job: publishing, then the interpreter's ordinary exit, whose teardown of torch takes
    # about a second on a quiet machine (several on a loaded one, as everything else here).
    assert after_the_job[0] == "after the job: publishing, clean-up, exit" and 0 < after_the_job[1] < wall / 3
