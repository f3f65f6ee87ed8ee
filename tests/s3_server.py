"""A real S3 API on loopback for tests: moto's standalone server as a subprocess, configured
for clients only through the standard ``AWS_*`` variables (as a user would)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout:.0f} s")


def clear_s3_clients() -> None:
    """fsspec caches filesystem instances by their arguments, not by the environment they read:
    drop them so the next one reads the current ``AWS_ENDPOINT_URL``."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def moto_s3(log: Path) -> Iterator[dict[str, str]]:
    """Start ``moto_server`` on a free loopback port; -> the ``AWS_*`` variables that reach it.
    The server is killed (and waited for) on exit, whatever happened."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_until_up(endpoint, proc)
        yield {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def s3_environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` in ``os.environ`` (and no cached S3 client from before) for the block."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    clear_s3_clients()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_s3_clients()


@contextmanager
def s3_bucket(folder: Path, bucket: str) -> Iterator[tuple]:
    """A moto server (its log in ``folder``) with ``bucket`` created, its ``AWS_*`` variables in
    ``os.environ`` for the block; -> (an s3fs filesystem, the variables)."""
    import s3fs

    with moto_s3(folder / "moto.log") as env, s3_environment(env):
        fs = s3fs.S3FileSystem()
        fs.mkdir(bucket)
        yield fs, env
