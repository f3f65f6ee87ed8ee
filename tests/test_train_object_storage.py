"""Ray Train on object storage: training data, checkpoints and the model folder on a real S3 API
(moto's server on loopback), 2 CPU workers, and a driver killed mid-run resumes from the store."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from s3_server import s3_bucket
from test_jobs import _stop_session
from test_training import make_split

from landslide_training.dataset import find_pairs, scan_split

BUCKET = "l4s-train"
RUN = f"{BUCKET}/models/.train_runs/plain"  # Ray Train's run folder: next to the model folder
SNAPSHOT = f"{RUN}/checkpoint_manager_snapshot.json"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server with the bucket, its ``AWS_*`` variables set in this process."""
    with s3_bucket(tmp_path_factory.mktemp("moto"), BUCKET) as (fs, env):
        yield fs, env


def _cli(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    """``landslide-batch`` in its own session (so its Ray processes can be killed with it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "landslide-batch"), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _latest_checkpoint_epoch(fs) -> int | None:
    """The epoch of the newest checkpoint Ray Train has registered in its run snapshot, if any."""
    fs.invalidate_cache()  # s3fs caches listings: ask the server
    if not fs.exists(SNAPSHOT):
        return None
    latest = json.loads(fs.cat_file(SNAPSHOT))["latest_checkpoint_result"]
    return None if latest is None else int(latest["metrics"]["epoch"])


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops the driver's processes through /proc")
def test_train_from_s3_to_s3_resumes_after_the_driver_is_killed(tmp_path, s3):
    from landslide_batch.models.card import CARD_FILE, WEIGHTS_FILE

    fs, s3_env = s3
    train_dir, val_dir = make_split(tmp_path / "l4s" / "train", 8, seed=5), make_split(tmp_path / "l4s" / "val", 4, 6)
    fs.put(str(train_dir), f"{BUCKET}/l4s/train", recursive=True)
    fs.put(str(val_dir), f"{BUCKET}/l4s/val", recursive=True)
    config = tmp_path / "plain.yaml"
    config.write_text(
        yaml.safe_dump({"model": "unet_plain", "batch_size": 2, "lr": 3e-3, "patience": None, "max_steps_per_epoch": 2})
    )
    ray_tmp = tempfile.mkdtemp(prefix="lstr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        **s3_env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_TMPDIR": ray_tmp,
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    args = [
        "train",
        str(config),
        "--train-data",
        f"s3://{BUCKET}/l4s/train",
        "--val-data",
        f"s3://{BUCKET}/l4s/val",
        "--out",
        f"s3://{BUCKET}/models/plain",
        "--num-workers",
        "2",
    ]
    procs: list[subprocess.Popen] = []
    try:
        # 1. Far more epochs than will run: SIGKILL the driver (and its local Ray) once Ray Train has
        #    registered a checkpoint on S3.
        first = _cli(env, *args, "--epochs", "40", log=tmp_path / "first.log")
        procs.append(first)
        deadline = time.monotonic() + 240
        while _latest_checkpoint_epoch(fs) is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, (
                "no checkpoint on S3 after 240 s:\n" + (tmp_path / "first.log").read_text()
            )
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        _stop_session(first.pid)
        done = _latest_checkpoint_epoch(fs)
        assert 1 <= done < 40 and not fs.exists(f"{BUCKET}/models/plain/{CARD_FILE}")  # killed mid-run
        checkpoint = json.loads(fs.cat_file(SNAPSHOT))["latest_checkpoint_result"]["checkpoint_dir_name"]
        state = torch.load(
            io.BytesIO(fs.cat_file(f"{RUN}/{checkpoint}/state.pt")), map_location="cpu", weights_only=True
        )
        history = state["history"]
        assert [r["epoch"] for r in history] == list(range(1, done + 1))

        # 2. The same command, one epoch more: it continues from the checkpoint on S3.
        second = _cli(env, *args, "--epochs", str(done + 1), log=tmp_path / "second.log")
        procs.append(second)
        assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()
    finally:
        for proc in procs:
            _stop_session(proc.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    output = (tmp_path / "second.log").read_text()
    assert f"resumed from the checkpoint after epoch {done}" in output, output

    fs.invalidate_cache()
    card = json.loads(fs.cat_file(f"{BUCKET}/models/plain/{CARD_FILE}"))
    assert fs.size(f"{BUCKET}/models/plain/{WEIGHTS_FILE}") > 1e6 and card["trained"]
    assert card["training"]["num_workers"] == 2 and card["training"]["result"]["epochs_run"] == done + 1
    # The epochs of the killed run were not trained again: the log's first rows are the
    # checkpoint's history, timings included; only the last epoch is new.
    rows = list(csv.DictReader(io.StringIO(fs.cat_file(f"{BUCKET}/models/plain/train_log.csv").decode())))
    assert [int(r["epoch"]) for r in rows] == list(range(1, done + 2))
    for row, old in zip(rows[:done], history, strict=True):
        assert float(row["train_s"]) == pytest.approx(old["train_s"], abs=1e-6)
        assert float(row["train_loss"]) == pytest.approx(old["train_loss"], rel=1e-5)
    # Data on S3 hash like the same files on disk: a model card names its data wherever it lived.
    from landslide_batch.bands import resolve_features

    features = list(resolve_features("rgb_ndvi_slope_dem"))
    assert card["data_hashes"] == {
        "train": scan_split(find_pairs(train_dir), features).sha256,
        "val": scan_split(find_pairs(val_dir), features).sha256,
    }
    assert not (tmp_path / ".train_runs").exists() and not Path(".train_runs").exists()


def test_uris_in_training_configs_and_bad_remote_locations(tmp_path, s3):
    """URIs stay URIs (never rebased on the YAML's folder, never mangled by ``Path``); a missing
    split, an existing model folder and a read-only ``out`` fail before Ray starts."""
    from landslide_batch.errors import ConfigError, InputError
    from landslide_training.config import load_train_config
    from landslide_training.train import train

    fs, _ = s3
    path = tmp_path / "t.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "unet_plain",
                "train_data": f"s3://{BUCKET}/nothing/train",
                "val_data": "local/val",
                "out": f"s3://{BUCKET}/models/x",
            }
        )
    )
    cfg = load_train_config(path)
    assert (cfg.train_data, cfg.val_data, cfg.out) == (
        f"s3://{BUCKET}/nothing/train",
        tmp_path / "local" / "val",
        f"s3://{BUCKET}/models/x",
    )
    assert str(cfg.storage) == f"s3://{BUCKET}/models/.train_runs"
    with pytest.raises(InputError, match=f"data folder s3://{BUCKET}/nothing/train does not exist"):
        train(cfg)
    fs.pipe_file(f"{BUCKET}/models/taken/card.json", b"{}")
    with pytest.raises(ConfigError, match=f"s3://{BUCKET}/models/taken already exists"):
        train(cfg.model_copy(update={"out": f"s3://{BUCKET}/models/taken"}))
    with pytest.raises(ConfigError, match="--out https://example.com/m: https:// locations are read-only"):
        train(cfg.model_copy(update={"out": "https://example.com/m"}))
