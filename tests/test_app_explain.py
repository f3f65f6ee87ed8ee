"""The app keeps the CLI's safeguards and explains what it shows (Streamlit's AppTest).

Shows: Patch mode refuses a patch in other units than a trained model's (the CLI's units guard,
before any model runs) unless the user accepts the mismatch, and flags an implausible map; Runs
mode shows run.json's warnings, describes a region run as fully as a single one (its models
trained, a details table without blanks) and draws a legend under the map, whose polygons and
footprints carry a hover line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_varying_model
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_app import _page
from test_region import _job, region  # noqa: F401  (the region fixture: two scenes, two UTM zones)

from landslide_batch.config import job_from_dict
from landslide_batch.models.card import load_model_folder, save_model_folder
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import write_geotiff


def _trained(src: Path, out: Path, bands: np.ndarray) -> Path:
    """A model whose card says trained, with training statistics (``bands``'): the units guard
    compares a scene against them, as for any real trained model."""
    make_varying_model(src, out, bands)
    model, card = load_model_folder(out)
    save_model_folder(model, card.model_copy(update={"trained": True}), out, overwrite=True)
    return out


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_model, scene_arrays) -> Path:
    root = tmp_path_factory.mktemp("trained-models")
    _trained(tiny_model, root / "unet_trained", scene_arrays[0])
    return root


def _upload(at: AppTest, tmp_path: Path, bands: np.ndarray) -> None:
    path = write_geotiff(tmp_path / "patch.tif", bands)
    at.file_uploader(key="patch").upload(path.name, path.read_bytes())
    at.run()


def test_patch_in_the_wrong_units_is_refused_unless_accepted(monkeypatch, tmp_path, models_dir, scene_arrays):
    at = _page(monkeypatch, models_dir)
    assert not at.sidebar.error, "a trained model's card"
    _upload(at, tmp_path, scene_arrays[0][:, :128, :128] * 10000)  # digital numbers for a reflectance model
    at.button[0].click().run()
    assert not at.exception
    (error,) = at.main.error
    assert "not in the units the model was trained on" in error.value
    assert "Map it anyway" in at.main.info[0].value
    assert not at.image, "nothing mapped"

    at.checkbox(key="accept_units").check().run()
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    warnings = [w.value for w in at.main.warning]
    assert any(w.startswith("units mismatch accepted") for w in warnings)
    assert len(at.image) == 4


def test_implausible_patch_map_is_flagged(monkeypatch, tmp_path, models_dir, scene_arrays):
    at = _page(monkeypatch, models_dir)
    _upload(at, tmp_path, scene_arrays[0][:, :128, :128])  # the model's own units
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    (warning,) = [w.value for w in at.main.warning]
    assert warning.startswith("implausible result:") and "of the mapped area is classified as landslide" in warning
    assert len(at.image) == 4


@pytest.fixture(scope="module")
def runs_dir(region, tiny_model, tmp_path_factory):  # noqa: F811
    """A region run of a trained model at a threshold so low that the map is mostly landslide."""
    import rasterio

    d, _ = region
    root = tmp_path_factory.mktemp("explain-runs")
    with rasterio.open(d / "B.tif") as ds:  # the region's world: the model's training statistics
        model = _trained(tiny_model, root / "model", ds.read().astype(np.float32))
    run_job(job_from_dict(_job(d, model, root / "runs" / "valley", ["A.tif", "B.tif"], threshold=0.05)))
    return root / "runs"


def test_region_run_shows_warnings_trained_models_details_and_a_legend(monkeypatch, runs_dir):
    run = json.loads((runs_dir / "valley" / "run.json").read_text())
    assert run["kind"] == "region job" and run["warnings"]
    at = _page(monkeypatch, runs_dir=runs_dir)
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and not at.main.error
    shown = [w.value for w in at.main.warning]
    assert any(w.startswith("implausible result:") for w in shown)
    assert set(run["warnings"]) <= set(shown)

    models = at.table[1].value
    assert models["trained"].tolist() == ["yes"] and models["arch"].tolist() == ["Unet"]
    details = dict(zip(at.table[0].value["field"], at.table[0].value["value"]))
    assert "—" not in details.values(), details
    assert details["Scenes"].startswith("2 mapped") and "EPSG:32645" in details["Region grid"]

    assert [img.captions for img in at.image] == [["Legend"], ["Quicklook"]]
    chart = at.get("deck_gl_json_chart")[0].proto
    deck = json.loads(chart.json)
    assert json.loads(chart.tooltip) == {"text": "{hover}"}  # Streamlit sends it beside the spec
    landslides = next(layer for layer in deck["layers"] if layer["id"] == "landslides")
    hover = landslides["data"]["features"][0]["hover"]
    assert hover.startswith("landslide ") and "m²" in hover and "mean probability" in hover


def test_legend_draws_the_colour_bar_and_the_layers():
    from matplotlib import colormaps

    from landslide_batch.app import runs_view

    img = np.asarray(Image.open(io.BytesIO(runs_view.legend_png(["probability", "scenes", "landslides"]))))
    assert img.shape[0] == 8 + 34 * 3
    bar = img[8:20, 8:208, :3].astype(int)
    viridis = colormaps["viridis"](np.linspace(0, 1, 200), bytes=True)[:, :3].astype(int)
    assert np.abs(bar[5] - viridis).max() <= 1, "the bar is viridis from 0 to 1"
    assert (np.abs(img[42:56, 10:38, :3].astype(int) - runs_view.POLYGON_COLOUR[:3]).max(axis=-1) <= 1).mean() > 0.9
    only_bar = np.asarray(Image.open(io.BytesIO(runs_view.legend_png(["probability"]))))
    assert only_bar.shape[0] == 8 + 34
