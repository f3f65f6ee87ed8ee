"""Verified, resumable HTTP downloads (model checkpoints, datasets), with a progress bar.

Bytes go to ``NAME.partial`` next to the target; an interrupted transfer continues from
there with an HTTP ``Range`` request (on a later call, or at once when the connection
drops part-way). The file is checked against the expected digests and only then renamed
to its final name, so a file under its final name is always complete and verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "landslide-batch"


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def download(
    url: str,
    dest: str | Path,
    *,
    checksums: dict[str, str] | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` into ``dest``; -> ``dest``. ``checksums``: ``{"sha256"|"md5": hex}``, all verified.

    An existing ``dest`` that matches the checksums is kept (nothing is fetched). A dropped
    connection is resumed up to ``retries`` times; the ``.partial`` file stays for a later call
    when they run out. Raises DownloadError naming the URL and what went wrong.
    """
    dest = Path(dest)
    checksums = {k.lower(): v.lower() for k, v in (checksums or {}).items() if v}
    if unknown := set(checksums) - set(hashlib.algorithms_available):
        raise DownloadError(f"unknown checksum algorithm(s) {sorted(unknown)} for {url}")
    if dest.is_file() and checksums and _mismatches(dest, checksums) == []:
        log.info("%s is already complete and verified", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest)
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, progress, timeout)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise DownloadError(
                    f"{url}: transfer interrupted {retries + 1} time(s) ({exc}); "
                    f"{part.stat().st_size} bytes kept in {part}, run again to resume"
                ) from None
            log.warning("%s: connection lost after %d bytes (%s); resuming", url, part.stat().st_size, exc)
    if bad := _mismatches(part, checksums):
        part.unlink()
        raise DownloadError(
            f"{url}: checksum mismatch, "
            + "; ".join(f"{alg} expected {want}, got {got}" for alg, want, got in bad)
            + "; the download was deleted"
        )
    os.replace(part, dest)
    return dest


class _Interrupted(Exception):
    """The connection dropped mid-transfer: worth resuming."""


def _mismatches(path: Path, checksums: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(alg, want, got) for alg, want in checksums.items() if (got := file_digest(path, alg)) != want]


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left after offset: the partial file is complete
            return None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {url} ({reason}); check the network (offline?) or use a mirror (--base-url) or a local file"
        ) from None


def read_json(url: str, timeout: float = 60.0) -> dict:
    """A small JSON document (a record's file listing), with the same clear errors as downloads."""
    import json

    resp = _open(url, 0, timeout)
    with resp:
        body = resp.read()
    try:
        data = json.loads(body)
    except ValueError:
        raise DownloadError(f"{url}: not JSON (first bytes: {body[:60]!r})") from None
    if not isinstance(data, dict):
        raise DownloadError(f"{url}: expected a JSON object, found {type(data).__name__}")
    return data


def _fetch_into(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Append what the server has beyond ``part``'s size (or restart it when Range is ignored)."""
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, timeout)
    if resp is None:
        return
    with resp:
        if offset and resp.status != 206:  # the server ignored Range: start again
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        done = offset
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                desc=part.name.removesuffix(".partial"),
                disable=not progress,
                mininterval=0.2,
            ) as bar,
        ):
            try:
                while block := resp.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
            except (TimeoutError, http.client.IncompleteRead, ConnectionError) as exc:
                raise _Interrupted(f"{type(exc).__name__}") from None
    if total is not None and done < total:
        raise _Interrupted(f"got {done} of {total} bytes")
