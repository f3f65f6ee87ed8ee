"""The web app: its logic as plain functions, and the page through Streamlit's AppTest.

AppTest uploads files through ``file_uploader(...).upload`` (Streamlit >= 1.5x), so the page
is driven exactly as a user drives it; no test hook in the page.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from PIL import Image
from streamlit.testing.v1 import AppTest

from landslide_batch.app import MODELS_ENV, PAGE, RUNS_ENV, logic
from landslide_batch.cli import build_parser, main
from landslide_batch.commands.app import streamlit_command
from landslide_batch.errors import InputError
from landslide_batch.synthetic import synthetic_scene, write_geotiff, write_l4s_patch

TIMEOUT = 120  # model loading on a busy 2-core machine


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_model, tiny_plain_model) -> Path:
    root = tmp_path_factory.mktemp("app-models")
    for model in (tiny_model, tiny_plain_model):
        (root / model.name).symlink_to(model, target_is_directory=True)
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
    return "\n".join(e.value for kind in ("markdown", "caption", "subheader", "error", "warning", "info")
                     for e in getattr(at, kind)) + "\n" + "\n".join(at.sidebar.markdown.values)


# ---------------------------------------------------------------------------- logic

@pytest.mark.parametrize("n, size", [(128, 128), (1, 128), (129, 192), (192, 192), (300, 320)])
def test_padded_size_is_smallest_tiled_window(n, size):
    assert logic.padded_size(n) == size


def test_odd_sized_geotiff_is_padded_cropped_and_downloadable_as_geotiff(tmp_path, tiny_model):
    bands = synthetic_scene(100, 90, seed=2)[0]
    bands[:, :5, :7] = np.nan
    src = write_geotiff(tmp_path / "p.tif", bands)
    patch = logic.load_patch("p.tif", src.read_bytes())
    assert patch.georeferenced and patch.valid.sum() == 100 * 90 - 35
    model = logic.find_models(tiny_model)[0][0]
    pred = logic.predict(logic.load_predictor(tiny_model), model, patch)
    assert pred.probability.shape == (100, 90)
    assert np.isnan(pred.probability[:5, :7]).all() and not pred.mask[:5, :7].any()
    assert np.isfinite(pred.probability[patch.valid]).all()
    (tmp_path / "out.tif").write_bytes(logic.geotiff_bytes(pred.probability, patch, nodata=float("nan")))
    with rasterio.open(tmp_path / "out.tif") as ds, rasterio.open(src) as ref:
        assert ds.crs == ref.crs and ds.transform == ref.transform
        np.testing.assert_array_equal(ds.read(1), pred.probability)


@pytest.mark.parametrize("name, make, message", [
    ("image_1.h5", lambda p: _h5(p, np.zeros((128, 128, 3), np.float32)), "expected 14 bands"),
    ("image_1.h5", lambda p: b"this is not an HDF5 file", "not a readable HDF5 file"),
    ("image_1.h5", lambda p: _h5(p, np.full((128, 128, 14), np.nan, np.float32)), "no valid pixel"),
    ("scene.tif", lambda p: write_geotiff(p, np.ones((3, 32, 32), np.float32)).read_bytes(), "found 3"),
    ("scene.jpg", lambda p: b"\xff\xd8", "expected an L4S .h5 patch or a 14-band GeoTIFF"),
])
def test_bad_patch_uploads_raise_input_errors_naming_the_upload(tmp_path, name, make, message):
    with pytest.raises(InputError, match=message) as err:
        logic.load_patch(name, make(tmp_path / name))
    assert str(err.value).startswith(name) and str(tmp_path) not in str(err.value)


def test_mask_must_match_the_patch(tmp_path):
    data = _h5(tmp_path / "mask_1.h5", np.ones((64, 64), np.uint8), name="mask")
    assert logic.load_mask("mask_1.h5", data, (64, 64)).all()
    with pytest.raises(InputError, match="the patch is 128 x 128"):
        logic.load_mask("mask_1.h5", data, (128, 128))


def test_app_command_hands_options_to_streamlit(tmp_path, monkeypatch):
    monkeypatch.delenv(RUNS_ENV, raising=False)
    args, extra = build_parser().parse_known_args(
        ["app", "--server.port", "8600", "--models-dir", str(tmp_path), "--server.headless", "true"])
    args.extra = extra
    argv, env = streamlit_command(args)
    assert argv[1:] == ["-m", "streamlit", "run", str(PAGE), "--server.port", "8600", "--server.headless", "true"]
    assert env[MODELS_ENV] == str(tmp_path.resolve()) and RUNS_ENV not in env
    assert main(["app", "--models-dir", str(tmp_path / "missing")]) == 2


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
    assert captions == ["RGB (B4, B3, B2)", f"Mask (threshold {0.5:.2f})", "Overlay on RGB",
                        "Probability (viridis, 0 → 1)"]
    at.run()  # a rerun (any other widget) shows the stored result without pressing Run again
    assert len(at.image) == 4


def test_all_models_side_by_side(monkeypatch, models_dir, l4s_pair):
    image, mask = l4s_pair
    at = _page(monkeypatch, models_dir)
    at.checkbox(key="run_all").check().run()
    at.file_uploader(key="patch").upload(image.name, image.read_bytes())
    at.file_uploader(key="truth").upload(mask.name, mask.read_bytes())
    at.run()
    assert at.button[0].label == "Run all models"
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    table = at.dataframe[0].value
    assert sorted(table["model"]) == sorted(m.label for m in logic.find_models(models_dir)[0])
    assert table[["precision", "recall", "f1", "iou"]].apply(lambda c: c.between(0, 1)).all().all()
    assert len(at.image) == 1 + 2 * 3  # the RGB once, then mask, overlay, probability per model
    assert len(at.get("download_button")) == 2 * 2
    assert _texts(at).count(":red[UNTRAINED]") == 2


@pytest.mark.parametrize("name, make, message", [
    ("image_1.h5", lambda p: _h5(p, np.zeros((128, 128, 3), np.float32)), "expected 14 bands"),
    ("image_1.h5", lambda p: b"not hdf5 at all", "not a readable HDF5 file"),
    ("image_1.h5", lambda p: _h5(p, np.full((128, 128, 14), np.nan, np.float32)), "no valid pixel"),
])
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
        "status": "complete", "job_hash": "abc123", "started": "2025-01-01T10:00:00+00:00",
        "finished": "2025-01-01T10:05:00+00:00",
        "timings": {"ingest_s": 1.5, "infer_s": 250.25, "finish_s": 3.0, "total_s": 254.75},
        "inputs": {"scene": {"path": "/data/scene.tif", "sha256": "f" * 64}},
        "config": {"tile": 128, "overlap": 0.5}, "versions": {"landslide_batch": "0.1.0"},
        "models": [{"path": "/models/unet_resnet34", "name": "unet_resnet34", "arch": "Unet",
                    "encoder": "resnet34", "weight": 1.0, "trained": False, "sha256": "0" * 64}],
        "tiles": {"grid": 1200, "forward_passes": 1100},
        "blocks": {"total": 12, "computed": 10, "skipped_nodata": 2, "resumed": 0},
        "summary": {"area_mapped_km2": 123.456, "landslide_area_km2": 1.25, "objects": 42, "threshold": 0.5},
        "outputs": {"probability": "probability.tif", "uncertainty": "uncertainty.tif", "mask": "mask.tif",
                    "polygons": "landslides.gpkg", "quicklook": "quicklook.png", "zarr": "probability.zarr",
                    "sneaky": "../../secret.txt"},
    }
    (out / "run.json").write_text(json.dumps(run))
    return out


def test_runs_mode_shows_a_finished_run(monkeypatch, run_folder):
    at = _page(monkeypatch, runs_dir=run_folder.parent)
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and not at.main.error
    assert at.selectbox(key="run").value == run_folder
    assert {m.label: m.value for m in at.metric} == {
        "Landslide area": "1.250 km²", "Objects": "42", "Area mapped": "123.5 km²", "Threshold": "0.500"}
    assert at.image[0].captions == ["Quicklook"]
    details = at.table[0].value
    assert dict(zip(details["field"], details["value"]))["Blocks"] == \
        "total 12, computed 10, skipped nodata 2, resumed 0"
    assert at.table[1].value["trained"].tolist() == ["UNTRAINED"]
    labels = [b.label for b in at.get("download_button")]
    assert [lab.split(" ")[0] for lab in labels] == ["run.json", "probability.tif", "quicklook.png"]
    assert "probability.zarr is a folder" in _texts(at) and "secret" not in " ".join(labels)


def test_runs_mode_reports_a_broken_manifest(monkeypatch, run_folder):
    (run_folder / "run.json").write_text("{not json")
    at = _page(monkeypatch, runs_dir=run_folder)  # the run folder itself
    at.radio(key="mode").set_value("Runs").run()
    assert not at.exception and "not valid JSON" in at.main.error[0].value
