"""A job's locations as a remote cluster sees them: refuse paths of this machine, or upload them.

A cluster without a shared disk cannot read the submitter's files, and a path of this machine
means nothing (or something else) on its nodes. So a submitted job names URIs only: every
local path in it is refused, each one named, unless ``--upload-to URI`` first copies the
inputs to cluster storage. Uploads are content-addressed, ``URI/sha256/<hash>/<name>`` (a
folder: hashed over its files' names and contents, its layout kept below ``<name>/``), so a
second submission of the same inputs uploads nothing, and an interrupted upload continues
where it stopped (each object is one atomic PUT: one that exists is complete).
"""

from __future__ import annotations

import copy
import glob
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import load_ensemble
from ..errors import ConfigError
from ..hashing import sha256_file, sha256_tree
from ..ingest.inputs import looks_like_path
from ..storage import Location, is_uri, location, storage_errors

INPUT_FILE_KEYS = ("dem", "slope", "scl", "aoi")  # file-valued keys of a job's ``inputs:``
#: Where a location sits in a job spec: ``("scene",)``, ``("models", 1)``, ``("inputs", "bands", "B2")``.
Key = tuple[str | int, ...]


@dataclass
class UploadReport:
    """What an upload did: files sent, files already there (same content address), bytes sent."""

    uploaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    bytes: int = 0

    def summary(self) -> str:
        return (
            f"uploaded {len(self.uploaded)} file(s), {self.bytes / 2**20:.1f} MiB; "
            f"{len(self.reused)} already on cluster storage"
        )


def job_paths(spec: dict[str, Any]) -> Iterator[tuple[Key, str]]:
    """``(key, value)`` of every location in a job spec (JSON form): scene(s), pre-event scenes,
    AOI, out, ensemble, models, and the file-valued ``inputs``."""
    for key in ("scene", "aoi", "out", "ensemble"):
        if spec.get(key) is not None:
            yield (key,), str(spec[key])
    for name in ("scenes", "pre_scenes", "models"):
        for i, value in enumerate(spec.get(name) or []):
            yield (name, i), str(value)
    inputs = spec.get("inputs") or {}
    for key in INPUT_FILE_KEYS:
        if isinstance(inputs.get(key), list):  # DEM tiles
            yield from ((("inputs", key, i), str(v)) for i, v in enumerate(inputs[key]) if looks_like_path(v))
        elif inputs.get(key) is not None and looks_like_path(inputs[key]):
            yield ("inputs", key), str(inputs[key])
    for layer, value in (inputs.get("bands") or {}).items():
        if looks_like_path(value):
            yield ("inputs", "bands", layer), str(value)


def label(key: Key) -> str:
    """A key as a user writes it in a job YAML: ``scene``, ``models[1]``, ``inputs.bands.B2``."""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")


def local_paths(spec: dict[str, Any]) -> list[tuple[Key, str]]:
    """The ``job_paths`` that are paths (not URIs)."""
    return [(key, value) for key, value in job_paths(spec) if not is_uri(value)]


def refuse_local_paths(spec: dict[str, Any], where: str) -> None:
    """ConfigError naming each local path of a job bound for a cluster without a shared disk."""
    if not (found := local_paths(spec)):
        return
    lines = [
        f"  {label(key)}: {value}" + ("" if Path(value).exists() else " (not on this machine either)")
        for key, value in found
    ]
    raise ConfigError(
        f"{where}: the cluster's nodes cannot read paths of this machine, and the job names "
        f"{len(found)}:\n" + "\n".join(lines) + "\nName object-store URIs instead (s3://, gs://, "
        "az://), or pass --upload-to URI to upload the inputs first (out must then be a URI the "
        "cluster writes to), or --shared-fs if every node mounts these paths at the same place"
    )


def upload_inputs(spec: dict[str, Any], dest: str, where: str) -> tuple[dict[str, Any], UploadReport]:
    """Upload the job's local inputs under ``dest`` (content-addressed); -> the spec naming
    their URIs, and what was sent. ``out`` must already be a URI: a map is written by the
    cluster, not uploaded."""
    root = location(dest)
    root.require_writable("--upload-to")
    if not is_uri(str(spec["out"])):
        raise ConfigError(
            f"{where}: out {spec['out']} is a path of this machine; with --upload-to, out must be "
            f"a URI the cluster writes to (e.g. {str(root).rstrip('/')}/maps/<job>)"
        )
    spec = copy.deepcopy(spec)
    if spec.get("scenes"):
        spec["scenes"] = [m for s in spec["scenes"] for m in _expand_local_glob(s, where)]
    if missing := [(k, v) for k, v in local_paths(spec) if not Path(v).exists()]:
        raise ConfigError(
            f"{where}: cannot upload what does not exist on this machine: "
            + ", ".join(f"{label(k)} {v}" for k, v in missing)
        )
    if stac := [(k, v) for k, v in local_paths(spec) if k[0] in ("scene", "scenes") and v.endswith(".json")]:
        raise ConfigError(
            f"{where}: {', '.join(f'{label(k)} {v}' for k, v in stac)}: a STAC item or collection "
            "names its assets by links, which an upload of the JSON alone would break; put the "
            "assets on object storage and name the item there, or name the scene's files"
        )
    report = UploadReport()
    with storage_errors(root, "--upload-to"):
        for key, value in local_paths(spec):
            uri = (
                _upload_ensemble(Path(value), root, report)
                if key == ("ensemble",)
                else _upload(Path(value), root, report)
            )
            _set(spec, key, uri)
    return spec, report


def _expand_local_glob(value: str, where: str) -> list[str]:
    """A local glob of ``scenes`` -> its files (each is uploaded); anything else as it is."""
    if is_uri(value) or not glob.has_magic(value):
        return [value]
    if not (found := sorted(glob.glob(value))):
        raise ConfigError(f"{where}: scenes {value!r} matches no file on this machine")
    return found


def _set(spec: dict[str, Any], key: Key, value: str) -> None:
    container: Any = spec
    for k in key[:-1]:
        container = container[k]
    container[key[-1]] = value


def _upload(path: Path, root: Location, report: UploadReport) -> str:
    """One file or folder -> ``root/sha256/<hash>/<name>``; files already there are not sent again."""
    target = root / "sha256" / (sha256_tree(path) if path.is_dir() else sha256_file(path)) / path.name
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        dest = target / f.relative_to(path).as_posix() if path.is_dir() else target
        if dest.exists():
            report.reused.append(str(dest))
            continue
        dest.put_file(f)
        report.uploaded.append(str(dest))
        report.bytes += f.stat().st_size
    return str(target)


def _upload_ensemble(path: Path, root: Location, report: UploadReport) -> str:
    """An ensemble YAML: its local member folders uploaded, then the YAML rewritten to name
    their URIs (weights and threshold kept) and uploaded itself."""
    ensemble = load_ensemble(path)
    members = [
        {"model": str(m.model) if is_uri(str(m.model)) else _upload(Path(m.model), root, report), "weight": m.weight}
        for m in ensemble.members
    ]
    text = yaml.safe_dump({"members": members, "threshold": ensemble.threshold}, sort_keys=False)
    with tempfile.TemporaryDirectory(prefix="landslide-upload-") as tmp:
        rewritten = Path(tmp) / path.name
        rewritten.write_text(text)
        return _upload(rewritten, root, report)


def cluster_locations(
    spec: dict[str, Any], where: str, *, upload_to: str | None = None, shared_fs: bool = False
) -> tuple[dict[str, Any], UploadReport | None]:
    """The spec a cluster may receive: as is with ``shared_fs`` (every node mounts the job's
    paths at the same place), its local inputs uploaded with ``upload_to``, else refused while
    it names any path of this machine."""
    if shared_fs and upload_to:
        raise ConfigError("--shared-fs (paths as they are) and --upload-to (paths replaced by URIs) exclude each other")
    if shared_fs:
        return spec, None
    if upload_to:
        return upload_inputs(spec, upload_to, where)
    refuse_local_paths(spec, where)
    return spec, None
