"""One set of credentials: the standard environment variables, mapped onto GDAL's options.

fsspec's drivers read the standard variables themselves (s3fs through botocore:
``AWS_ENDPOINT_URL``, keys, session token, region, profile). GDAL reads the keys, token and
region under the same names, but wants the endpoint as ``AWS_S3_ENDPOINT`` (a host, without
scheme), HTTPS off for an ``http://`` endpoint and path-style addressing for a custom
endpoint: :func:`gdal_options` does that mapping, in one place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlparse

from .location import READ_ONLY, SCHEMES

#: Variables GDAL reads under the same name (passed on explicitly, so a rasterio session
#: built from boto3 cannot shadow them).
_SAME_NAME = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_NO_SIGN_REQUEST",
    "AWS_REQUEST_PAYER",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_NO_SIGN_REQUEST",
)
#: adlfs / Azure SDK name -> GDAL name.
_RENAMED = {
    "AZURE_STORAGE_ACCOUNT_NAME": "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCOUNT_KEY": "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_ACCOUNT": "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_ACCESS_KEY": "AZURE_STORAGE_ACCESS_KEY",
}


#: Every variable through which fsspec's drivers and GDAL find object-storage credentials,
#: regions and endpoints: what ``submit --forward-credentials`` hands to a job's workers.
CREDENTIAL_VARIABLES = (
    *_SAME_NAME,
    *_RENAMED,
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "STORAGE_EMULATOR_HOST",
)


def credential_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The :data:`CREDENTIAL_VARIABLES` set in ``environ`` (default: this process's)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in dict.fromkeys(CREDENTIAL_VARIABLES) if env.get(name)}


def _s3_endpoint(environ: Mapping[str, str]) -> str | None:
    """botocore's precedence: the S3-specific variable, then the global one."""
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")


def gdal_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """GDAL config options for /vsis3/, /vsigs/, /vsiaz/ from the standard variables."""
    env = os.environ if environ is None else environ
    opts = {k: env[k] for k in _SAME_NAME if env.get(k)}
    opts.update({gdal: env[name] for name, gdal in _RENAMED.items() if env.get(name)})
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["AWS_REGION"] = opts["AWS_DEFAULT_REGION"] = region
    endpoint = _s3_endpoint(env)
    if endpoint:
        url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        opts["AWS_S3_ENDPOINT"] = url.netloc + url.path.rstrip("/")
        opts["AWS_HTTPS"] = "NO" if url.scheme == "http" else "YES"
        opts["AWS_VIRTUAL_HOSTING"] = "FALSE"  # custom endpoints (MinIO, Ceph, moto) address path-style
    gcs = env.get("STORAGE_EMULATOR_HOST")  # gcsfs' variable for a GCS emulator
    if gcs:
        opts["CPL_GS_ENDPOINT"] = (gcs if "://" in gcs else f"http://{gcs}").rstrip("/") + "/"
    return opts


#: Options rasterio passes to GDAL only through its ``AWSSession`` (it refuses them as plain options).
_AWS_SESSION_KEYS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_REGION": "region_name",
    "AWS_PROFILE": "profile_name",
    "AWS_S3_ENDPOINT": "endpoint_url",
}


#: GDAL's prefixes for the writable object stores: /vsis3/, /vsigs/, /vsiaz/.
_WRITABLE_VSI = tuple(dict.fromkeys(vsi for scheme, (_, _, vsi) in SCHEMES.items() if scheme not in READ_ONLY))


def uncached_prefixes(environ: Mapping[str, str] | None = None) -> str:
    """``CPL_VSIL_CURL_NON_CACHED`` for :func:`storage_env`: every writable object store, plus
    what the user set. Publishing replaces an object by a server-side copy, and GDAL's global
    /vsis3/ cache would otherwise answer a long-running process (the app, the scheduler, a
    region job re-reading its products) with the first version it read, for as long as the
    process lives. Uncached, an open file still caches its own reads; only a later open asks
    the store again (one HEAD and the header). http(s):// inputs are read-only: cached."""
    env = os.environ if environ is None else environ
    own = env.get("CPL_VSIL_CURL_NON_CACHED")
    return ":".join([*_WRITABLE_VSI, *([own] if own else [])])


def storage_env(**extra):
    """A ``rasterio.Env`` with :func:`gdal_options` (and ``extra`` options) applied, object
    stores read uncached (:func:`uncached_prefixes`); the AWS keys, region, profile and endpoint
    travel in a rasterio ``AWSSession``, as rasterio requires."""
    import rasterio
    from rasterio.session import AWSSession

    opts = {**gdal_options(), "CPL_VSIL_CURL_NON_CACHED": uncached_prefixes(), **extra}
    session_args = {arg: opts.pop(key) for key, arg in _AWS_SESSION_KEYS.items() if key in opts}
    if opts.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        session_args["aws_unsigned"] = True
    session = AWSSession(**session_args) if session_args else None
    return rasterio.Env(session=session, **opts)
