"""``fetch-data l4s``: download Landslide4Sense from its public record and lay it out as the project reads it.

File names and URLs come from one YAML file (``data/l4s_sources.yaml``, or the user's
``--sources``); checksums from the public record itself (its REST API, ``record_api``), read at
fetch time, unless the sources file pins them. Archives are downloaded with ``download.download`` (resumable, verified)
into ``OUT/downloads/``; each is unpacked into ``OUT/<split>/img/image_N.h5`` (+ ``mask/mask_N.h5``
where the archive has masks), built beside the target and renamed into place when complete.
Member paths inside the archive are never used as output paths: only ``image_N.h5`` /
``mask_N.h5`` under an ``img``/``images`` or ``mask``/``masks`` folder are taken.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from functools import partial
from importlib.resources import files as package_files
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import Field, ValidationError, field_validator

from .download import download, file_digest
from .errors import ConfigError, InputError
from .schema import StrictModel

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "fetch.json"
_MEMBER = re.compile(r"(?:^|/)(img|images|mask|masks)/((image|mask)_\d+\.h5)$")


class SourceFile(StrictModel):
    name: str
    split: str = Field(pattern="^(train|val|test)$")
    md5: str | None = None
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        """The archive is saved as ``OUT/downloads/<name>``: a folder part or ``..`` would leave it."""
        if not v or v in (".", "..") or "/" in v or "\\" in v or "\0" in v:
            raise ValueError(f"archive name {v!r} should be a plain file name (no folder, no '..')")
        return v

    @property
    def checksums(self) -> dict[str, str]:
        return {k: v for k, v in (("md5", self.md5), ("sha256", self.sha256)) if v}


class Sources(StrictModel):
    dataset: str
    record: str = ""
    record_api: str = ""  # JSON of the record listing its files with checksums (Zenodo's REST API)
    base_url: str
    url_suffix: str = ""
    files: list[SourceFile] = Field(min_length=1)

    def url(self, f: SourceFile, base_url: str | None = None) -> str:
        """A mirror (``base_url``) holds the same names without the record's URL suffix."""
        if base_url:
            return f"{base_url.rstrip('/')}/{f.name}"
        return f"{self.base_url.rstrip('/')}/{f.name}{self.url_suffix}"


def load_sources(path: str | Path | None = None) -> Sources:
    """The user's sources file, or the one shipped with the package."""
    where = str(path or "landslide_batch/data/l4s_sources.yaml")
    try:
        text = (
            Path(path).read_text()
            if path
            else (package_files("landslide_batch") / "data" / "l4s_sources.yaml").read_text()
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the sources file ({exc})") from None
    try:
        return Sources.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"{where}: not a valid sources file: {exc}") from None


def with_record_checksums(sources: Sources, timeout: float = 60.0) -> Sources:
    """Fill each file's missing checksum from the record's own listing (``record_api``: Zenodo's
    ``{"files": [{"key": name, "checksum": "md5:..."}]}``). A file the record does not list, or a
    pinned checksum the record contradicts, is an error: the sources file no longer fits the record."""
    if not sources.record_api:
        return sources
    from .download import read_json

    listed = {f.get("key"): f.get("checksum", "") for f in read_json(sources.record_api, timeout).get("files", [])}
    files = []
    for f in sources.files:
        if f.name not in listed:
            raise ConfigError(
                f"{sources.record_api} does not list {f.name} (it lists {sorted(map(str, listed))}); "
                "the sources file does not fit the record"
            )
        algo, _, digest = listed[f.name].partition(":")
        if algo not in ("md5", "sha256") or not digest:
            files.append(f)
            continue
        pinned = getattr(f, algo)
        if pinned and pinned.lower() != digest.lower():
            raise ConfigError(f"{f.name}: the sources file pins {algo} {pinned}, the record says {digest}")
        files.append(f.model_copy(update={algo: digest.lower()}))
    return sources.model_copy(update={"files": files})


def archive_members(archive: Path) -> Iterator[tuple[str, str, Callable[[], IO[bytes]]]]:
    """(kind 'img'|'mask', file name, reader) for each patch file in a zip or tar archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if (m := _MEMBER.search(info.filename)) and not info.is_dir():
                    yield m.group(3).replace("image", "img"), m.group(2), partial(z.open, info)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for member in t:
                if (m := _MEMBER.search(member.name)) and member.isfile():
                    yield m.group(3).replace("image", "img"), m.group(2), partial(_extract_file, t, member)
        return
    raise InputError(f"{archive}: not a zip or tar archive")


def unpack_split(archive: Path, target: Path) -> dict[str, int]:
    """Unpack ``archive``'s patches into ``target`` (img/ + mask/), atomically; -> counts."""
    building = target.with_name(f".{target.name}.partial")
    shutil.rmtree(building, ignore_errors=True)
    counts = {"img": 0, "mask": 0}
    try:
        for kind, name, open_member in archive_members(archive):
            (building / kind).mkdir(parents=True, exist_ok=True)
            with open_member() as src, open(building / kind / name, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            counts[kind] += 1
        _check_layout(archive, building, counts)
        if target.exists():
            shutil.rmtree(target)
        os.replace(building, target)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise InputError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return counts


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    """A regular member's contents (``extractfile`` gives None only for links and folders)."""
    f = tar.extractfile(member)
    if f is None:
        raise InputError(f"archive member {member.name} is not a regular file")
    return f


def _check_layout(archive: Path, folder: Path, counts: dict[str, int]) -> None:
    if not counts["img"]:
        raise InputError(f"{archive}: no image_N.h5 under an img/ folder; not a Landslide4Sense archive")
    if counts["mask"]:
        numbers = {
            kind: {int(p.stem.rpartition("_")[2]) for p in (folder / kind).iterdir()}  # image_N.h5, mask_N.h5
            for kind in ("img", "mask")
        }
        if numbers["img"] != numbers["mask"]:
            odd = sorted(numbers["img"] ^ numbers["mask"])[:5]
            raise InputError(f"{archive}: images and masks do not pair up (e.g. number(s) {odd})")


def fetch_l4s(
    out: str | Path,
    *,
    sources: Sources | None = None,
    base_url: str | None = None,
    splits: tuple[str, ...] = SPLITS,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Download and unpack the requested splits into ``out``; -> the manifest written to ``out/fetch.json``."""
    out = Path(out)
    sources = with_record_checksums(sources or load_sources())
    chosen = [f for f in sources.files if f.split in splits]
    if not chosen:
        raise ConfigError(f"the sources file has no file for split(s) {list(splits)}")
    manifest: dict[str, Any] = {"dataset": sources.dataset, "record": sources.record, "files": []}
    if (out / MANIFEST).is_file():  # a rerun adds to what earlier runs fetched
        manifest["files"] = json.loads((out / MANIFEST).read_text()).get("files", [])
    for f in chosen:
        target = out / f.split
        if target.exists() and not overwrite:
            log.info("%s exists; skipping %s (--overwrite to fetch it again)", target, f.name)
            continue
        url = sources.url(f, base_url)
        if not f.checksums:
            log.warning(
                "%s has no checksum in the sources file or the record: downloaded unverified (its digests go to %s)",
                f.name,
                out / MANIFEST,
            )
        archive = download(url, out / "downloads" / f.name, checksums=f.checksums, progress=progress)
        counts = unpack_split(archive, target)
        manifest["files"] = [m for m in manifest["files"] if m["split"] != f.split]
        manifest["files"].append(
            {
                "name": f.name,
                "url": url,
                "split": f.split,
                "verified": bool(f.checksums),
                "sha256": file_digest(archive, "sha256"),
                "md5": file_digest(archive, "md5"),
                "images": counts["img"],
                "masks": counts["mask"],
            }
        )
    if manifest["files"]:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
