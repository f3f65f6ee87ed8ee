"""The installed distribution: ``training/`` installs as ``landslide_training`` (a top-level
``training`` would collide with any other on a user's path), its commands reach ``landslide-batch``
through an entry point naming that package, and every package folder is in the installed list."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import tomllib

from landslide_batch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
TRAINING_COMMANDS = {"train", "evaluate", "cut-patches", "reproduce", "demo"}


def _setuptools_config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _python(code: str, cwd: Path, **env: str) -> list[str]:
    """``code`` run by this venv's Python in ``cwd`` (not the repo), without our PYTHONPATH -> its output lines."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | env
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_training_commands_come_from_the_entry_point_naming_landslide_training():
    (ep,) = [ep for ep in entry_points(group="landslide_batch.commands") if ep.name == "training"]
    assert ep.value == "landslide_training.cli:register"
    assert ep.load().__module__ == "landslide_training.cli"
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert TRAINING_COMMANDS <= set(sub.choices)


def test_landslide_training_imports_from_anywhere_and_training_does_not(tmp_path):
    code = (
        "import importlib.util, sys, landslide_training.train as t; "
        "print(t.__name__, t.train.__module__, importlib.util.find_spec('training')); "
        "print(*sorted(m for m in sys.modules if m.split('.')[0] == 'training') or ['-'])"
    )
    # Its own relative imports resolve inside landslide_training: no module named training is loaded.
    assert _python(code, tmp_path) == ["landslide_training.train", "landslide_training.train", "None", "-"]


def test_every_package_folder_is_listed_under_its_installed_name():
    cfg = _setuptools_config()
    installed_as = {folder: name for name, folder in cfg["package-dir"].items()}
    assert installed_as == {"training": "landslide_training"}
    folders = [
        d
        for top in ("landslide_batch", "training")
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and "__pycache__" not in d.parts and any(f.is_file() for f in d.iterdir())
    ]
    found = {
        ".".join((installed_as.get(parts[0], parts[0]), *parts[1:]))
        for parts in (d.relative_to(ROOT).parts for d in folders)
    }
    assert set(cfg["packages"]) == found


@pytest.mark.slow
def test_a_wheel_installs_landslide_training_and_no_training(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("landslide_batch", "training"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # --no-build-isolation: the venv's own setuptools, no index needed
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "landslide_batch",
        "landslide_training",
        "landslide_batch-0.1.0.dist-info",
    }
    assert {n.removeprefix("landslide_training/") for n in names if n.startswith("landslide_training/")} == {
        p.name for p in (ROOT / "training").glob("*.py")
    }
    (entry,) = [n for n in names if n.endswith("entry_points.txt")]
    assert "training = landslide_training.cli:register" in zipfile.ZipFile(wheel).read(entry).decode()

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", site, wheel], check=True)
    code = "import landslide_training.cli as c, importlib.util; print(c.__file__, importlib.util.find_spec('training'))"
    path, spec = _python(code, tmp_path, PYTHONPATH=str(site))
    assert Path(path) == site / "landslide_training" / "cli.py" and spec == "None"
