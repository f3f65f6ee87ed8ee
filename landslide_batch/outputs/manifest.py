"""run.json: what was run, on what, with which models and software, and how long it took."""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..errors import InputError
from ..storage import Location, location

PACKAGES = (
    "landslide-batch",
    "torch",
    "segmentation-models-pytorch",
    "ray",
    "numpy",
    "zarr",
    "rasterio",
    "xarray",
    "h5py",
)

#: ``run.json``'s ``kind``: which job wrote the folder.
SCENE_JOB, REGION_JOB = "scene job", "region job"
#: Every ``kind`` a run.json has held: folders written before both kinds were named say
#: ``region`` for a region job and nothing for a scene job.
_KINDS = {SCENE_JOB: SCENE_JOB, REGION_JOB: REGION_JOB, "region": REGION_JOB, None: SCENE_JOB}


def job_kind(manifest: dict) -> str:
    """``scene job`` or ``region job``: which job wrote the run.json ``manifest``, older folders'
    included. The one reader of ``kind``: InputError for a kind no version has written."""
    kind = manifest.get("kind")
    if not isinstance(kind, str | None) or kind not in _KINDS:
        raise InputError(f"run.json's kind is {kind!r}; expected {SCENE_JOB!r} or {REGION_JOB!r}")
    return _KINDS[kind]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_json_atomic(path: Path | str | Location, data: dict) -> None:
    """A JSON file (local path or URI) that readers see whole or not at all."""
    location(path).write_text(json.dumps(data, indent=2, default=str))


def read_manifest(out_dir: Path | str | Location) -> dict | None:
    """The ``run.json`` in ``out_dir`` as a dict; None where there is none (``out_dir`` a file or
    missing) or it is not a JSON object. InputError where it cannot be read (a folder, no permission)."""
    path = location(out_dir) / "run.json"
    try:
        found = json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (IsADirectoryError, PermissionError) as exc:
        raise InputError(f"{path}: cannot read the run manifest ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None
