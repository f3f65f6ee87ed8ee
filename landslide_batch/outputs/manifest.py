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
