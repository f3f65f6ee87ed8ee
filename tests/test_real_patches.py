"""Real Landslide4Sense patches (float64, B10 up to ~14) through ingest, ``run``, ``evaluate`` (with and
without test-time augmentation), the app and the region pipeline, with a model imported from a checkpoint
in the study's layout. Skipped, with the reason, where the shared sample is absent."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
from test_study_import import lightning_state

from landslide_batch.app import MODELS_ENV, PAGE, inference, model_folders, uploads
from landslide_batch.cli import main
from landslide_batch.config import EnsembleConfig, EnsembleMember, job_from_dict
from landslide_batch.infer.predictor import EnsemblePredictor
from landslide_batch.ingest.h5patch import ingest_h5, read_l4s_h5, read_l4s_mask
from landslide_batch.metrics import Counts, confusion_counts
from landslide_batch.models._torchvision_compat import ensure_torchvision
from landslide_batch.models.study import import_checkpoint
from landslide_batch.synthetic import write_geotiff

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "landslide4sense" / "labelled"
pytestmark = pytest.mark.skipif(
    not (SAMPLE / "img").is_dir(), reason=f"real Landslide4Sense sample not found at {SAMPLE}"
)
IDS = sorted(int(p.stem.split("_")[1]) for p in (SAMPLE / "img").glob("image_*.h5")) if SAMPLE.is_dir() else []
MOSAIC = (512, 600, 16, 27)  # 2 x 2 patches, row by row


def _image(n: int) -> Path:
    return SAMPLE / "img" / f"image_{n}.h5"


def _mask(n: int) -> Path:
    return SAMPLE / "mask" / f"mask_{n}.h5"


@pytest.fixture(scope="module")
def study_model(tmp_path_factory):
    """(model folder imported from a study-layout mobilenetv2 checkpoint, its independent smp network).
    The head is scaled so that logits on a real patch have std 2 around 0: a map that varies."""
    ensure_torchvision()
    import segmentation_models_pytorch as smp

    torch.manual_seed(7)
    net = smp.Unet(encoder_name="mobilenet_v2", encoder_weights=None, in_channels=14, classes=1).eval()
    head = net.segmentation_head[0]
    with torch.no_grad():
        y = net(torch.from_numpy(read_l4s_h5(_image(512)))[None])
        gain = 2.0 / float(y.std())
        head.weight.mul_(gain)
        head.bias.mul_(gain).sub_(float(y.mean()) * gain)
    root = tmp_path_factory.mktemp("real")
    torch.save(lightning_state(net), root / "mobilenetv2.pth")
    import_checkpoint("mobilenetv2", root / "mobilenetv2.pth", root / "models" / "study_mobilenetv2")
    return root / "models" / "study_mobilenetv2", net


def test_float64_patches_are_read_exactly_and_ingested(tmp_path):
    assert len(IDS) == 21
    for n in IDS:
        with h5py.File(_image(n)) as f:
            raw = f["img"][()]
        assert raw.dtype == np.float64 and raw.shape == (128, 128, 14)
        bands = read_l4s_h5(_image(n))
        assert bands.dtype == np.float32
        np.testing.assert_allclose(bands, np.moveaxis(raw, -1, 0), rtol=1e-7)
        assert read_l4s_mask(_mask(n)).dtype == np.uint8
    assert max(float(read_l4s_h5(_image(n))[9].max()) for n in IDS) > 10  # B10 well above reflectance
    scene = ingest_h5(_image(512), tmp_path / "scene.zarr", chunk=128).finish()
    got, valid = scene.read(0, 128, 0, 128)
    assert valid.all() and np.array_equal(got, read_l4s_h5(_image(512)))


def _independent_probability(net: torch.nn.Module, bands: np.ndarray, tta: bool) -> np.ndarray:
    """The study's inference by hand: raw bands, NaN -> 1e-6, sigmoid; with ``tta`` the 8 flips and
    rotations, each turned back, averaged in numpy."""
    x = np.nan_to_num(bands, nan=1e-6)
    views = [(k, f) for f in (False, True) for k in range(4)] if tta else [(0, False)]
    out = []
    for k, f in views:
        v = np.rot90(x[:, :, ::-1] if f else x, k, axes=(1, 2))
        with torch.no_grad():
            p = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(v))[None]))[0, 0].numpy()
        p = np.rot90(p, -k)
        out.append(p[:, ::-1] if f else p)
    return np.mean(out, axis=0)


def test_evaluate_on_the_21_labelled_patches_with_and_without_tta(study_model, tmp_path, capsys):
    folder, net = study_model
    assert main(["evaluate", "--data", str(SAMPLE), "--model", str(folder), "--tta", "--out", str(tmp_path)]) == 0
    rows = {r["model"]: r for r in csv.DictReader(open(tmp_path / "metrics.csv"))}
    assert list(rows) == ["study_mobilenetv2", "study_mobilenetv2 +TTA"]
    for name, tta in (("study_mobilenetv2", False), ("study_mobilenetv2 +TTA", True)):
        counts = Counts()
        for n in IDS:
            counts += confusion_counts(
                _independent_probability(net, read_l4s_h5(_image(n)), tta) >= 0.5, read_l4s_mask(_mask(n))
            )
        got = {k: int(rows[name][k]) for k in ("tp", "fp", "fn", "tn")}
        assert got["tp"] + got["fp"] + got["fn"] + got["tn"] == 21 * 128 * 128
        # Same decisions but for pixels within float noise of the threshold.
        assert all(abs(got[k] - getattr(counts, k)) <= 5 for k in got), (name, got, counts)
    assert rows["study_mobilenetv2"]["tp"] != rows["study_mobilenetv2 +TTA"]["tp"]  # TTA changed the map


def test_tta_map_turns_with_the_patch(study_model):
    folder, _ = study_model
    predictor = EnsemblePredictor(
        EnsembleConfig(members=[EnsembleMember(model=folder)]),
        tile=128,
        stride=128,
        blend="mean",
        device="cpu",
        tta=True,
    )
    bands = read_l4s_h5(_image(512))
    valid = np.ones((128, 128), bool)
    prob, _ = predictor.predict_window(bands, valid)
    turned, _ = predictor.predict_window(np.ascontiguousarray(np.rot90(bands, 1, axes=(1, 2))), valid)
    flipped, _ = predictor.predict_window(np.ascontiguousarray(bands[:, ::-1]), valid)
    assert prob.std() >= 0.05
    assert np.abs(turned - np.rot90(prob)).max() <= 1e-5 and np.abs(flipped - prob[::-1]).max() <= 1e-5


def test_run_on_a_real_patch_reports_pixels_and_the_assumed_grid(study_model, tmp_path, capsys):
    folder, _ = study_model
    out = tmp_path / "map"
    assert main(["run", "--scene", str(_image(512)), "--model", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "run.json").read_text())["summary"]
    with rasterio.open(out / "probability.tif") as ds:
        prob = ds.read(1)
    slide = int((prob >= summary["threshold"]).sum())
    assert summary["landslide_pixels"] == slide > 0 and summary["valid_pixels"] == 128 * 128
    assert summary["area_mapped_km2"] is None and summary["assumed_pixel_m"] == 10.0
    assert (
        f"{slide} of 16384 pixels mapped as landslide (no georeference; on the 10 m Landslide4Sense grid, "
        f"assumed: {slide * 1e-4:.4f} km² of 1.6384 km²)" in printed
    )
    assert "0.000 km²" not in printed


def test_a_georeferenced_mosaic_of_real_patches_runs_through_the_region_pipeline(study_model, tmp_path):
    from landslide_batch.pipeline import run_job

    folder, _ = study_model
    tiles = [np.moveaxis(h5py.File(_image(n))["img"][()], -1, 0) for n in MOSAIC]  # float64, as released
    mosaic = np.concatenate([np.concatenate(tiles[:2], axis=2), np.concatenate(tiles[2:], axis=2)], axis=1)
    scene = write_geotiff(tmp_path / "mosaic.tif", mosaic, crs="EPSG:32645", pixel=10.0)
    maps = {}
    for tta in (False, True):
        out = tmp_path / f"map_tta{tta}"
        manifest = run_job(
            job_from_dict({"scene": str(scene), "out": str(out), "models": [str(folder)], "block": 128, "tta": tta})
        )
        s = manifest["summary"]
        assert s["area_mapped_km2"] == pytest.approx(256 * 256 * 100 / 1e6) and s["assumed_pixel_m"] is None
        with rasterio.open(out / "probability.tif") as ds:
            assert ds.crs.to_epsg() == 32645 and ds.res == (10.0, 10.0) and ds.shape == (256, 256)
            maps[tta] = ds.read(1)
        assert s["landslide_pixels"] == int((maps[tta] >= s["threshold"]).sum())
        assert s["landslide_area_km2"] == pytest.approx(s["landslide_pixels"] * 100 / 1e6)
    assert maps[False].std() >= 0.05 and np.abs(maps[True] - maps[False]).max() > 0.01


@pytest.fixture
def app_models(study_model, tmp_path):
    root = tmp_path / "app-models"
    root.mkdir()
    # A copy: the app offers no model folder that a symlink takes out of its models folder.
    shutil.copytree(study_model[0], root / study_model[0].name)
    return root


def test_app_maps_a_real_patch_and_its_npy_download_is_the_prediction(app_models, monkeypatch):
    """The app accepts a real float64 patch and its mask; the ``.npy`` it offers loads with ``np.load``
    and holds the probability map the page shows (as the app computes it) and the mask at its threshold."""
    from streamlit.testing.v1 import AppTest
    from streamlit.testing.v1 import app_test as app_test_module

    stores = []

    class RecordingStorage(app_test_module.MemoryMediaFileStorage):  # where the download's bytes live
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    monkeypatch.setenv(MODELS_ENV, str(app_models))
    at = AppTest.from_file(str(PAGE), default_timeout=120).run()
    at.file_uploader(key="patch").upload("image_512.h5", _image(512).read_bytes())
    at.file_uploader(key="truth").upload("mask_512.h5", _mask(512).read_bytes())
    at.run()
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    assert [m.label for m in at.metric] == ["Precision", "Recall", "F1", "IoU"]
    buttons = {b.label: b.proto.url for b in at.get("download_button")}
    assert list(buttons) == ["probability .npy", "mask .npy"]

    def downloaded(url: str) -> np.ndarray:
        content = stores[-1].get_file(url.rsplit("/", 1)[-1]).content
        return np.load(io.BytesIO(content))

    patch = uploads.load_patch("image_512.h5", _image(512).read_bytes())
    entry = model_folders.find_models(app_models)[0][0]
    shown = inference.predict(inference.load_predictor(entry.path), entry, patch)
    prob = downloaded(buttons["probability .npy"])
    assert prob.shape == (128, 128) and prob.dtype == np.float32 and prob.std() >= 0.05
    assert np.array_equal(prob, shown.probability)
    assert np.array_equal(downloaded(buttons["mask .npy"]), (prob >= shown.threshold).astype(np.uint8))
