"""The process owner, not the library, decides how a process ends and how many torch threads it
runs: the CLI exits through the interpreter's ordinary exit (every ``atexit`` handler runs: Ray's,
fsspec's, the embedding program's) and sets a local job's threads from the job's ``threads``; a Ray
actor sets its own; building a predictor leaves them as they were."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from landslide_batch.config import EnsembleConfig, EnsembleMember
from landslide_batch.infer.actor_pool import PredictBlockActor
from landslide_batch.infer.predictor import EnsemblePredictor
from landslide_batch.infer.stages import PredictorSpec

#: The console script's entry under an ``atexit`` handler that records, at the very end, the
#: process's torch threads (None when torch was never imported) in the file named by argv[1].
CLI_WITH_ATEXIT = textwrap.dedent(
    """
    import atexit, json, sys

    from landslide_batch.cli import entry

    def record(path=sys.argv.pop(1)):
        torch = sys.modules.get("torch")
        with open(path, "w") as f:
            json.dump({"threads": torch.get_num_threads() if torch else None}, f)

    atexit.register(record)
    entry()
    """
)


def run_cli(tmp_path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict | None]:
    """``landslide-batch ARGS`` in a child process (OMP_NUM_THREADS=1 from conftest) -> the
    finished process and what its ``atexit`` handler recorded (None: the handler never ran)."""
    record = tmp_path / "atexit.json"
    record.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", CLI_WITH_ATEXIT, str(record), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    return done, json.loads(record.read_text()) if record.exists() else None


def test_the_cli_exits_through_the_interpreter_so_atexit_handlers_run(tmp_path):
    done, recorded = run_cli(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.startswith("landslide-batch ")
    assert recorded == {"threads": None}  # the handler ran; --version imports no torch
    done, recorded = run_cli(tmp_path, "run", "--no-such-option")
    assert done.returncode == 2 and "unrecognized arguments: --no-such-option" in done.stderr
    assert recorded is not None


@pytest.mark.slow
def test_a_cli_job_sets_its_threads_from_the_job_and_exits_normally(tmp_path, scene_tif, tiny_model):
    out = tmp_path / "out"
    args = ["run", "--scene", str(scene_tif), "--model", str(tiny_model), "--out", str(out)]
    done, recorded = run_cli(tmp_path, *args, "--block", "128", "--batch-size", "8", "--threads", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "run.json").is_file() and "map written to" in done.stdout
    assert recorded == {"threads": 3}  # not conftest's OMP_NUM_THREADS=1: the CLI set them from the job


@pytest.fixture
def threads_kept():
    """The test process's torch threads, restored after the test whatever it set."""
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def spec(model, threads: int | None) -> PredictorSpec:
    return PredictorSpec(EnsembleConfig(members=[EnsembleMember(model=model)]), 64, 32, "gaussian", 8, "cpu", threads)


def test_building_a_predictor_leaves_the_process_threads_alone(tiny_model, threads_kept):
    other = threads_kept + 1
    torch.set_num_threads(other)
    predictor = spec(tiny_model, threads=other + 2).build()  # the job's threads: for actors, not here
    assert isinstance(predictor, EnsemblePredictor) and torch.get_num_threads() == other
    with pytest.raises(TypeError, match="threads"):
        EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=tiny_model)]), threads=2)


def test_a_ray_actor_sets_its_own_threads_before_building_its_predictor(tiny_model, threads_kept):
    actor = PredictBlockActor(spec(tiny_model, threads=threads_kept + 2))  # the class a Ray actor runs
    actor.warm()
    assert actor.failed is None and actor.models_loaded == 1
    assert torch.get_num_threads() == threads_kept + 2
    torch.set_num_threads(threads_kept)
    PredictBlockActor(spec(tiny_model, threads=None)).warm()  # no setting: torch's default stays
    assert torch.get_num_threads() == threads_kept
