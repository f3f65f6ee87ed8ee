"""Containment: a path named by a file (a manifest's ``outputs``, a sources list, a symlink) is
used only when, resolved, it lies strictly inside the folder it belongs to.

A copied, downloaded or edited ``run.json`` may name ``/home/me`` or ``../victim.gpkg``; removing
or replacing what it names must never reach outside the job's folder. Locally the check follows
symlinks (``Path.resolve``); on object storage a key is normalised (``..`` folded) and must stay
under the prefix.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from ..errors import InputError
from .location import Location, Where, is_uri, location


def lies_inside(root: Path, path: Path) -> bool:
    """Whether ``path``, symlinks followed, lies strictly inside ``root`` (not ``root`` itself)."""
    real_root, real = root.resolve(), path.resolve()
    return real != real_root and real.is_relative_to(real_root)


def contained(root: Where, name: object, what: str) -> Location:
    """``root / name`` where ``name`` (read from a file: ``what`` says which) stays strictly inside
    ``root``; InputError (exit 2) otherwise, before anything is read, moved or removed."""
    root = location(root)
    text = name if isinstance(name, str) else None
    if text is None or not text.strip() or is_uri(text) or "\0" in text:
        raise InputError(f"{what}: expected a file name inside {root}, found {name!r}")
    if root.is_local:
        key = text
        inside = not Path(text).is_absolute() and lies_inside(root.path, root.path / text)
    else:  # keys are not folders: ``a/../b`` names ``b``
        key = posixpath.normpath(text)
        inside = not text.startswith("/") and key not in (".", "..") and not key.startswith("../")
    if not inside:
        raise InputError(
            f"{what}: {text!r} lies outside {root}; refusing to read, replace or remove it "
            f"(the file was copied, moved or edited?). Only names inside the folder are used"
        )
    return root / key
