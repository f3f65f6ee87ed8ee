"""Faults during a job: dying Ray workers and nodes, a killed driver, crashes while the products
are put in place, a second writer. Each must end in the map a fault-free run gives, or in no
finished-looking output at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import make_varying_model
from maps import KERNEL_ATOL, assert_same_map, job, read_prob
from polling import wait_for
from ray_nodes import LOCAL, local_cluster

from landslide_batch import mapping  # maps a scene into its working folder: the test breaks its store creation
from landslide_batch.errors import DiskFullError
from landslide_batch.pipeline import OUTPUTS, run_job

N_BLOCKS = 16  # a 512 x 512 scene in blocks of 128 px: enough blocks for a fault to land mid-job


def markers(out: Path) -> list[Path]:
    blocks = out / ".work" / "blocks"
    return list(blocks.iterdir()) if blocks.is_dir() else []


def finished_keys(out: Path) -> set[str]:
    """The blocks finished so far (their markers)."""
    return {m.name.removesuffix(".done") for m in markers(out)}


def assert_retried_after_fault(manifest: dict, done_at_fault: set[str]) -> None:
    """Ray ran some block again after the fault (its task attempt > 0, ``blocks.retried``), and
    only blocks not yet finished at the fault: work in flight on the lost actor was recomputed."""
    retried = manifest["blocks"]["retried"]
    assert retried, "no block was retried: the fault hit no work in flight"
    assert not set(retried) & done_at_fault and all(n >= 1 for n in retried.values())


def assert_nothing_finished(out: Path) -> None:
    assert not (out / "run.json").exists()
    assert not [name for name in OUTPUTS.values() if (out / name).exists()]


@pytest.fixture(scope="module")
def big_bands():
    from landslide_batch.synthetic import synthetic_scene

    return synthetic_scene(512, 512, seed=5)[0]


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory, big_bands):
    from landslide_batch.synthetic import write_geotiff

    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene512.tif", big_bands)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory, tiny_model, big_bands):
    """``tiny_model`` made to give ``big_scene`` a map that varies (equal maps then mean something)."""
    out = tmp_path_factory.mktemp("models") / "unet_varying512"
    make_varying_model(tiny_model, out, big_bands)
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, big_scene, big_model):
    """The fault-free map of ``big_scene`` (local executor)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert run_job(job(big_scene, out, big_model))["blocks"]["total"] == N_BLOCKS
    return read_prob(out)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory, scene_arrays):
    """300 x 260 px, 9 blocks: for the faults that need no long job."""
    from landslide_batch.synthetic import write_geotiff

    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene300.tif", scene_arrays[0])


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory, small_scene, varying_model):
    """The fault-free result folder of ``small_scene`` and its manifest."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, run_job(job(small_scene, out, varying_model))


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "landslide_batch.cli", "run", *map(str, args)]


CLI_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same torch threads as this process: same floats


# --- Ray: a predictor actor and a whole worker node die mid-job ------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A head (no CPUs, so all work lands on workers) + 2 worker nodes of 2 CPUs, on 127.0.0.1."""
    pytest.importorskip("ray")
    with local_cluster(2, num_cpus=2) as cluster:
        yield cluster, LOCAL


def predictor_actor() -> dict:
    """The live predictor actor, from the GCS actor table (the state API would need a dashboard)."""
    from ray._private import state

    alive = [a for a in state.actors().values() if a["State"] == "ALIVE" and "PredictBlock" in a["ActorClassName"]]
    assert len(alive) == 1, alive
    return alive[0]


def run_with_fault(cfg, fault) -> tuple[dict, set[str]]:
    """Run ``cfg`` in a thread; call ``fault()`` once the first block is finished.
    -> (manifest, keys of the blocks finished when the fault hit)."""
    result = {}

    def target():
        try:
            result["manifest"] = run_job(cfg)
        except BaseException as exc:  # re-raised in the test's thread below
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    wait_for(lambda: markers(cfg.out) or not thread.is_alive(), 300, "the first finished block")
    done_at_fault = finished_keys(cfg.out)
    fault()
    thread.join(300)
    assert not thread.is_alive(), "job did not finish after the fault"
    if "error" in result:
        raise result["error"]
    return result["manifest"], done_at_fault


@pytest.mark.slow
def test_killed_predictor_actor_is_replaced_and_map_is_unchanged(
    ray_cluster, big_scene, big_model, reference, tmp_path
):
    killed = {}

    def kill_actor():
        killed.update(predictor_actor())
        os.kill(killed["Pid"], signal.SIGKILL)

    manifest, done_at_fault = run_with_fault(job(big_scene, tmp_path / "out", big_model, executor="ray"), kill_actor)
    assert len(done_at_fault) < N_BLOCKS  # the kill landed mid-job
    from ray._private import state

    assert state.actors()[killed["ActorID"]]["NumRestarts"] >= 1
    assert manifest["status"] == "complete" and manifest["blocks"]["computed"] == N_BLOCKS
    assert_retried_after_fault(manifest, done_at_fault)
    assert_same_map(read_prob(tmp_path / "out"), reference, atol=KERNEL_ATOL)


@pytest.mark.slow
def test_removed_worker_node_is_survived_and_map_is_unchanged(ray_cluster, big_scene, big_model, reference, tmp_path):
    cluster, local = ray_cluster

    def remove_node_of_actor():
        node_id = predictor_actor()["Address"]["NodeID"]
        node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)

    try:
        manifest, done_at_fault = run_with_fault(
            job(big_scene, tmp_path / "out", big_model, executor="ray"), remove_node_of_actor
        )
    finally:
        cluster.add_node(num_cpus=2, **local)  # back to two workers for whoever uses the cluster next
    assert len(done_at_fault) < N_BLOCKS
    assert manifest["status"] == "complete" and manifest["blocks"]["computed"] == N_BLOCKS
    assert_retried_after_fault(manifest, done_at_fault)
    assert_same_map(read_prob(tmp_path / "out"), reference, atol=KERNEL_ATOL)


# --- The driver process dies, or a second one starts on the same folder -----------------------------------


@pytest.mark.slow
def test_sigkilled_driver_resumes_only_unfinished_blocks(big_scene, big_model, reference, tmp_path):
    out = tmp_path / "out"
    command = cli("--scene", big_scene, "--model", big_model, "--out", out, "--block", 128, "--batch-size", 8)
    log = tmp_path / "killed.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for(lambda: len(markers(out)) >= 3 or proc.poll() is not None, 300, "three finished blocks")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    done_at_kill = finished_keys(out)
    finished = len(done_at_kill)
    assert 3 <= finished < N_BLOCKS, f"the kill should land mid-job; its log:\n{log.read_text()}"
    assert_nothing_finished(out)

    again = subprocess.run(command, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["blocks"]["resumed"] == finished
    assert run["blocks"]["computed"] == N_BLOCKS - finished
    # The re-run computed exactly the blocks unfinished at the kill, the one in flight among them.
    recomputed = set(run["blocks"]["node_of"])
    assert len(recomputed) == N_BLOCKS - finished and not recomputed & done_at_kill
    assert f"{N_BLOCKS - finished} block(s) computed, {finished} resumed" in again.stdout
    # Not bitwise: a tile shared by two blocks comes from the predictor's cache when both run in
    # one process, from a batch of its own after the kill, and CPU convolutions differ in the
    # last bit with the batch's make-up.
    assert_same_map(read_prob(out), reference, atol=KERNEL_ATOL)


@pytest.mark.slow
def test_second_writer_is_refused_while_the_first_completes(big_scene, big_model, reference, tmp_path):
    out = tmp_path / "out"
    command = cli("--scene", big_scene, "--model", big_model, "--out", out, "--block", 128, "--batch-size", 8)
    first = subprocess.Popen(command, env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: markers(out) or first.poll() is not None, 300, "the first job's first block")
        first.send_signal(signal.SIGSTOP)  # hold it mid-job, lock held, however slow the second one starts
        second = subprocess.run(command, env=CLI_ENV, capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 3
    assert f"{out} is being written by another job" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.wait(300) == 0, first.stderr.read()
    assert json.loads((out / "run.json").read_text())["blocks"]["computed"] == N_BLOCKS
    assert_same_map(read_prob(out), reference)


# --- Crashes while the products are put in place ----------------------------------------------------------


@contextmanager
def fail_moving_onto(target: Path):
    """``os.replace`` onto ``target`` fails as on a full disk."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst) == target:
            raise OSError(28, "No space left on device (simulated)")
        return real_replace(src, dst, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", replace)
        yield


def test_crash_while_moving_products_leaves_nothing_final_and_resumes(
    tmp_path, small_scene, varying_model, small_reference
):
    """The products move into OUT one by one: a failure part-way must not leave some of them
    under their final names, and must not cost the finished blocks (the store keeps its markers)."""
    ref, ref_run = small_reference
    out = tmp_path / "out"
    with fail_moving_onto(out / OUTPUTS["mask"]), pytest.raises(DiskFullError, match="simulated"):
        run_job(job(small_scene, out, varying_model))
    assert_nothing_finished(out)

    resumed = run_job(job(small_scene, out, varying_model))
    assert resumed["blocks"]["resumed"] == ref_run["blocks"]["computed"] and resumed["blocks"]["computed"] == 0
    assert_same_map(read_prob(out), read_prob(ref))


@pytest.mark.slow
def test_hard_kill_between_store_and_manifest_recomputes_instead_of_trusting_markers(
    tmp_path, small_scene, varying_model, small_reference
):
    """A driver killed after the output store left ``.work`` but before run.json landed leaves
    block markers without their data: resuming from them would give a map of nodata."""
    ref, ref_run = small_reference
    out = tmp_path / "out"
    argv = [
        "run",
        "--scene",
        str(small_scene),
        "--model",
        str(varying_model),
        "--out",
        str(out),
        "--block",
        "128",
        "--batch-size",
        "8",
    ]
    killed_at_manifest = f"""
import os, sys
from pathlib import Path
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if Path(dst) == Path({str(out / "run.json")!r}):
        os._exit(137)  # like SIGKILL: no cleanup runs
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from landslide_batch.cli import main
main({argv!r})
"""
    assert (
        subprocess.run(
            [sys.executable, "-c", killed_at_manifest], env=CLI_ENV, capture_output=True, timeout=300
        ).returncode
        == 137
    )
    assert not (out / "run.json").exists() and len(markers(out)) == ref_run["blocks"]["total"]

    manifest = run_job(job(small_scene, out, varying_model))
    assert manifest["blocks"]["computed"] == ref_run["blocks"]["computed"]
    assert set(manifest["blocks"]["node_of"]) == set(ref_run["blocks"]["node_of"])  # every block again
    assert_same_map(read_prob(out), read_prob(ref))


def test_crash_while_creating_output_store_resumes(tmp_path, small_scene, varying_model, small_reference, monkeypatch):
    import zarr

    ref, ref_run = small_reference

    def crash_half_way(path, *args, **kwargs):
        zarr.open_group(str(path), mode="w")  # the group exists, its arrays not yet
        raise RuntimeError("killed while creating the store (simulated)")

    monkeypatch.setattr(mapping, "create_store", crash_half_way)
    with pytest.raises(RuntimeError, match="simulated"):
        run_job(job(small_scene, tmp_path / "out", varying_model))
    monkeypatch.undo()
    manifest = run_job(job(small_scene, tmp_path / "out", varying_model))
    assert manifest["blocks"]["computed"] == ref_run["blocks"]["computed"]
    assert_same_map(read_prob(tmp_path / "out"), read_prob(ref))


def test_failed_overwrite_keeps_no_stale_manifest(tmp_path, small_scene, varying_model, small_reference):
    """``--overwrite`` replaces products one by one: if it fails part-way, the old run.json
    must not vouch for a folder that now mixes two jobs."""
    out = tmp_path / "out"
    shutil.copytree(small_reference[0], out)
    with fail_moving_onto(out / OUTPUTS["mask"]), pytest.raises(DiskFullError, match="simulated"):
        run_job(job(small_scene, out, varying_model, blend="mean"), overwrite=True)
    assert not (out / "run.json").exists()


# --- Determinism ----------------------------------------------------------------------------------------


def test_same_job_twice_gives_bit_identical_map(tmp_path, small_scene, varying_model, small_reference):
    run_job(job(small_scene, tmp_path / "again", varying_model))
    folders = (small_reference[0], tmp_path / "again")
    assert_same_map(*(read_prob(f) for f in folders))
    mask_sha = [hashlib.sha256((f / OUTPUTS["mask"]).read_bytes()).hexdigest() for f in folders]
    assert mask_sha[0] == mask_sha[1]
