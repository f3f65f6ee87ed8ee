"""The output folder before anything is written, and a full disk while the job writes.

``check_out_path``: ``out`` must be a folder (new or an earlier job's), not a file, not the
scene, not inside the scene or any Zarr store, not the root, home or a system folder
(``check_out_folder``, region jobs too), and writable (``check_writable``, ``vectorize`` too).
``check_free_space``: the working store and the products must fit in the free space of
``out``'s file system (an uncompressed upper bound, less what an interrupted attempt already
wrote). ``disk_full_is_clear``: running out of space later (ENOSPC from zarr, GDAL or the file
moves) ends in :class:`DiskFullError` (exit code 4) naming the folder; the folder is left as
after any failure, so re-running resumes.

Local paths only: on object storage there is no file system to measure or fill.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..bands import N_BANDS
from ..errors import ConfigError, DiskFullError

#: Bytes per scene pixel a job writes at most, uncompressed: the working scene store (float32
#: per layer + the uint8 valid mask), the output store (probability, uncertainty: float32 each),
#: the COGs (probability and uncertainty float32, mask uint8, overviews a third more) and the
#: uncompressed scratch GeoTIFF one COG is built from.
BYTES_PER_PIXEL = {"scene store": N_BANDS * 4 + 1, "output store": 2 * 4, "products": (4 + 4 + 1) * 4 / 3 + 4}
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray", ".zmetadata")


#: Folders no job writes into: the system's (nor anywhere below them) ...
SYSTEM_TREES = tuple(
    Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr")
)
#: ... and these themselves (a job's ``.work``, lock and products would land among everything else)
SHARED_FOLDERS = tuple(Path(p) for p in ("/", "/home", "/root", "/tmp", "/var", "/opt", "/srv", "/mnt", "/media"))


def check_out_folder(out: Path) -> None:
    """ConfigError when ``out`` (symlinks followed) is the file system's root, the home folder or
    a system folder: ``--overwrite`` and the job's own files must never land there."""
    real = out.resolve()
    home = Path.home().resolve()
    if real in (*SHARED_FOLDERS, home) or any(real == t or real.is_relative_to(t) for t in SYSTEM_TREES):
        what = "your home folder" if real == home else "a system or shared folder"
        raise ConfigError(
            f"--out {out} is {real}, {what}; choose a new folder for the job's outputs (e.g. {home / 'landslide-out'})"
        )


def check_inputs_outside(out: Path, inputs: list[tuple[str, Path]]) -> None:
    """ConfigError when ``out`` (symlinks followed) holds one of the job's inputs, given as
    ``(what it is, path)``: ``--overwrite`` and the job's work folder must never reach what the
    job reads."""
    real = out.resolve()
    for what, path in inputs:
        if real in path.resolve().parents:
            raise ConfigError(
                f"--out {out} contains the {what} {path}; choose an output folder that holds none of the job's inputs"
            )


def check_writable(out: Path) -> None:
    """ConfigError when ``out`` (or, while it does not exist, the folder it would be made in)
    cannot be written: a read-only file system or no permission. Checked before the lock."""
    folder = _existing(out)
    if not os.access(folder, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(folder) else "no write permission"
        raise ConfigError(f"{out}: cannot write in {folder} ({why}); choose a writable folder or fix its permissions")


def _read_only(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def check_out_path(out: Path, scene: Path) -> None:
    """ConfigError when ``out`` cannot be an output folder (checked before anything is written):
    see :func:`check_out_folder`; also a file, the scene, inside the scene or a Zarr store."""
    check_out_folder(out)
    out, scene = out.resolve(), scene.resolve()
    if out == scene:
        raise ConfigError(f"--out {out} is the scene itself; choose a new folder for the outputs")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder (a new one, or an earlier job's output folder)")
    if scene.is_dir() and scene in out.parents:
        raise ConfigError(f"--out {out} lies inside the scene {scene}; choose a folder outside it")
    store = next((p for p in (out, *out.parents) if any((p / m).is_file() for m in ZARR_MARKERS)), None)
    if store is not None:
        raise ConfigError(f"--out {out} lies inside the Zarr store {store}; choose a folder outside it")
    check_writable(out)


def bytes_needed(height: int, width: int) -> dict[str, int]:
    """Upper bound of what a job writes for a ``height`` x ``width`` scene, by part."""
    return {part: int(height * width * b) for part, b in BYTES_PER_PIXEL.items()}


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def check_free_space(out: Path, height: int, width: int) -> None:
    """DiskFullError when the estimate exceeds the free space of ``out``'s file system."""
    parts = bytes_needed(height, width)
    needed = max(0, sum(parts.values()) - _tree_size(out / ".work"))
    free = shutil.disk_usage(_existing(out)).free
    if needed > free:
        detail = ", ".join(f"{part} {_size(n)}" for part, n in parts.items())
        raise DiskFullError(
            f"not enough free space for {out}: this {height}x{width} px job needs up to {_size(needed)} ({detail}; "
            f"uncompressed upper bound) and its file system has {_size(free)} free. Free some space or choose "
            "another --out"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The ENOSPC error in the exception's chain (zarr, shutil), or GDAL's message for it; else None."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if getattr(link, "errno", None) == errno.ENOSPC or "No space left on device" in str(link):
            return link
        link = link.__cause__ or link.__context__
    return None


@contextmanager
def disk_full_is_clear(out: Path) -> Iterator[None]:
    """Turn running out of space under ``out`` into a DiskFullError that says what to do."""
    try:
        yield
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        usage = shutil.disk_usage(_existing(out))
        filename = getattr(cause, "filename", None)
        where = f" while writing {filename}" if filename else ""
        detail = getattr(cause, "strerror", None) or str(cause)
        raise DiskFullError(
            f"the file system of {out} is full{where} ({detail}; {_size(usage.free)} free of {_size(usage.total)}). "
            f"Nothing in {out} looks finished, and finished blocks are kept: free some space and run the same "
            "command again to resume"
        ) from exc
