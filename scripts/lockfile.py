"""The project's lock, `requirements.lock`: read it, stamp it, check installs and pin sets against it.

`scripts/lock.sh` compiles the lock with pip-tools, then calls `stamp`; `scripts/setup.sh` calls
`sync` after installing it; `tests/test_lock.py` uses the functions below. Standard library and
`packaging` only (pip-tools itself lives in its own venv, `.venv-lock/`).

    python scripts/lockfile.py stamp requirements.lock   # after pip-compile
    python scripts/lockfile.py sync                      # remove what the lock does not list
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PINS = ROOT / "requirements-pins.in"
PROJECT = "landslide-batch"
DIGEST_PREFIX = "# inputs-sha256: "
#: torch is locked without its build label (2.13.0, not 2.13.0+cpu): the build is the machine's.
LABEL_FREE = frozenset({"torch"})


def input_requirements(root: Path = ROOT) -> list[str]:
    """What the lock is compiled from: pyproject's dependencies, its `test` extra, its build
    requirements and the requirement lines of requirements-pins.in, in file order."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    pins = [line.split("#")[0].strip() for line in (root / PINS.name).read_text().splitlines()]
    return [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["test"],
        *project["build-system"]["requires"],
        *(line for line in pins if line),
    ]


def inputs_digest(root: Path = ROOT) -> str:
    """sha256 of the lock's inputs: changes whenever a dependency is added, removed or re-specified."""
    return hashlib.sha256(json.dumps(input_requirements(root)).encode()).hexdigest()


def read_pins(lock: Path = LOCK) -> dict[str, Version]:
    """`name==version` lines of a lock, by canonical name."""
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            req = Requirement(line)
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def stamp(lock: Path) -> None:
    """Record the inputs' digest in the lock's header and drop torch's local build label."""
    lines = [line for line in lock.read_text().splitlines() if not line.startswith(DIGEST_PREFIX)]
    for i, line in enumerate(lines):
        name, sep, version = line.partition("==")
        if sep and canonicalize_name(name) in LABEL_FREE:
            lines[i] = f"{name}=={Version(version).public}"
    lines.insert(0, DIGEST_PREFIX + inputs_digest(lock.parent))
    lock.write_text("\n".join(lines) + "\n")


def installed() -> dict[str, Version]:
    """Distributions installed in the running interpreter's environment (its site-packages, as
    `pip list` sees them: not folders a package adds to sys.path, such as Ray's vendored
    thirdparty_files), by canonical name."""
    site = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    return {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in md.distributions(path=list(site))}


def same_release(locked: Version, found: Version, name: str) -> bool:
    """Whether an installed version is the locked one (any build label for torch)."""
    return found.public == locked.public if name in LABEL_FREE else found == locked


def differences(pins: Mapping[str, Version], found: Mapping[str, Version]) -> list[str]:
    """How an environment differs from the lock (the project itself aside)."""
    found = {name: v for name, v in found.items() if name != PROJECT}
    out = [
        f"{n} {found[n]} installed, the lock has {v}"
        for n, v in pins.items()
        if n in found and not same_release(v, found[n], n)
    ]
    out += [f"{n} {v} missing" for n, v in pins.items() if n not in found]
    out += [f"{n} {v} installed but not in the lock" for n, v in found.items() if n not in pins]
    return sorted(out)


Requires = Callable[[str, Version], "list[str] | None"]


def requires_installed(name: str, version: Version) -> list[str] | None:
    """Requires-Dist of an installed distribution of that version; None when another is installed."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    return (dist.requires or []) if same_release(version, Version(dist.version), name) else None


def unmet(roots: Iterable[str], pins: Mapping[str, Version], requires: Requires = requires_installed) -> list[str]:
    """Every requirement reachable from `roots` that the pinned versions do not satisfy.

    An offline resolution check of a fully pinned set: walks each pinned distribution's own
    requirements (with the extras asked of it, markers evaluated for this interpreter and
    platform) and names each edge whose pin falls outside the specifier, or is missing."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), "the project") for r in roots]
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{wanted_by} needs {req}; the lock has no {name}")
            continue
        if not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{wanted_by} needs {req}; the lock pins {name}=={pin}")
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            deps = requires(name, pin)
            if deps is None:
                problems.append(f"{name}=={pin}: its requirements are unknown here (not the installed version)")
                continue
            env = {**default_environment(), "extra": extra}
            for dep in map(Requirement, deps):
                if dep.marker is None and extra or dep.marker is not None and not dep.marker.evaluate(env):
                    continue
                todo.append((dep, f"{name} {pin}"))
    return sorted(set(problems))


def sync() -> None:
    """Uninstall whatever the running environment holds beyond the lock (a venv kept across lock changes)."""
    extra = [n for n in installed() if n not in read_pins() and n != PROJECT]
    if extra:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True)


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["?"]
    if command == "stamp":
        stamp(Path(args[0]))
    elif command == "sync":
        sync()
    else:
        sys.exit("usage: lockfile.py stamp LOCK | sync")
