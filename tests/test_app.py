"""The web app: its logic as plain functions, and the page through Streamlit's AppTest.

AppTest uploads files through ``file_uploader(...).upload`` (Streamlit >= 1.5x), so the page
is driven exactly as a user drives it; no test hook in the page.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_region import SETTINGS, _job, region  # noqa: F401  (the region fixture: two scenes, two UTM zones)

from landslide_batch.app import (
    BASEMAP_ENV,
    MAX_UPLOAD_ENV,
    MAX_UPLOAD_MB,
    MODELS_ENV,
    PAGE,
    RUNS_ENV,
    downloads,
    inference,
    model_folders,
    runs_view,
    uploads,
)
from landslide_batch.cli import build_parser, main
from landslide_batch.commands.app import streamlit_command
from landslide_batch.config import job_from_dict
from landslide_batch.errors import InputError
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import synthetic_scene, write_geotiff, write_l4s_patch

TIMEOUT = 120  # model loading on a busy 2-core machine


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_model, tiny_plain_model) -> Path:
    root = tmp_path_factory.mktemp("app-models")
    for model in (tiny_model, tiny_plain_model):
        shutil.copytree(model, root / model.name)  # a symlink out of the models folder is not offered
    return root


@pytest.fixture(scope="module")
def l4s_pair(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("l4s")
    bands, labels = synthetic_scene(128, 128, seed=5)
    write_l4s_patch(d / "image_7.h5", bands, d / "mask_7.h5", labels)
    return d / "image_7.h5", d / "mask_7.h5"


def _h5(path: Path, data: np.ndarray, name: str = "img") -> bytes:
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data)
    return path.read_bytes()


def _page(monkeypatch, models_dir: Path | None = None, runs_dir: Path | None = None) -> AppTest:
    if models_dir is not None:
        monkeypatch.setenv(MODELS_ENV, str(models_dir))
    if runs_dir is not None:
        monkeypatch.setenv(RUNS_ENV, str(runs_dir))
    return AppTest.from_file(str(PAGE), default_timeout=TIMEOUT).run()


def _texts(at: AppTest) -> str:
    return (
        "\n".join(
            e.value
            for kind in ("markdown", "caption", "subheader", "error", "warning", "info")
            for e in getattr(at, kind)
        )
        + "\n"
        + "\n".join(at.sidebar.markdown.values)
    )


# ---------------------------------------------------------------------------- plain functions


@pytest.mark.parametrize("n, size", [(128, 128), (1, 128), (129, 192), (192, 192), (300, 320)])
def test_padded_size_is_smallest_tiled_window(n, size):
    assert inference.padded_size(n) == size


def test_odd_sized_geotiff_is_padded_cropped_and_downloadable_as_geotiff(tmp_path, tiny_model):
    bands = synthetic_scene(100, 90, seed=2)[0]
    bands[:, :5, :7] = np.nan
    src = write_geotiff(tmp_path / "p.tif", bands)
    patch = uploads.load_patch("p.tif", src.read_bytes())
    assert patch.georeferenced and patch.valid.sum() == 100 * 90 - 35
    model = model_folders.find_models(tiny_model)[0][0]
    pred = inference.predict(inference.load_predictor(tiny_model), model, patch)
    assert pred.probability.shape == (100, 90)
    assert np.isnan(pred.probability[:5, :7]).all() and not pred.mask[:5, :7].any()
    assert np.isfinite(pred.probability[patch.valid]).all()
    (tmp_path / "out.tif").write_bytes(downloads.geotiff_bytes(pred.probability, patch, nodata=float("nan")))
    with rasterio.open(tmp_path / "out.tif") as ds, rasterio.open(src) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        np.testing.assert_array_equal(ds.read(1), pred.probability)


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("image_1.h5", lambda p: _h5(p, np.zeros((128, 128, 3), np.float32)), "expected 14 bands"),
        ("image_1.h5", lambda p: b"this is not an HDF5 file", "not a readable HDF5 file"),
        ("image_1.h5", lambda p: _h5(p, np.full((128, 128, 14), np.nan, np.float32)), "no valid pixel"),
        ("scene.tif", lambda p: write_geotiff(p, np.ones((3, 32, 32), np.float32)).read_bytes(), "found 3"),
        ("scene.jpg", lambda p: b"\xff\xd8", "expected an L4S .h5 patch or a 14-band GeoTIFF"),
    ],
)
def test_bad_patch_uploads_raise_input_errors_naming_the_upload(tmp_path, name, make, message):
    with pytest.raises(InputError, match=message) as err:
        uploads.load_patch(name, make(tmp_path / name))
    assert str(err.value).startswith(name) and str(tmp_path) not in str(err.value)


def test_mask_must_match_the_patch(tmp_path):
    data = _h5(tmp_path / "mask_1.h5", np.ones((64, 64), np.uint8), name="mask")
    assert uploads.load_mask("mask_1.h5", data, (64, 64)).all()
    with pytest.raises(InputError, match="the patch is 128 x 128"):
        uploads.load_mask("mask_1.h5", data, (128, 128))


def test_app_command_hands_options_to_streamlit(tmp_path, monkeypatch):
    monkeypatch.delenv(RUNS_ENV, raising=False)
    args, extra = build_parser().parse_known_args(
        ["app", "--server.port", "8600", "--models-dir", str(tmp_path), "--server.headless", "true"]
    )
    args.extra = extra
    argv, env = streamlit_command(args)
    assert argv[1:] == [
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.maxUploadSize",
        str(MAX_UPLOAD_MB),
        "--server.port",
        "8600",
        "--server.headless",
        "true",
    ]
    assert env[MODELS_ENV] == str(tmp_path.resolve()) and RUNS_ENV not in env
    assert env[MAX_UPLOAD_ENV] == str(MAX_UPLOAD_MB)
    assert main(["app", "--models-dir", str(tmp_path / "missing")]) == 2
    assert main(["app", "--max-upload-mb", "0"]) == 2
    assert main(["app", "--server.maxUploadSize", "5000"]) == 2  # would lift the cap behind the page's back


# ---------------------------------------------------------------------------- page


def test_single_model_on_a_patch_with_ground_truth(monkeypatch, models_dir, l4s_pair):
    image, mask = l4s_pair
    at = _page(monkeypatch, models_dir)
    assert not at.exception and "Upload a patch" in _texts(at)
    assert at.sidebar.error[0].value.startswith("UNTRAINED")  # the cards of init-model folders say so
    assert "Architecture: `Unet`" in _texts(at)  # the first folder by name: unet_mobilenet_v2
    at.file_uploader(key="patch").upload(image.name, image.read_bytes())
    at.file_uploader(key="truth").upload(mask.name, mask.read_bytes())
    at.run()
    assert "128 x 128 px, 100% valid" in _texts(at)
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    assert [m.label for m in at.metric] == ["Precision", "Recall", "F1", "IoU"]
    assert all(0 <= float(m.value) <= 1 for m in at.metric)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["probability .npy", "mask .npy"]  # no GeoTIFF: an L4S patch has no location
    captions = [c for img in at.image for c in img.captions]
    assert captions == [
        "RGB (B4, B3, B2)",
        "Ground truth (cyan) on RGB",  # the uploaded mask, drawn
        f"Mask (threshold {0.5:.2f})",
        "Overlay on RGB",
        "Probability (viridis, 0 → 1)",
    ]
    at.run()  # a rerun (any other widget) shows the stored result without pressing Run again
    assert len(at.image) == 5


def test_all_models_side_by_side_with_their_ensemble(monkeypatch, models_dir, l4s_pair):
    from streamlit.testing.v1 import app_test as app_test_module

    stores = []

    class RecordingStorage(app_test_module.MemoryMediaFileStorage):  # where the downloads' bytes live
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    image, mask = l4s_pair
    at = _page(monkeypatch, models_dir)
    at.checkbox(key="run_all").check().run()
    at.file_uploader(key="patch").upload(image.name, image.read_bytes())
    at.file_uploader(key="truth").upload(mask.name, mask.read_bytes())
    at.run()
    assert at.button[0].label == "Run all models"
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    models = model_folders.find_models(models_dir)[0]
    table = at.dataframe[0].value
    assert table["model"].tolist() == [m.label for m in models] + ["Ensemble (mean of 2 models)"]
    assert table[["precision", "recall", "f1", "iou"]].apply(lambda c: c.between(0, 1)).all().all()
    assert len(at.image) == 2 + 3 * 3  # RGB and truth once, then mask, overlay, probability per map
    assert len(at.get("download_button")) == 3 * 2
    assert _texts(at).count(":red[UNTRAINED]") == 3  # an ensemble of untrained models is untrained

    files = [stores[-1].get_file(b.proto.url.rsplit("/", 1)[-1]) for b in at.get("download_button")]

    def downloaded(name: str) -> np.ndarray:
        (content,) = [f.content for f in files if f.filename == name]
        return np.load(io.BytesIO(content))

    shown = {m.path.name: downloaded(f"image_7_{m.path.name}_probability.npy") for m in models}
    ensemble = downloaded("image_7_ensemble_probability.npy")
    a, b = shown.values()
    assert np.abs(a - b).max() > 0.01, "two different members"
    np.testing.assert_allclose(ensemble, (a + b) / 2, atol=1e-6)  # the job's ensemble: the members' mean
    patch = uploads.load_patch(image.name, image.read_bytes())
    job = inference.predict(inference.load_predictor(*(m.path for m in models)), models, patch)
    np.testing.assert_array_equal(ensemble, job.probability)  # through the one EnsemblePredictor
    assert job.threshold == np.mean([m.card.threshold for m in models])
    np.testing.assert_array_equal(downloaded("image_7_ensemble_mask.npy"), ensemble >= job.threshold)


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("image_1.h5", lambda p: _h5(p, np.zeros((128, 128, 3), np.float32)), "expected 14 bands"),
        ("image_1.h5", lambda p: b"not hdf5 at all", "not a readable HDF5 file"),
        ("image_1.h5", lambda p: _h5(p, np.full((128, 128, 14), np.nan, np.float32)), "no valid pixel"),
    ],
)
def test_bad_upload_shows_an_error_not_a_traceback(monkeypatch, tmp_path, models_dir, name, make, message):
    at = _page(monkeypatch, models_dir)
    at.file_uploader(key="patch").upload(name, make(tmp_path / name))
    at.run()
    assert not at.exception
    assert len(at.main.error) == 1 and message in at.main.error[0].value
    assert not at.button  # nothing to run


def test_without_models_the_page_says_how_to_get_them(monkeypatch, tmp_path):
    at = _page(monkeypatch, tmp_path)
    assert not at.exception and "--models-dir" in at.warning[0].value


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A finished region job's output folder, as the pipeline writes it (small stand-ins)."""
    out = tmp_path / "runs" / "region-a"
    out.mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1))).save(out / "quicklook.png")
    write_geotiff(out / "probability.tif", np.full((16, 16), 0.25, np.float32))
    (out / "probability.zarr").mkdir()
    (out / "probability.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("outside the run folder")
    run = {
        "status": "complete",
        "job_hash": "abc123",
        "started": "2025-01-01T10:00:00+00:00",
        "finished": "2025-01-01T10:05:00+00:00",
        "timings": {"ingest_s": 1.5, "infer_s": 250.25, "finish_s": 3.0, "total_s": 254.75},
        "inputs": {"scene": {"path": "/data/scene.tif", "sha256": "f" * 64}},
        "config": {"tile": 128, "overlap": 0.5},
        "versions": {"landslide_batch": "0.1.0"},
        "models": [
            {
                "path": "/models/unet_resnet34",
                "name": "unet_resnet34",
                "arch": "Unet",
                "encoder": "resnet34",
                "weight": 1.0,
                "trained": False,
                "sha256": "0" * 64,
            }
        ],
        "tiles": {"grid": 1200, "forward_passes": 1100},
        "blocks": {"total": 12, "computed": 10, "skipped_nodata": 2, "resumed": 0},
        "summary": {"area_mapped_km2": 123.456, "landslide_area_km2": 1.25, "objects": 42, "threshold": 0.5},
        "outputs": {
            "probability": "probability.tif",
            "uncertainty": "uncertainty.tif",
            "mask": "mask.tif",
            "polygons": "landslides.gpkg",
            "quicklook": "quicklook.png",
            "zarr": "probability.zarr",
            "sneaky": "../../secret.txt",
        },
    }
    (out / "run.json").write_text(json.dumps(run))
    return out


def test_runs_mode_shows_a_finished_run(monkeypatch, run_folder):
    at = _page(monkeypatch, runs_dir=run_folder.parent)
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and not at.main.error
    assert at.selectbox(key="run").value == run_folder
    assert {m.label: m.value for m in at.metric} == {
        "Landslide area": "1.250 km²",
        "Objects": "42",
        "Area mapped": "123.5 km²",
        "Threshold": "0.500",
    }
    assert [img.captions for img in at.image] == [["Legend"], ["Quicklook"]]  # the map's legend, then the quicklook
    details = at.table[0].value
    assert (
        dict(zip(details["field"], details["value"]))["Blocks"] == "total 12, computed 10, skipped nodata 2, resumed 0"
    )
    assert at.table[1].value["trained"].tolist() == ["UNTRAINED"]
    labels = [b.label for b in at.get("download_button")]
    assert [lab.split(" ")[0] for lab in labels] == ["run.json", "probability.tif", "quicklook.png"]
    assert "probability.zarr is a folder" in _texts(at) and "secret" not in " ".join(labels)


def test_runs_mode_reports_a_broken_manifest(monkeypatch, run_folder):
    (run_folder / "run.json").write_text("{not json")
    at = _page(monkeypatch, runs_dir=run_folder)  # the run folder itself
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and "not valid JSON" in at.main.error[0].value


# ---------------------------------------------------------------------------- region runs on a map


@pytest.fixture(scope="module")
def runs_dir(region) -> Path:  # noqa: F811
    """A runs folder as a server sees it: a two-scene region run (EPSG:32644 + 32645) and a
    single-scene run of one of its scenes, both made by the real jobs."""
    d, model = region
    run_job(job_from_dict(_job(d, model, "runs/gorkha", ["A.tif", "B.tif"])))
    run_job(
        job_from_dict(
            {"scene": str(d / "B.tif"), "models": [str(model)], "out": str(d / "runs" / "single_b"), **SETTINGS}
        )
    )
    return d / "runs"


def _deck(at: AppTest) -> dict:
    charts = at.get("deck_gl_json_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.json)


def _picture(layer: dict) -> np.ndarray:
    header, data = layer["image"].split(",", 1)
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA"))


def _with_scale_bar(layers: list[str]) -> list[str]:
    return [*layers, "scale-bar", "scale-label"]


@pytest.mark.parametrize(
    "metres, length, label",
    [(0.7, 0.5, "0.5 m"), (12, 10, "10 m"), (999, 500, "500 m"), (4999, 2000, "2 km"), (5000, 5000, "5 km")],
)
def test_scale_bar_lengths_are_round(metres, length, label):
    from landslide_batch.app import map_scale

    assert map_scale.round_length(metres) == length and map_scale.label(length) == label


def test_region_run_on_an_interactive_map(monkeypatch, runs_dir):
    """Probability, polygons and footprints on one deck.gl map, in EPSG:4326, no basemap offline.
    The picture is checked pixel by pixel against the COG sampled independently (pyproj to the
    run's UTM grid, nearest pixel)."""
    from matplotlib import colormaps
    from pyproj import Geod, Transformer

    monkeypatch.delenv(BASEMAP_ENV, raising=False)
    at = _page(monkeypatch, runs_dir=runs_dir)
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and not at.main.error
    assert at.selectbox(key="run").value == runs_dir / "gorkha"
    deck = _deck(at)
    assert [layer["id"] for layer in deck["layers"]] == _with_scale_bar(["probability", "scenes", "landslides"])
    assert deck["mapStyle"] == "__MAP_STYLE__" and "mapProvider" not in deck  # no basemap, nothing fetched
    assert "cartocdn" not in at.get("deck_gl_json_chart")[0].proto.json
    assert deck["views"][0]["controller"] is True  # pan and zoom
    manifest = json.loads((runs_dir / "gorkha" / "run.json").read_text())

    bitmap, scenes, polygons, bar, label = deck["layers"]
    west, south, east, north = bitmap["bounds"]
    assert west < 83.99 and east > 84.024 and south < 27.994 and north > 28.008  # covers the AOI
    assert west < deck["initialViewState"]["longitude"] < east and south < deck["initialViewState"]["latitude"] < north
    rgba = _picture(bitmap)
    h, w = rgba.shape[:2]
    with rasterio.open(runs_dir / "gorkha" / "probability.tif") as ds:
        assert ds.crs.to_epsg() == manifest["region"]["epsg"] and max(ds.shape) < runs_view.MAX_SIDE
        prob = ds.read(1)
        lon = west + (np.arange(w) + 0.5) * (east - west) / w
        lat = north - (np.arange(h) + 0.5) * (north - south) / h
        xs, ys = Transformer.from_crs(4326, ds.crs, always_xy=True).transform(*np.meshgrid(lon, lat))
        rows, cols = rasterio.transform.rowcol(ds.transform, xs.ravel(), ys.ravel())
    rows, cols = np.asarray(rows).reshape(h, w), np.asarray(cols).reshape(h, w)
    inside = (rows >= 0) & (rows < prob.shape[0]) & (cols >= 0) & (cols < prob.shape[1])
    expected = np.where(inside, prob[rows.clip(0, prob.shape[0] - 1), cols.clip(0, prob.shape[1] - 1)], -1.0)
    valid = expected >= 0
    assert valid.mean() > 0.3 and expected[valid].std() >= 0.05  # a map that varies, not a blank
    # Nearest-pixel choices may differ on pixel edges; everything else must agree exactly.
    assert ((rgba[..., 3] > 0) == valid).mean() > 0.98
    colours = colormaps["viridis"](np.clip(expected, 0, 1), bytes=True)[..., :3]
    both = valid & (rgba[..., 3] > 0)
    assert (np.abs(rgba[..., :3].astype(int) - colours).max(axis=-1)[both] <= 2).mean() > 0.97

    assert [f["properties"]["scene_id"] for f in scenes["data"]["features"]] == [s["id"] for s in manifest["scenes"]]
    assert len(polygons["data"]["features"]) == manifest["summary"]["objects"] > 0
    lons = [x for f in polygons["data"]["features"] for x, _ in f["geometry"]["coordinates"][0]]
    assert west - 1e-3 < min(lons) and max(lons) < east + 1e-3
    assert at.dataframe[0].value["scene"].tolist() == [s["id"] for s in manifest["scenes"]]
    assert at.dataframe[0].value["CRS"].tolist() == ["EPSG:32644", "EPSG:32645"]

    # The scale bar: its length on the ground (the ellipsoid's, measured by pyproj) is what its
    # label and the caption under the map say, a round length about a quarter of the map wide.
    (text,) = label["data"]
    line, *ticks = (p["path"] for p in bar["data"])
    (lon0, lat0), (lon1, lat1) = line
    metres = Geod(ellps="WGS84").inv(lon0, lat0, lon1, lat1)[2]
    value, unit = text["text"].split()
    said = float(value) * {"m": 1, "km": 1000}[unit]
    assert abs(metres - said) < 1e-3 * said, (metres, text)
    assert west < lon0 < lon1 < east and south < lat0 < north and lat0 == lat1
    assert 0.1 < (lon1 - lon0) / (east - west) <= 0.25
    assert [t[0][0] for t in ticks] == [lon0, lon1]  # the ends ticked
    assert f"the black scale bar is {text['text']} on the ground" in _texts(at)


def test_single_scene_run_on_the_same_map(monkeypatch, runs_dir):
    at = _page(monkeypatch, runs_dir=runs_dir)
    at.radio(key="mode").set_value("Runs").run()
    at.selectbox(key="run").set_value(runs_dir / "single_b").run()
    assert not at.exception and not at.main.error
    assert [layer["id"] for layer in _deck(at)["layers"]] == _with_scale_bar(["probability", "landslides"])
    assert not at.dataframe  # no scenes table for one scene


def test_basemap_only_when_the_server_says_online(monkeypatch, runs_dir):
    style = "https://tiles.example.org/style.json"
    monkeypatch.setenv(BASEMAP_ENV, style)
    at = _page(monkeypatch, runs_dir=runs_dir)
    at.radio(key="mode").set_value("Runs").run()
    deck = _deck(at)
    assert deck["mapStyle"] == style and deck["mapProvider"] == "carto"


def test_large_probability_is_sent_downsampled(runs_dir):
    full = runs_view.probability_picture(runs_dir / "gorkha" / "probability.tif")
    small = runs_view.probability_picture(runs_dir / "gorkha" / "probability.tif", max_side=64)
    assert max(small.shape) <= 70 < max(full.shape)
    np.testing.assert_allclose(small.bounds, full.bounds, atol=5e-4)  # same place, fewer pixels


def test_runs_offered_are_only_those_under_the_runs_folder(monkeypatch, runs_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "run.json").write_text((runs_dir / "gorkha" / "run.json").read_text())
    for mode in ("Patch", "Runs"):
        at = _page(monkeypatch, tmp_path, runs_dir)  # tmp_path: a models folder with no models
        at.radio(key="mode").set_value(mode).run()
        assert not at.text_input and not at.text_area  # no server path typed into the page
    assert at.selectbox(key="run").options == ["gorkha", "single_b"]
    assert str(runs_dir) not in _texts(at)


def test_uploads_over_the_cap_are_refused(monkeypatch, models_dir, tmp_path):
    image = tmp_path / "image_9.h5"
    write_l4s_patch(image, synthetic_scene(256, 256, seed=9)[0])
    size = image.stat().st_size
    assert size > 2_000_000  # 256 x 256 x 14 float32
    with pytest.raises(InputError, match="over the upload limit of 1 MB"):
        uploads.check_upload_size(image.name, size, limit_mb=1)
    uploads.check_upload_size(image.name, size, limit_mb=5)
    monkeypatch.setenv(MAX_UPLOAD_ENV, "1")
    at = _page(monkeypatch, models_dir)
    at.file_uploader(key="patch").upload(image.name, image.read_bytes())
    at.run()
    assert not at.exception and "over the upload limit of 1 MB" in at.main.error[0].value
    assert not at.button


def test_ground_truth_is_drawn_cyan_over_exactly_its_landslide_pixels():
    from landslide_batch.app import pictures

    rgb = np.full((4, 5, 3), 100, np.uint8)
    truth = np.zeros((4, 5), bool)
    truth[1:3, 2:4] = True
    drawn = pictures.overlay(rgb, truth, colour=pictures.TRUTH)
    assert (drawn[~truth] == 100).all()
    assert (drawn[truth] == np.round(0.45 * 100 + 0.55 * np.array(pictures.TRUTH))).all()
