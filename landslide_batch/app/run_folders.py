"""Finished job runs the page offers: found under the runs folder the server was started with,
their manifests read and summarised as rows, their files listed for download. The run's map is
``runs_view``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage.contained import lies_inside
from . import RUNS_ENV

RUN_FILE = "run.json"


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV, "."))


@dataclass
class RunFile:
    label: str
    path: Path

    @property
    def size_label(self) -> str:
        size, units = float(self.path.stat().st_size), ["B", "KB", "MB", "GB"]
        while size >= 1000 and len(units) > 1:
            size, units = size / 1000, units[1:]
        return f"{size:.0f} B" if units[0] == "B" else f"{size:.1f} {units[0]}"


def find_runs(root: Path) -> list[Path]:
    """Job output folders (holding ``run.json``): ``root`` itself and its sub-folders. A run folder
    or ``run.json`` symlinked out of ``root`` is not offered: the page serves nothing outside it."""
    manifests = [root / RUN_FILE, *root.glob(f"*/{RUN_FILE}")]
    return sorted(p.parent for p in manifests if p.is_file() and lies_inside(root, p))


def run_label(root: Path, folder: Path) -> str:
    """A run as the page names it: its path under the runs folder, never the server's full path."""
    rel = folder.relative_to(root).as_posix()
    return root.resolve().name if rel == "." else rel


def read_run(folder: Path) -> dict[str, Any]:
    path = folder / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the run manifest: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: run manifest is not valid JSON ({exc})") from None
    if not isinstance(run, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(run).__name__}")
    return run


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}" if abs(value) < 100 else f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def run_headline(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The four numbers a map's reader wants first."""
    s = run.get("summary") or {}
    return [
        ("Landslide area", fmt(s.get("landslide_area_km2"), " km²")),
        ("Objects", fmt(s.get("objects"))),
        ("Area mapped", fmt(s.get("area_mapped_km2"), " km²")),
        ("Threshold", fmt(s.get("threshold"))),
    ]


def run_details(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) rows: provenance, work done and time taken."""
    scene = (run.get("inputs") or {}).get("scene") or {}
    t, tiles, blocks = run.get("timings") or {}, run.get("tiles") or {}, run.get("blocks") or {}
    return [
        ("Status", fmt(run.get("status"))),
        ("Job hash", fmt(run.get("job_hash"))),
        ("Started", fmt(run.get("started"))),
        ("Finished", fmt(run.get("finished"))),
        ("Scene", fmt(scene.get("path"))),
        ("Scene sha256", fmt(scene.get("sha256"))),
        ("Tiles", f"grid {fmt(tiles.get('grid'))}, forward passes {fmt(tiles.get('forward_passes'))}"),
        (
            "Blocks",
            ", ".join(
                f"{k.replace('_', ' ')} {fmt(blocks.get(k))}"
                for k in ("total", "computed", "skipped_nodata", "resumed")
            ),
        ),
        (
            "Timings",
            ", ".join(f"{k[:-2]} {fmt(t.get(k), ' s')}" for k in ("ingest_s", "infer_s", "finish_s", "total_s")),
        ),
    ]


def run_models(run: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {
            "name": fmt(m.get("name")),
            "arch": fmt(m.get("arch")),
            "encoder": fmt(m.get("encoder")),
            "weight": fmt(m.get("weight")),
            "trained": "yes" if m.get("trained") else "UNTRAINED",
            "path": fmt(m.get("path")),
        }
        for m in run.get("models") or []
    ]


def run_files(folder: Path, run: dict[str, Any]) -> tuple[list[RunFile], list[RunFile]]:
    """-> (files to download, folders such as the Zarr store that cannot be one download).

    Only paths inside ``folder`` are offered, whatever the manifest says.
    """
    root = folder.resolve()
    files = [RunFile("manifest", folder / RUN_FILE)]
    folders: list[RunFile] = []
    for label, rel in (run.get("outputs") or {}).items():
        path = (folder / str(rel)).resolve()
        if not path.is_relative_to(root) or not path.exists():
            continue
        (folders if path.is_dir() else files).append(RunFile(label, path))
    return files, folders
