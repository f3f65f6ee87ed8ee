"""The scheduler's object-store edges: checking a catalog or output URI early, staging a scene
asset from a URI into a local folder, and ``stac-item --publish`` copying finished outputs to
one. Telling paths from URIs is ``landslide_batch.storage``'s."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import fsspec

from ..errors import ConfigError, InputError


def check_uri(uri: str, where: str) -> None:
    """Fail early (at config time, not mid-pass) on a protocol fsspec cannot serve here."""
    protocol = uri.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise ConfigError(
            f"{where}: {uri!r} needs the fsspec driver for {protocol!r}, which is not "
            f"usable here ({exc}); install it, e.g. s3fs for s3://, gcsfs for gs://, "
            "adlfs for az://"
        ) from None


def fetch(uri: str, dest_dir: Path) -> Path:
    """Download ``uri`` into ``dest_dir`` once (kept for later passes and resumed jobs)."""
    dest = dest_dir / Path(urlparse(uri).path).name
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    try:
        with fsspec.open(uri, "rb") as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    except (OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise InputError(f"cannot download {uri}: {exc}") from None
    os.replace(part, dest)
    return dest


def publish(folder: Path, dest: str, skip: frozenset[str] = frozenset()) -> None:
    """Copy ``folder`` (recursively, minus top-level names in ``skip``) to a path or fsspec URI."""
    fs, root = fsspec.core.url_to_fs(dest)
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or rel.parts[0] in skip:
            continue
        target = f"{root.rstrip('/')}/{rel.as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
