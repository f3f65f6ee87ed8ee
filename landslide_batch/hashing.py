"""Content hashes for the run manifest and model cards (local paths or object-store URIs)."""

from __future__ import annotations

import hashlib

from .storage import Where, location

_CHUNK = 1 << 20


def sha256_file(path: Where) -> str:
    h = hashlib.sha256()
    with location(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
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
