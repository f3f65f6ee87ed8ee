"""Locations: local paths and object-store URIs behind one small API (fsspec + GDAL's /vsi*).

API (stable; other modules build on it)::

    location(value, base=None) -> Location   parse a path or URI; relative paths join ``base``
    Where                                     what ``location`` takes: str | os.PathLike | Location
    path_or_uri(value) -> Path | str          a config value: a Path for local paths (file:// too),
                                              the URI string (never mangled by Path) otherwise
    is_uri(value) -> bool                     s3:// gs:// az:// abfs:// http(s):// (not file://)

    Location (frozen, picklable, ``str(loc)`` is the URI or the absolute local path)
      .scheme ('file', 's3', 'gs', 'az', 'abfs', 'http', 'https'), .is_local, .is_remote, .writable
      .path (local only) .name .parent .bucket .join(*parts) / loc / "part"
      .resolve(href) -> str                   a relative href (a STAC asset's) joined to this folder
      .fs, .fs_path                           the fsspec filesystem and the path it takes
      .exists() .is_file() .is_dir() .ls_names()
      .read_bytes() .read_text() .open(mode)
      .write_bytes(data) .write_text(text)    whole-object writes: tmp + rename locally, one PUT remotely
      .touch()                                an empty marker file / object
      .create_exclusive(data) -> bool         create only if absent (O_EXCL / S3 If-None-Match)
      .put_file(local) .get_file(local)       upload / download one file
      .copy_to(dest) .rm(recursive=True)      server-side copy when both are on one store
      .move_to(dest)                          os.replace locally; copy + remove on object stores
      .makedirs()                             a folder locally; nothing on object stores
      .zarr_store(read_only=False)            zarr.storage.LocalStore / FsspecStore
      .gdal_path()                            /vsis3/..., /vsigs/..., /vsiaz/..., /vsicurl/..., or the path
      .require_writable(what)                 ConfigError for http(s):// (read-only)

    require_exists(where, what)               InputError unless it exists (names a missing bucket)
    storage_errors(where, what)               context manager: store exceptions -> InputError naming
                                              the URI and the cause (missing bucket/object, no
                                              credentials, access denied, unreachable endpoint)
    gdal_options(environ) -> dict             the standard AWS_* / GCS / Azure variables as GDAL options
    storage_env() -> rasterio.Env             GDAL configured by gdal_options(os.environ)
    exclusive_location(lock, busy)            an exclusive lock: a file lock locally, a lease object
                                              (conditional create + expiry) on object storage

Credentials: one set, the standard variables. s3fs / botocore read ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` themselves (botocore >= 1.31 for the endpoint); GDAL gets them through
:func:`gdal_options`. gs:// needs ``gcsfs``, az:// / abfs:// need ``adlfs`` (not installed by
default: using such a location says which package to install).
"""

from .credentials import credential_env, gdal_options, storage_env
from .lease import exclusive_location
from .location import Location, Where, is_uri, location, path_or_uri, require_exists, storage_errors

__all__ = [
    "Location",
    "Where",
    "exclusive_location",
    "gdal_options",
    "is_uri",
    "location",
    "path_or_uri",
    "require_exists",
    "storage_env",
    "credential_env",
    "storage_errors",
]
