"""``Location``: one local path or object-store URI, with the few operations a job needs."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import unquote, urlparse

from ..errors import ConfigError, InputError
from .durable import durable_replace, sync_path

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: scheme -> (fsspec protocol, package that provides it, GDAL virtual file system prefix)
SCHEMES = {
    "s3": ("s3", "s3fs", "/vsis3/"),
    "gs": ("gs", "gcsfs", "/vsigs/"),
    "gcs": ("gs", "gcsfs", "/vsigs/"),
    "az": ("az", "adlfs", "/vsiaz/"),
    "abfs": ("abfs", "adlfs", "/vsiaz/"),
    "abfss": ("abfs", "adlfs", "/vsiaz/"),
    "http": ("http", "aiohttp", "/vsicurl/"),
    "https": ("https", "aiohttp", "/vsicurl/"),
}
READ_ONLY = frozenset({"http", "https"})


def is_uri(value: Where) -> bool:
    """True for a remote URI (``s3://``, ``gs://``, ``az://``, ``abfs://``, ``http(s)://``); ``file://`` is local."""
    m = _SCHEME.match(str(value))
    return m is not None and m.group(1).lower() != "file"


def path_or_uri(value: Where) -> Path | str:
    """A config value: a ``Path`` for a local path or ``file://`` URL, else the URI string.

    Refuses schemes this project cannot serve, naming the supported ones."""
    if isinstance(value, Path):
        return value
    text = str(value)
    m = _SCHEME.match(text)
    if not m:
        return Path(text)
    scheme = m.group(1).lower()
    if scheme == "file":
        return Path(unquote(urlparse(text).path))
    if scheme not in SCHEMES:
        raise ValueError(
            f"{text!r}: unsupported scheme {scheme!r}; use a local path, file://, s3://, gs://, "
            "az://, abfs:// or http(s):// (read-only)"
        )
    return scheme + text[len(scheme) :]


def location(value: Where, base: str | os.PathLike[str] | None = None) -> Location:
    """Parse a path or URI; a relative local path is taken relative to ``base`` (default: the cwd)."""
    if isinstance(value, Location):
        return value
    v = path_or_uri(value)
    if isinstance(v, str):
        return Location(v)
    p = v.expanduser()
    if not p.is_absolute():
        p = (Path(base) if base is not None else Path.cwd()) / p
    return Location(os.path.normpath(p))


@dataclass(frozen=True)
class Location:
    """A local path (``uri`` is the absolute path) or a remote URI (``scheme://bucket/key``)."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    def __reduce__(self):  # the cached filesystem does not travel: rebuilt where it is used
        return (Location, (self.uri,))

    # ----------------------------------------------------------------- naming
    @property
    def scheme(self) -> str:
        m = _SCHEME.match(self.uri)
        return m.group(1).lower() if m else "file"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def is_remote(self) -> bool:
        return not self.is_local

    @property
    def writable(self) -> bool:
        return self.scheme not in READ_ONLY

    @property
    def path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    @property
    def name(self) -> str:
        return PurePosixPath(self._key).name if self.is_remote else self.path.name

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(str(self.path.parent))
        head, _, _ = self.uri.rstrip("/").rpartition("/")
        return Location(head)

    def join(self, *parts: str) -> Location:
        if self.is_local:
            return Location(str(self.path.joinpath(*parts)))
        return Location("/".join([self.uri.rstrip("/"), *(p.strip("/") for p in parts)]))

    def resolve(self, href: str) -> str:
        """``href`` as a file in this folder gives it (a STAC asset's): a URI or an absolute local
        path as it is, a relative one joined to this folder."""
        if not href or is_uri(href) or Path(href).is_absolute():
            return href
        return self.join(href).uri

    @property
    def bucket(self) -> Location | None:
        """The bucket / container of an object-store location (None for local paths and http(s))."""
        if self.is_local or self.scheme in READ_ONLY:
            return None
        return Location(f"{self.scheme}://{self._key.split('/', 1)[0]}")

    @property
    def _key(self) -> str:
        return self.uri.split("://", 1)[1]

    # ----------------------------------------------------------------- fsspec
    @cached_property
    def fs(self):
        """The fsspec filesystem (credentials from the standard environment variables)."""
        import fsspec

        if self.is_local:
            return fsspec.filesystem("file")
        protocol, package, _ = SCHEMES[self.scheme]
        try:
            return fsspec.filesystem(protocol)
        except ImportError:
            raise ConfigError(
                f"{self.uri}: {self.scheme}:// locations need the Python package {package!r}; "
                f"install it (pip install {package})"
            ) from None

    @property
    def fs_path(self) -> str:
        if self.is_local:
            return self.uri
        return self.uri if self.scheme in READ_ONLY else self._key.rstrip("/")

    def _info(self) -> dict | None:
        """The store's entry, None when absent; other errors (credentials, access, endpoint)
        propagate (fsspec's ``isfile`` / ``isdir`` would answer False to them)."""
        try:
            return self.fs.info(self.fs_path)
        except FileNotFoundError:
            return None

    def exists(self) -> bool:
        return self.path.exists() if self.is_local else self._info() is not None

    def is_file(self) -> bool:
        if self.is_local:
            return self.path.is_file()
        info = self._info()
        return info is not None and info["type"] == "file"

    def is_dir(self) -> bool:
        if self.is_local:
            return self.path.is_dir()
        info = self._info()
        return info is not None and info["type"] == "directory"

    def ls_names(self) -> list[str]:
        """Names of the entries directly under this folder / prefix ([] when there is none)."""
        if self.is_local:
            return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        try:
            return sorted(PurePosixPath(p).name for p in self.fs.ls(self.fs_path, detail=False, refresh=True))
        except FileNotFoundError:
            return []

    def open(self, mode: str = "rb") -> IO:
        return open(self.path, mode) if self.is_local else self.fs.open(self.fs_path, mode)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes() if self.is_local else self.fs.cat_file(self.fs_path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    # ----------------------------------------------------------------- writes
    def require_writable(self, what: str) -> None:
        if not self.writable:
            raise ConfigError(
                f"{what} {self.uri}: {self.scheme}:// locations are read-only; "
                "write to a local path or an object store (s3://, gs://, az://)"
            )

    def makedirs(self) -> None:
        if self.is_local:
            self.path.mkdir(parents=True, exist_ok=True)

    def write_bytes(self, data: bytes) -> None:
        """Whole-object write that readers never see half-done: a temporary file synced and
        renamed into place locally (durable once this returns); one PUT on object stores (a PUT
        is atomic per object)."""
        self.require_writable("destination")
        if self.is_remote:
            self.fs.pipe_file(self.fs_path, data)
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(data)
        durable_replace(tmp, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def touch(self) -> None:
        """An empty file / object (a marker): nothing partial to hide, so written in place; its
        folder is synced, so locally the marker is on disk once this returns."""
        self.require_writable("destination")
        if self.is_local:
            self.path.touch()
            sync_path(self.path.parent)
        else:
            self.fs.pipe_file(self.fs_path, b"")

    def create_exclusive(self, data: bytes) -> bool:
        """Create this object only if it does not exist; False when it does. Object stores:
        a conditional PUT (``If-None-Match: *``)."""
        self.require_writable("destination")
        if self.is_local:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        try:
            self.fs.pipe_file(self.fs_path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def put_file(self, local: str | os.PathLike) -> None:
        """Upload one local file here (locally: copied to a temporary name and renamed)."""
        self.require_writable("destination")
        if self.is_remote:
            self.fs.put_file(str(local), self.fs_path)
            return
        self.parent.makedirs()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        shutil.copyfile(local, tmp)
        durable_replace(tmp, self.path)

    def get_file(self, local: str | os.PathLike) -> None:
        if self.is_local:
            shutil.copyfile(self.path, local)
        else:
            self.fs.get_file(self.fs_path, str(local))

    def copy_to(self, dest: Location) -> None:
        """Copy a file or a folder / prefix (recursively) to ``dest``: server-side on one store."""
        dest.require_writable("destination")
        if self.is_local and dest.is_local:
            if self.path.is_dir():
                shutil.copytree(self.path, dest.path, dirs_exist_ok=True)
            else:
                shutil.copyfile(self.path, dest.path)
        elif self.scheme == dest.scheme:
            self.fs.copy(self.fs_path, dest.fs_path, recursive=self.is_dir())
        elif self.is_local:
            dest.fs.put(self.uri, dest.fs_path, recursive=self.path.is_dir())
        elif dest.is_local:
            self.fs.get(self.fs_path, dest.uri, recursive=self.is_dir())
        else:
            with tempfile.TemporaryDirectory() as tmp:
                staged = Location(os.path.join(tmp, self.name))
                self.copy_to(staged)
                staged.copy_to(dest)

    def move_to(self, dest: Location) -> None:
        """Rename locally (``os.replace``, contents and rename synced to disk); on object stores
        (no rename) copy, then remove the source."""
        if self.is_local and dest.is_local:
            durable_replace(self.path, dest.path)
            return
        self.copy_to(dest)
        self.rm()

    def rm(self, recursive: bool = True) -> None:
        """Remove this file or folder / prefix; nothing when it does not exist."""
        if self.is_local:
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path) if recursive else self.path.rmdir()
            else:
                self.path.unlink(missing_ok=True)
            return
        try:
            self.fs.rm(self.fs_path, recursive=recursive)
        except FileNotFoundError:
            pass

    # ----------------------------------------------------------------- zarr, GDAL
    def zarr_store(self, read_only: bool = False):
        """A Zarr 3 store here: ``LocalStore`` for a path, ``FsspecStore`` for a URI."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        self.fs  # noqa: B018  (names the missing package, if any)
        return FsspecStore.from_url(self.uri, read_only=read_only)

    def gdal_path(self) -> str:
        """What GDAL opens: the local path, or the URI under GDAL's virtual file system."""
        if self.is_local:
            return self.uri
        prefix = SCHEMES[self.scheme][2]
        return prefix + (self.uri if self.scheme in READ_ONLY else self._key)


#: Anything :func:`location` parses: a local path, a URI string or a ``Location``.
Where = str | os.PathLike[str] | Location


_NO_CREDENTIALS = "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
_CAUSES = (  # (substring of the exception's class name or message, cause shown to the user)
    ("nosuchbucket", "the bucket does not exist"),
    ("specified bucket does not exist", "the bucket does not exist"),
    ("nocredentials", _NO_CREDENTIALS),
    ("unable to locate credentials", _NO_CREDENTIALS),
    ("invalidaccesskeyid", "the access key is not known to the store (AWS_ACCESS_KEY_ID)"),
    ("signaturedoesnotmatch", "the secret key does not match the access key (AWS_SECRET_ACCESS_KEY)"),
    ("accessdenied", "access denied: the credentials lack permission for it"),
    ("endpointconnection", "cannot connect to the endpoint"),
    ("connecttimeout", "cannot connect to the endpoint (timed out)"),
    ("could not connect", "cannot connect to the endpoint"),
)


def describe_error(exc: BaseException) -> str:
    """A short cause for a storage exception (what the user can act on), else its own text."""
    text = f"{type(exc).__name__} {exc}".lower()
    for needle, cause in _CAUSES:
        if needle in text.replace(" ", "") or needle in text:
            return f"{cause} ({type(exc).__name__}: {exc})"
    if isinstance(exc, PermissionError):
        return f"access denied ({exc})"
    if isinstance(exc, FileNotFoundError):
        return f"does not exist ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _is_storage_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.startswith(
        ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "azure", "google")
    )


@contextmanager
def storage_errors(where: Where, what: str) -> Iterator[None]:
    """Turn the store's exceptions inside the block into an ``InputError`` naming ``what``, the
    URI and the cause; other exceptions pass unchanged."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        if not _is_storage_error(exc):
            raise
        raise InputError(f"{what} {where}: {describe_error(exc)}") from exc


def require_exists(where: Where, what: str) -> None:
    """Raise ``InputError`` unless ``where`` exists, naming the cause: a missing bucket /
    container, a missing object, or the store's own error (credentials, access, endpoint)."""
    where = location(where)
    with storage_errors(where, what):
        if where.exists():
            return
        bucket = where.bucket
        bucket_missing = bucket is not None and not bucket.exists()
    if bucket is not None and bucket_missing:
        raise InputError(f"{what} {where}: the bucket {bucket.name!r} does not exist")
    raise InputError(f"{what} {where} does not exist")
