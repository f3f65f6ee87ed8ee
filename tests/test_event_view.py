"""The app's event view (issue 28): an event map's run on the runs map shows the area no post-event
pass saw clearly, the new and the pre-existing polygons apart, and each polygon's attributes under
the pointer. The run is made by the real job on test_event_maps' world: old scars before, old and
new after, the post-event pass with SCL cloud over one new scar."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyproj import Transformer
from shapely.geometry import Point, shape
from shapely.ops import unary_union
from streamlit.testing.v1 import AppTest
from test_event_maps import (  # noqa: F401  (ndvi_model: a fixture)
    CLOUD_SCAR,
    NEW_SCARS,
    OLD_SCARS,
    PASSES,
    PRE_PASS,
    SETTINGS,
    _aoi,
    _catalog,
    _utm_origin,
    ndvi_model,
    world,
)

from landslide_batch.app import PAGE, RUNS_ENV
from landslide_batch.config import job_from_dict
from landslide_batch.pipeline import run_job


@pytest.fixture(scope="module")
def event_runs(tmp_path_factory, ndvi_model):  # noqa: F811
    d = tmp_path_factory.mktemp("event_view")
    origin = _utm_origin()
    pre = _catalog(d / "pre", world(OLD_SCARS, seed=1), origin, [PRE_PASS])
    post = _catalog(d / "post", world(OLD_SCARS + NEW_SCARS, seed=2), origin, PASSES[:1])  # cloud over a scar
    job = {"scenes": str(post), "pre_scenes": str(pre), "aoi": str(_aoi(d / "aoi.geojson", origin))}
    run_job(job_from_dict({**job, "models": [str(ndvi_model)], "out": str(d / "runs" / "event"), **SETTINGS}))
    return d / "runs", origin


def test_event_run_shows_unobserved_area_and_polygons_by_status(monkeypatch, event_runs):
    runs, (x0, y0) = event_runs
    monkeypatch.setenv(RUNS_ENV, str(runs))
    at = AppTest.from_file(str(PAGE), default_timeout=120).run()
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and not at.main.error
    (chart,) = at.get("deck_gl_json_chart")
    layers = {layer["id"]: layer for layer in json.loads(chart.proto.json)["layers"]}
    assert list(layers)[:5] == ["probability", "scenes", "unobserved", "new", "pre-existing"]
    manifest = json.loads((runs / "event" / "run.json").read_text())

    # the cloud's footprint is unobserved (its scar's centre inside), a clear scar's is not
    unobserved = unary_union([shape(f["geometry"]) for f in layers["unobserved"]["data"]["features"]])
    to_degrees = Transformer.from_crs(32645, 4326, always_xy=True)

    def centre(scar):
        r, c, h, w = scar
        return Point(to_degrees.transform(x0 + (c + w / 2) * 10, y0 - (r + h / 2) * 10))

    assert unobserved.contains(centre(CLOUD_SCAR)) and not unobserved.intersects(centre(NEW_SCARS[1]))
    assert manifest["summary"]["observed_share"] < 1

    new, old = layers["new"]["data"]["features"], layers["pre-existing"]["data"]["features"]
    assert len(new) == manifest["summary"]["objects"] == len(NEW_SCARS) - 1  # the clouded scar: not seen
    assert len(old) == manifest["summary"]["pre_existing_objects"] == len(OLD_SCARS)
    assert {f["properties"]["status"] for f in new} == {"new"}
    hover = new[0]["properties"]["hover"]
    p = new[0]["properties"]
    assert hover.startswith(f"new landslide {p['object_id']}, confidence {p['confidence']}")
    for text in (f"member agreement {p['member_agreement']:.2f}", f"first clear view {p['first_observed']}"):
        assert text in hover
    assert np.isclose(p["member_agreement"], 1.0)
    caption = "\n".join(c.value for c in at.caption)
    assert "not observed clearly by any post-event pass" in caption and "new landslides since the event" in caption
