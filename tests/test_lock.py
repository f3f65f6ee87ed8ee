"""requirements.lock is the one list of versions: generated from pyproject.toml and
requirements-pins.in, installed exactly into the venv, and resolvable for the cluster image.

The image cannot be built here (no Docker engine), so its install is resolved offline: the
Dockerfile's requirements are walked through each locked distribution's own metadata
(`scripts/lockfile.unmet`). A pin that cannot resolve fails here, not in a user's `docker build`."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lockfile  # noqa: E402

DOCKERFILE = ROOT / "cluster" / "Dockerfile"


def image_requirements(dockerfile: str) -> list[str]:
    """What the image's RUN pip install lines ask for, `.` standing for the project's runtime needs."""
    text = dockerfile.replace("\\\n", " ")
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1)
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted: list[str] = []
    for command in re.findall(r"pip install ([^&\n]*)", text):
        assert "-c requirements.lock" in command, f"an image install bypasses the lock: {command}"
        for arg in re.findall(r'"[^"]*"|\S+', command.replace("-c requirements.lock", "")):
            arg = arg.strip('"').replace("${RAY_VERSION}", ray_version)
            if arg == ".":
                wanted += runtime
            elif not arg.startswith("-"):
                wanted.append(arg)
    return wanted


@pytest.fixture(scope="module")
def pins() -> dict[str, Version]:
    return lockfile.read_pins()


def test_the_lock_records_the_inputs_it_was_made_from(tmp_path):
    header = lockfile.LOCK.read_text().splitlines()[0]
    assert header == lockfile.DIGEST_PREFIX + lockfile.inputs_digest(), (
        "pyproject.toml or requirements-pins.in changed since requirements.lock was made: run scripts/lock.sh"
    )
    for name in ("pyproject.toml", "requirements-pins.in"):  # a dependency changed without a re-lock is caught
        shutil.copy(ROOT / name, tmp_path / name)
    planted = (tmp_path / "pyproject.toml").read_text().replace('"h5py>=3.10",', '"h5py>=3.10",\n    "rich>=13",')
    (tmp_path / "pyproject.toml").write_text(planted)
    assert lockfile.inputs_digest(tmp_path) != lockfile.inputs_digest()


def test_every_requirement_of_the_project_resolves_within_the_lock(pins):
    assert lockfile.unmet(lockfile.input_requirements(), pins) == []
    assert str(pins["torch"]) == "2.13.0" and str(pins["torchvision"]) == "0.28.0"


def test_the_venv_holds_exactly_the_lock(pins):
    """`pip list` equals the lock, torch's build label aside (2.13.0+cpu here, CUDA in the image)."""
    import ray  # noqa: F401  (puts its vendored psutil and colorama on sys.path, which pip list does not see)

    assert lockfile.differences(pins, lockfile.installed()) == []


def test_differences_name_a_drifted_a_missing_and_an_extra_package(pins):
    found = dict(lockfile.installed())
    found["moto"] = Version("5.0.0")
    del found["zarr"]
    found["left-over"] = Version("1.0")
    found["torch"] = Version("2.13.0+cu130")  # another build of the locked torch is the locked torch
    assert lockfile.differences(pins, found) == [
        "left-over 1.0 installed but not in the lock",
        f"moto 5.0.0 installed, the lock has {pins['moto']}",
        f"zarr {pins['zarr']} missing",
    ]


def test_the_image_installs_from_the_lock_and_resolves_against_it(pins):
    dockerfile = DOCKERFILE.read_text()
    wanted = image_requirements(dockerfile)
    assert any(r.startswith("ray[data,train,default]==") for r in wanted)
    assert lockfile.unmet(wanted, pins) == []
    # One pin file: the lock. The old per-image pins (which had drifted from setup's) are gone.
    assert not list(ROOT.glob("**/constraints*.txt"))
    assert re.search(r"^COPY .*requirements\.lock", dockerfile, re.M)
    assert "!requirements.lock" in (ROOT / "cluster" / "Dockerfile.dockerignore").read_text()
    launcher = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())
    installs = [c for c in launcher["setup_commands"] if "pip install" in c]
    assert installs and all("-c /home/ray/landslide-batch/requirements.lock" in c for c in installs)


def test_a_planted_impossible_pin_fails_the_image_check(pins):
    """The stale pin that broke the image: python-dateutil 4 where aiobotocore (s3fs) needs < 3."""
    planted = DOCKERFILE.read_text().replace(" setuptools \\", " setuptools python-dateutil==4.0.0 \\")
    problems = lockfile.unmet(image_requirements(planted), pins)
    assert any(
        p.startswith("the project needs python-dateutil==4.0.0; the lock pins python-dateutil==") for p in problems
    )
    bumped = dict(pins, **{"python-dateutil": Version("4.0.0")})
    problems = lockfile.unmet(image_requirements(DOCKERFILE.read_text()), bumped)
    assert any(re.match(r"aiobotocore \S+ needs python-dateutil<3", p) for p in problems), problems
