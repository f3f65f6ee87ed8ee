"""GDAL reads of object storage in a long-running process see replaced products.

Publishing replaces a product by a server-side copy; GDAL's global /vsis3/ cache kept answering
the first version this process had read (the app, the scheduler, a region job re-reading its
products). ``storage_env`` reads the writable object stores uncached.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from s3_server import s3_bucket

from landslide_batch.outputs.publish import publish_products
from landslide_batch.storage import location, storage_env
from landslide_batch.storage.credentials import uncached_prefixes

BUCKET = "products"
OUTPUTS = {"probability": "probability.tif", "zarr": "probability.zarr"}


def _publish(tmp_path: Path, version: int) -> None:
    """A job's products (a 32x32 float map of ``version``, its store and run.json) published to
    ``s3://BUCKET/event`` as a job does: over the previous version, if any."""
    final = tmp_path / f"final-{version}"
    final.mkdir()
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 1, "dtype": "float32"}
    transform = from_origin(500000, 3100000, 10, 10)
    with rasterio.open(final / OUTPUTS["probability"], "w", crs="EPSG:32645", transform=transform, **profile) as ds:
        ds.write(np.full((1, 32, 32), version / 10, dtype="float32"))  # same size: only the bytes differ
    (final / "run.json").write_text(json.dumps({"kind": "scene job", "version": version}))
    store = location(f"s3://{BUCKET}/event/.work/probability.zarr")
    (store / "zarr.json").write_text(json.dumps({"version": version}))
    publish_products(final, store, location(f"s3://{BUCKET}/event"), OUTPUTS)


def _read_map() -> float:
    with storage_env(), rasterio.open(location(f"s3://{BUCKET}/event/probability.tif").gdal_path()) as ds:
        return float(ds.read(1)[0, 0])


def test_a_product_published_again_is_read_anew_in_the_same_process(tmp_path):
    with s3_bucket(tmp_path, BUCKET):
        seen = []
        for version in (1, 2, 3):
            _publish(tmp_path, version)
            seen.append(_read_map())
    assert seen == [np.float32(0.1), np.float32(0.2), np.float32(0.3)]


def test_the_users_own_uncached_prefixes_are_kept():
    assert uncached_prefixes({}).split(":") == ["/vsis3/", "/vsigs/", "/vsiaz/"]
    assert uncached_prefixes({"CPL_VSIL_CURL_NON_CACHED": "/vsicurl/"}).split(":")[-1] == "/vsicurl/"
