"""The command line's habits: ``--version``; ``-v``/``-vv``/``-q``/``--log-file`` before or after
the command, with the libraries' loggers kept at WARNING unless ``-vv``; choices named in the help
and in the error; the run summary with its elapsed time and the files written.

The logging is checked on the console script in a fresh process (as a user runs it): under pytest
the root logger already has handlers, which the CLI leaves alone.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

import landslide_batch
from landslide_batch.cli import main
from landslide_batch.models.card import init_model_folder
from landslide_batch.synthetic import synthetic_scene, write_geotiff

CLI = [sys.executable, "-c", "from landslide_batch.cli import entry; entry()"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ", re.M)


def cli(*args: str, cwd, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, **env}
    return subprocess.run([*CLI, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300, check=False)


def logged(stderr: str) -> list[tuple[str, str]]:
    """(level, logger) of each log line on the console."""
    return [(m.group(1), m.group(2).rstrip(":")) for m in LOG_LINE.finditer(stderr)]


def test_version_names_the_installed_distribution(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"landslide-batch {version('landslide-batch')}"
    assert landslide_batch.__version__ == version("landslide-batch")


@pytest.mark.parametrize("flag,value", [("--blend", "box"), ("--format", "shp"), ("--executor", "slurm")])
def test_an_unknown_choice_lists_the_choices(flag, value, capsys):
    assert main(["run", "--scene", "s.tif", "--model", "m", "--out", "o", flag, value]) == 2
    err = capsys.readouterr().err
    choices = {"--blend": "'mean', 'cosine', 'gaussian'", "--format": "'gpkg', 'parquet', 'fgb'"}
    assert err.startswith(f"landslide-batch run: error: argument {flag}: invalid choice: '{value}' (choose from ")
    assert choices.get(flag, "'local', 'ray'") in err and len(err.strip().splitlines()) == 1, err
    assert main(["run", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--blend {mean,cosine,gaussian}" in help_text and "--device {auto,cpu,cuda,cuda:N}" in help_text
    assert "--format {gpkg,parquet,fgb}" in help_text and "--min-area-m2" in help_text


def test_device_refuses_what_no_job_accepts(capsys):
    assert main(["run", "--scene", "s.tif", "--model", "m", "--out", "o", "--device", "gpu"]) == 2
    assert "argument --device: invalid choice: 'gpu' (choose from auto, cpu, cuda, cuda:N)" in capsys.readouterr().err


def test_verbosity_quiet_and_log_file_before_or_after_the_command(tmp_path):
    bands, _ = synthetic_scene(96, 96, seed=1)
    write_geotiff(tmp_path / "s.tif", bands)
    init_model_folder("Unet", "mobilenet_v2", tmp_path / "m", seed=0)
    job = ["--scene", "s.tif", "--model", "m", "--out", "o", "--block", "64", "--batch-size", "4"]
    job += ["--min-area-m2", "300"]

    first = cli("run", *job, "-v", cwd=tmp_path, LANDSLIDE_BATCH_PROGRESS="1")  # -v after the command
    assert first.returncode == 0, first.stderr
    # tqdm's bars (forced: stderr is no terminal here) for the ingest and the blocks, with an ETA
    assert re.search(r"ingest: +\d+%\|.*\| \d+/4 \[\d\d:\d\d<", first.stderr), first.stderr
    assert re.search(r"infer: +\d+%\|.*\| \d+/4 \[\d\d:\d\d<\d\d:\d\d", first.stderr)
    lines = logged(first.stderr)
    assert any(level == "DEBUG" and name.startswith("landslide_batch") for level, name in lines)
    assert not [name for level, name in lines if level in ("DEBUG", "INFO") and not name.startswith("landslide")]
    summary = first.stdout.splitlines()
    assert re.match(r"map written to \S+/o in \d+\.\d s: \d+ landslide objects", summary[0])
    assert summary[1].startswith("files: run.json, probability.tif") and "mask.qml" in summary[1]
    assert '"min_area_m2": 300.0' in (tmp_path / "o" / "run.json").read_text()

    log_file = tmp_path / "logs.txt"
    quiet = cli("-q", "--log-file", str(log_file), "run", *job, cwd=tmp_path)  # before the command
    assert quiet.returncode == 0, quiet.stderr
    assert {level for level, _ in logged(quiet.stderr)} <= {"WARNING", "ERROR"}
    assert "already holds the finished result" not in quiet.stderr
    assert quiet.stdout.startswith("map written to")
    assert re.search(r"INFO landslide_batch\.[\w.]+: ", log_file.read_text())  # the project's INFO, hidden by -q
    assert "already holds the finished result of this job" in log_file.read_text()

    loud = cli("-vv", "run", *job, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert any(level == "DEBUG" and name.startswith("rasterio") for level, name in logged(loud.stderr))

    nowhere = cli("run", *job, "--log-file", str(tmp_path / "no" / "such" / "dir" / "log.txt"), cwd=tmp_path)
    assert nowhere.returncode == 2
    assert "--log-file" in nowhere.stderr and "cannot write there" in nowhere.stderr
