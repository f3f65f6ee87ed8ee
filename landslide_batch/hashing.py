"""Content hashes for the run manifest and model cards (local paths or object-store URIs)."""

from __future__ import annotations

import hashlib
import io
from typing import cast

from .storage import Where, location

#: Read size: large, because each read and each update hands the GIL back and forth, and a job
#: hashes its scene beside the models' imports (which hold the GIL most of the time).
_CHUNK = 16 << 20


def sha256_file(path: Where) -> str:
    h = hashlib.sha256()
    buf = memoryview(bytearray(_CHUNK))
    with location(path).open("rb") as f:
        reader = cast(io.BufferedIOBase, f)  # a local file or fsspec's: both read into a buffer
        while n := reader.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def sha256_tree(path: Where) -> str:
    """Hash of a file, or of a folder's files (relative names and contents, sorted)."""
    where = location(path)
    if where.is_file():
        return sha256_file(where.uri)
    h = hashlib.sha256()
    if where.is_local:
        files = sorted(str(p.relative_to(where.path)) for p in where.path.rglob("*") if p.is_file())
    else:
        root = where.fs_path.rstrip("/") + "/"
        files = sorted(p[len(root) :] for p in where.fs.find(where.fs_path))
    for rel in files:
        h.update(rel.encode())
        h.update(sha256_file(where.join(rel).uri).encode())
    return h.hexdigest()
