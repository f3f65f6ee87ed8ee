"""The scheduler's storage edges, on ``landslide_batch.storage.Location`` (local paths and
object-store URIs alike): checking a catalog or output location early, staging a scene asset
into the staging folder, and ``stac-item --publish`` copying finished outputs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError, InputError
from ..storage import Location, Where, location, storage_errors


def check_location(value: Where, where: str) -> Location:
    """The location ``value`` names, failing early (at config time, not mid-pass) on a scheme
    this project cannot serve or whose package is missing here."""
    try:
        loc = location(value)
        loc.fs  # noqa: B018  (names the package a scheme needs, e.g. s3fs for s3://)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return loc


def fetch(uri: str, dest_dir: Location) -> Location:
    """Copy the asset ``uri`` into ``dest_dir`` once (kept for later passes and resumed jobs):
    one object written whole (a temporary file renamed locally, one PUT on object storage), so a
    copy that exists is complete."""
    src = location(uri)
    dest = dest_dir / Path(urlparse(uri).path).name  # without a signed URL's query
    with storage_errors(dest, "staging"):
        if dest.is_file():
            return dest
    try:
        with tempfile.TemporaryDirectory(prefix="landslide-stage-") as tmp:
            part = Path(tmp) / dest.name
            with storage_errors(src, "scene asset"):
                src.get_file(part)
            dest_dir.makedirs()
            with storage_errors(dest, "staging"):
                dest.put_file(part)
    except (OSError, InputError) as exc:
        raise InputError(f"cannot stage {uri} into {dest_dir}: {exc}") from None
    return dest


def publish(folder: Location, dest: Location, skip: frozenset[str] = frozenset()) -> None:
    """Copy ``folder``'s entries (minus the top-level names in ``skip``) to ``dest``, each one
    replacing what a previous copy left there (server-side when both are on one store)."""
    dest.require_writable("--publish")
    dest.makedirs()
    with storage_errors(dest, "--publish"):
        for name in folder.ls_names():
            if name in skip:
                continue
            target = dest / name
            target.rm()  # a folder copied onto an existing one would nest inside it
            (folder / name).copy_to(target)
