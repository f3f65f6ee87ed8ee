"""Durability on local disks: what a finished-looking file vouches for survives a power loss.

A rename or a new file is durable only once its directory is synced, and a renamed file's
contents only once the file itself is (``os.replace`` alone orders nothing on disk). Every
local write that marks something finished (a block marker, ``run.json``, a published product)
goes through these two helpers, so the data it vouches for reaches the disk before it does.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_path(path: str | os.PathLike) -> None:
    """``fsync`` a file, or a folder's entries (the names created or renamed in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(path: str | os.PathLike) -> None:
    """``fsync`` a file, or a folder with everything in it (files first, then their folders)."""
    root = Path(path)
    if root.is_dir():
        for folder, _, files in os.walk(root, topdown=False):
            for name in files:
                sync_path(os.path.join(folder, name))
            sync_path(folder)
    else:
        sync_path(root)


def durable_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)`` with ``src``'s contents on disk before the rename and the rename
    on disk after it (both folders synced)."""
    sync_tree(src)
    os.replace(src, dst)
    sync_path(Path(dst).parent)
    if Path(src).parent != Path(dst).parent:
        sync_path(Path(src).parent)
