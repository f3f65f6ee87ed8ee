"""STAC items of finished jobs (single scene and region) and the scheduler's event Collection.

Shows: the item's ``datetime`` is the scenes' acquisition (a span over several), never silently
the processing time; ``derived_from`` links the scenes run.json lists; every product is an asset
(``scenes.gpkg`` of a region too); the rasters carry ``raster:bands``, the mask
``classification:classes``; ``processing:software`` names the versions run.json records; the items
and the Collection validate against the STAC core schemas.

Validation is offline: pystac ships the core schemas (``pystac.validation.local_validator``) but
no extension schema, and neither does any installed package (pystac-ext-* hold code only), so the
extensions' fields are checked here through pystac's own extension classes, not their schemas.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone

import pystac
import pytest
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.raster import RasterExtension
from pystac.validation import JsonSchemaSTACValidator
from test_region import _job, region  # noqa: F401  (``region``: the module-scoped fixture)

from landslide_batch.config import job_from_dict
from landslide_batch.jobs.stac import COLLECTION_FILE, PROCESSING_SCHEMA, item_for_outputs, write_collection
from landslide_batch.pipeline import run_job


def validate_core(obj: pystac.STACObject) -> None:
    """STAC core schema validation with the schemas pystac ships (no network), of the JSON
    written (shapely's coordinates are tuples until then)."""
    d = json.loads(json.dumps(obj.to_dict(include_self_link=False, transform_hrefs=False)))
    JsonSchemaSTACValidator().validate_core(d, obj.STAC_OBJECT_TYPE, d["stac_version"])


@pytest.fixture(scope="module")
def single(tmp_path_factory, scene_arrays, varying_model):
    from landslide_batch.synthetic import write_geotiff

    d = tmp_path_factory.mktemp("stac")
    scene = write_geotiff(d / "scene.tif", scene_arrays[0])
    out = d / "out"
    cfg = {"scene": str(scene), "out": str(out), "models": [str(varying_model)], "block": 128, "batch_size": 8}
    run_job(job_from_dict(cfg))
    return out, scene


def _set_dates(out, dates: list[str | None]) -> None:
    """What the ingest records for dated scenes (a Sentinel-2 product or STAC item)."""
    run = json.loads((out / "run.json").read_text())
    if run["kind"] == "region job":
        for s, d in zip(run["scenes"], dates, strict=True):
            s["date"] = d
    else:
        (run["inputs"]["scene"]["acquired"],) = dates
    (out / "run.json").write_text(json.dumps(run))


def test_single_scene_item_describes_every_product_and_validates(single, tmp_path, caplog):
    src, scene = single
    out = shutil.copytree(src, tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="landslide_batch.jobs.stac"):
        undated = item_for_outputs(out)
    assert "no scene has an acquisition date" in caplog.text
    run = json.loads((out / "run.json").read_text())
    assert undated.datetime == datetime.fromisoformat(run["finished"]).astimezone(timezone.utc)

    _set_dates(out, ["2024-04-19"])
    item = item_for_outputs(out)
    validate_core(item)
    assert item.datetime == datetime(2024, 4, 19, tzinfo=timezone.utc)
    assert item.properties["created"] == undated.datetime.isoformat()
    assert [link.href for link in item.get_links("derived_from")] == [str(scene)]
    assert set(item.assets) == {*run["outputs"], "manifest"}
    assert item.assets["mask_style"].href == "./mask.qml" and "style" in item.assets["mask_style"].roles

    bands = {k: RasterExtension.ext(item.assets[k]).bands for k in ("probability", "uncertainty", "mask")}
    assert [(b.nodata, b.data_type.value, b.spatial_resolution) for (b,) in bands.values()] == [
        (-1, "float32", 10.0),
        (-1, "float32", 10.0),
        (255, "uint8", 10.0),
    ]
    assert RasterExtension.get_schema_uri() in item.stac_extensions
    classes = ClassificationExtension.ext(item.assets["mask"]).classes
    assert [(c.value, c.name, c.nodata) for c in classes] == [
        (0, "no_landslide", None),
        (1, "landslide", None),
        (255, "nodata", True),
    ]
    assert classes[1].color_hint == "DC1E1E"
    assert PROCESSING_SCHEMA in item.stac_extensions
    software = item.properties["processing:software"]
    assert software["landslide-batch"] == run["versions"]["landslide-batch"] and "torch" in software


def test_region_item_spans_its_scenes_and_lists_scenes_gpkg(region, tmp_path):  # noqa: F811
    d, model = region
    out = tmp_path / "region"
    run_job(job_from_dict(_job(d, model, out, ["A.tif", "B.tif"])))
    _set_dates(out, ["2024-05-02T04:55:31Z", "2024-04-27T05:01:12Z"])
    item = item_for_outputs(out)
    validate_core(item)
    assert item.datetime is None
    assert item.common_metadata.start_datetime == datetime(2024, 4, 27, 5, 1, 12, tzinfo=timezone.utc)
    assert item.common_metadata.end_datetime == datetime(2024, 5, 2, 4, 55, 31, tzinfo=timezone.utc)
    assert item.assets["scenes"].href == "./scenes.gpkg" and (out / "scenes.gpkg").is_file()
    assert sorted(link.href for link in item.get_links("derived_from")) == [str(d / "A.tif"), str(d / "B.tif")]
    when = datetime(2024, 5, 3, tzinfo=timezone.utc)  # as the scheduler gives it: its newest item's time
    given = item_for_outputs(out, when=when, derived_from=["https://example.test/items/s2-a.json"])
    validate_core(given)
    assert given.datetime == when and given.common_metadata.start_datetime == item.common_metadata.start_datetime
    assert [link.href for link in given.get_links("derived_from")] == ["https://example.test/items/s2-a.json"]


def test_event_collection_gathers_the_event_items(single, tmp_path):
    src, _ = single
    for event, date in (("ev-valley", "2024-04-19"), ("ev-ridge", "2024-04-23")):
        out = shutil.copytree(src, tmp_path / "events" / event)
        _set_dates(out, [date])
        (out / "item.json").write_text(json.dumps(item_for_outputs(out, item_id=event).to_dict()))
    collection = write_collection(tmp_path / "events", "monsoon-2024", "landslide maps")
    validate_core(collection)
    written = pystac.Collection.from_file(str(tmp_path / "events" / COLLECTION_FILE))
    assert sorted(i.id for i in written.get_items()) == ["ev-ridge", "ev-valley"]
    (interval,) = written.extent.temporal.intervals
    assert interval == [datetime(2024, 4, 19, tzinfo=timezone.utc), datetime(2024, 4, 23, tzinfo=timezone.utc)]
    (bbox,) = written.extent.spatial.bboxes
    assert bbox == pytest.approx(item_for_outputs(tmp_path / "events" / "ev-valley").bbox)
