"""Training: data checks, losses, augmentation, configs, and a 2-worker Ray Train run on CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from landslide_batch.bands import derive_features, resolve_features
from landslide_batch.errors import ConfigError, InputError
from landslide_batch.infer.executors import shutdown_ray
from landslide_batch.ingest.h5patch import read_l4s_h5, read_l4s_mask
from landslide_batch.models.registry import MODEL_ZOO
from landslide_batch.synthetic import synthetic_scene, write_l4s_patch
from landslide_training.augment import dihedral, random_dihedral
from landslide_training.config import TrainConfig, load_train_config
from landslide_training.dataset import PatchDataset, find_pairs, normalize, scan_split
from landslide_training.losses import bce, dice, focal, make_loss
from landslide_training.train import LOG_FILE, train

ROOT = Path(__file__).resolve().parents[1]
PATCH = 64


def make_split(folder: Path, n: int, seed: int, layout=("img", "mask"), size: int = PATCH) -> Path:
    """An L4S-format split of ``n`` patches cut from a synthetic scene."""
    side = int(np.ceil(np.sqrt(n))) * size
    bands, labels = synthetic_scene(side, side, seed=seed, density=3.0)
    (folder / layout[0]).mkdir(parents=True)
    (folder / layout[1]).mkdir(parents=True)
    corners = [(y, x) for y in range(0, side, size) for x in range(0, side, size)][:n]
    for i, (y, x) in enumerate(corners, 1):
        write_l4s_patch(
            folder / layout[0] / f"image_{i}.h5",
            bands[:, y : y + size, x : x + size],
            folder / layout[1] / f"mask_{i}.h5",
            labels[y : y + size, x : x + size],
        )
    return folder


@pytest.fixture(scope="module")
def l4s(tmp_path_factory):
    root = tmp_path_factory.mktemp("l4s")
    return make_split(root / "train", 8, seed=5), make_split(root / "val", 4, seed=6)


# --- data ---------------------------------------------------------------------------------


def test_pairs_in_both_layouts(tmp_path):
    a = find_pairs(make_split(tmp_path / "a", 3, seed=1))
    b = find_pairs(make_split(tmp_path / "b", 3, seed=1, layout=("images", "masks")))
    assert [p.number for p in a] == [p.number for p in b] == [1, 2, 3]
    assert all(p.image.name == f"image_{p.number}.h5" and p.mask.name == f"mask_{p.number}.h5" for p in b)


def test_missing_mask_is_a_clear_error(tmp_path):
    root = make_split(tmp_path / "s", 3, seed=1)
    (root / "mask" / "mask_2.h5").unlink()
    with pytest.raises(InputError, match=r"no mask for 1 image.*image_2\.h5"):
        find_pairs(root)


def test_orphan_mask_and_wrong_layout_are_errors(tmp_path):
    root = make_split(tmp_path / "s", 2, seed=1)
    (root / "img" / "image_1.h5").unlink()
    with pytest.raises(InputError, match="without an image.*mask_1.h5"):
        find_pairs(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="img/ \\+ mask/"):
        find_pairs(tmp_path / "empty")


def test_wrong_shapes_and_values_are_errors(tmp_path):
    root = make_split(tmp_path / "s", 1, seed=1)
    pair = find_pairs(root)[0]
    feats = resolve_features("l4s14")
    with h5py.File(pair.image, "w") as f:
        f.create_dataset("img", data=np.zeros((PATCH, PATCH, 13), np.float32))
    with pytest.raises(InputError, match="expected 14 bands"):
        scan_split([pair], feats)
    write_l4s_patch(pair.image, np.zeros((14, PATCH, PATCH), np.float32))
    with h5py.File(pair.mask, "w") as f:
        f.create_dataset("mask", data=np.zeros((PATCH, PATCH + 1), np.uint8))
    with pytest.raises(InputError, match="mask is 64x65 but image"):
        scan_split([pair], feats)
    with h5py.File(pair.mask, "w") as f:
        f.create_dataset("mask", data=np.full((PATCH, PATCH), 255, np.uint8))
    with pytest.raises(InputError, match="must be 0 or 1, found \\[255\\]"):
        scan_split([pair], feats)


def test_corrupt_h5_is_an_error(tmp_path):
    root = make_split(tmp_path / "s", 2, seed=1)
    pairs = find_pairs(root)
    pairs[1].image.write_bytes(pairs[1].image.read_bytes()[:200])
    with pytest.raises(InputError, match="image_2.h5: not a readable HDF5 file"):
        scan_split(pairs, resolve_features("l4s14"))


def test_streaming_statistics_and_nan_handling(tmp_path):
    root = make_split(tmp_path / "s", 4, seed=2)
    pairs = find_pairs(root)
    write_l4s_patch(
        pairs[0].image, np.where(np.arange(PATCH)[None, :, None] < 5, np.nan, synthetic_scene(PATCH, PATCH, seed=9)[0])
    )
    feats = resolve_features("rgb_ndvi_slope_dem")
    summary = scan_split(pairs, feats)
    every = np.concatenate(
        [derive_features(read_l4s_h5(p.image), feats).reshape(len(feats), -1) for p in pairs], axis=1
    )
    np.testing.assert_allclose(summary.normalization.mean, np.nanmean(every, 1), rtol=1e-6)
    np.testing.assert_allclose(summary.normalization.std, np.nanstd(every, 1), rtol=1e-5)
    assert summary.patches == 4 and summary.size == PATCH and summary.pixels == 4 * PATCH * PATCH
    x, y = PatchDataset(pairs, feats, summary.normalization)[0]
    assert x.shape == (6, PATCH, PATCH) and y.shape == (1, PATCH, PATCH)
    assert torch.isfinite(x).all()
    # NaN -> 0 = the feature's mean, NDVI over NaN bands included.
    assert (x[:, :5] == 0).all()
    assert summary.sha256 == scan_split(pairs, feats).sha256


def test_cut_scene_geotiff_into_l4s(tmp_path):
    from landslide_batch.synthetic import write_geotiff
    from landslide_training.patches import cut_scene

    bands, labels = synthetic_scene(2 * PATCH, 3 * PATCH, seed=4)
    bands[:, PATCH:, 2 * PATCH :] = np.nan  # one patch without valid pixels: skipped
    scene, lab = write_geotiff(tmp_path / "s.tif", bands), write_geotiff(tmp_path / "l.tif", labels, dtype="uint8")
    assert cut_scene(scene, lab, tmp_path / "split", size=PATCH) == 5
    pairs = find_pairs(tmp_path / "split")
    x, y = read_l4s_h5(pairs[4].image), read_l4s_mask(pairs[4].mask)
    np.testing.assert_array_equal(x, bands[:, PATCH:, PATCH : 2 * PATCH])
    np.testing.assert_array_equal(y, labels[PATCH:, PATCH : 2 * PATCH])
    with pytest.raises(InputError, match="not empty"):
        cut_scene(scene, lab, tmp_path / "split", size=PATCH)
    small = write_geotiff(tmp_path / "small.tif", labels[:PATCH], dtype="uint8")
    with pytest.raises(InputError, match=r"one band of 128x192 px like the scene .*, found 1 band\(s\) of 64x192"):
        cut_scene(scene, small, tmp_path / "other", size=PATCH)


def test_normalize_maps_nan_to_the_mean():
    from landslide_batch.models.card import Normalization

    x = np.array([[[np.nan, 3.0]]], np.float32)
    np.testing.assert_array_equal(normalize(x, Normalization(mean=[1.0], std=[2.0])), [[[0.0, 1.0]]])


# --- losses and augmentation --------------------------------------------------------------


def test_losses_sanity():
    target = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    perfect = (target * 2 - 1) * 20  # confident and right
    assert dice(perfect, target) < 1e-3
    assert bce(perfect, target) < 1e-6
    wrong = -perfect
    assert dice(wrong, target) > 0.99
    easy = (target * 2 - 1) * 3  # right with p ~ 0.95: focal down-weights these pixels
    assert focal(easy, target, alpha=None) < 0.01 * bce(easy, target)
    assert focal(easy, target) < bce(easy, target)
    assert focal(wrong, target, alpha=None) > 0.9 * bce(wrong, target)  # hard pixels keep nearly full weight
    assert bce(easy, target, pos_weight=5.0) > bce(easy, target)
    base = dict(model="unet_plain", train_data="a", val_data="b", out="c")
    for name in ("bce", "dice", "bce_dice", "focal"):
        loss = make_loss(TrainConfig(**base, loss=name))(easy, target)
        assert loss.ndim == 0 and 0 < loss < 1
    both = make_loss(TrainConfig(**base, loss="bce_dice", bce_weight=0.3))(easy, target)
    assert both == pytest.approx(float(0.3 * bce(easy, target) + 0.7 * dice(easy, target)))


def test_dihedral_group_and_paired_augmentation():
    x = torch.arange(16.0).reshape(1, 4, 4)
    images = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(images) == 8  # all 8 symmetries of the square are distinct
    batch = torch.randn(6, 3, 8, 8)
    mask = (batch[:, :1] > 0).float()  # a pixel-wise function of the image
    xa, ya = random_dihedral(batch, mask, torch.Generator().manual_seed(1))
    assert torch.equal(ya, (xa[:, :1] > 0).float())  # image and mask moved together


# --- configs ------------------------------------------------------------------------------


def test_a_training_config_for_every_zoo_model():
    for name in MODEL_ZOO:
        path = ROOT / "configs" / "train" / f"{name}.yaml"
        cfg = load_train_config(path)
        assert cfg.model == name
        assert cfg.train_data.resolve() == ROOT / "data" / "l4s" / "train"  # relative to the YAML
        assert cfg.out.resolve() == ROOT / "models" / name
    from landslide_batch.config import load_ensemble

    ens = load_ensemble(ROOT / "configs" / "ensemble_zoo.yaml")
    assert sorted(m.model.name for m in ens.members) == sorted(MODEL_ZOO)
    assert all(m.model.resolve().parent == ROOT / "models" for m in ens.members)


def test_config_overrides_and_errors(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        yaml.safe_dump({"model": "unet_resnet34", "train_data": "d/train", "val_data": "d/val", "out": "m"})
    )
    cfg = load_train_config(path, {"epochs": 3, "out": "/abs/model", "use_gpu": None})
    assert (cfg.epochs, cfg.out, cfg.use_gpu, cfg.train_data) == (3, Path("/abs/model"), False, tmp_path / "d/train")
    assert cfg.feature_names == list(resolve_features("l4s14"))
    path.write_text(yaml.safe_dump({"model": "unet_nope", "train_data": "a", "val_data": "b", "out": "c", "lossx": 1}))
    with pytest.raises(ConfigError, match="unknown model 'unet_nope'.*\n.*lossx"):
        load_train_config(path)


def test_train_checks_data_before_starting_ray(tmp_path, l4s):
    cfg = TrainConfig(model="unet_plain", train_data=tmp_path / "none", val_data=l4s[1], out=tmp_path / "m")
    with pytest.raises(InputError, match="does not exist"):
        train(cfg)
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg.model_copy(update={"train_data": l4s[0]}))


def test_evaluate_an_ensemble_yaml(tmp_path, l4s, tiny_plain_model, tiny_model):
    from landslide_training.evaluate import evaluate, write_reports

    ens = tmp_path / "ens.yaml"
    ens.write_text(
        yaml.safe_dump(
            {
                "members": [{"model": str(tiny_plain_model), "weight": 2.0}, {"model": str(tiny_model), "weight": 1.0}],
                "threshold": 0.3,
            }
        )
    )
    evals = evaluate(l4s[1], [tiny_model], ens, batch_size=3, device="cpu")
    assert [e.name for e in evals] == ["unet_mobilenet_v2", "unet_plain", "ensemble (ens.yaml)"]
    assert evals[-1].predictor.threshold == 0.3
    for e in evals:
        assert sum(vars(e.counts).values()) == 4 * PATCH * PATCH == e.pos.sum() + e.neg.sum()
    written = write_reports(evals, tmp_path / "out", l4s[1], pr_curve=False)
    assert [p.name for p in written] == ["metrics.md", "metrics.csv"]
    with pytest.raises(ConfigError, match="at least one --model"):
        evaluate(l4s[1])


# --- Ray Train end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for this module (shut down after it unless someone else started it)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2)
    yield
    if started:
        shutdown_ray()


@pytest.mark.slow
def test_two_worker_training_resume_predictor_and_evaluate(tmp_path, l4s, local_ray, capsys):
    from landslide_batch.cli import main
    from landslide_batch.config import EnsembleConfig, EnsembleMember
    from landslide_batch.infer.predictor import EnsemblePredictor
    from landslide_batch.models.card import read_card

    train_dir, val_dir = l4s
    config = tmp_path / "plain.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": "unet_plain",
                "train_data": str(train_dir),
                "val_data": str(val_dir),
                "out": "models/first",
                "run_dir": "runs",
                "batch_size": 2,
                "lr": 3e-3,
                "epochs": 5,
                "num_workers": 1,
            }
        )
    )
    # 2 DDP workers on CPU (gloo) through the CLI; flags override the YAML.
    assert main(["train", str(config), "--num-workers", "2", "--epochs", "1"]) == 0
    first = tmp_path / "models" / "first"
    card = read_card(first)
    assert card.trained and card.arch == "PlainUnet" and card.features == list(resolve_features("rgb_ndvi_slope_dem"))
    assert card.training["num_workers"] == 2 and card.training["result"]["epochs_run"] == 1
    assert set(card.metrics) == {"val_precision", "val_recall", "val_f1", "val_iou"}
    assert set(card.data_hashes) == {"train", "val"} and 0 < card.threshold < 1
    assert card.normalization.mean[-1] > 100  # DEM statistics, not identity
    rows = list(csv.DictReader(open(first / LOG_FILE)))
    assert [r["epoch"] for r in rows] == ["1"]

    # Resume: the run's checkpoint (epoch 1) is picked up by a rerun with the same run folder.
    first.rename(tmp_path / "models" / "kept")
    cfg = load_train_config(config, {"num_workers": 2, "epochs": 2})
    resumed = train(cfg)
    rows2 = list(csv.DictReader(open(first / LOG_FILE)))
    assert [r["epoch"] for r in rows2] == ["1", "2"] and rows2[0] == rows[0]
    assert resumed.training["result"]["epochs_run"] == 2
    with pytest.raises(ConfigError, match="other data or another model"):  # checked before Ray starts
        train(cfg.model_copy(update={"train_data": val_dir, "out": tmp_path / "elsewhere" / "first"}))

    # The model folder works with the inference predictor (64 px tiles over a 128 px window).
    bands, _ = synthetic_scene(128, 128, seed=8)
    predictor = EnsemblePredictor(
        EnsembleConfig(members=[EnsembleMember(model=first)]), tile=PATCH, stride=PATCH // 2, device="cpu"
    )
    prob, spread = predictor.predict_window(bands, np.ones((128, 128), bool))
    assert prob.shape == (128, 128) and np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()
    assert predictor.threshold == pytest.approx(resumed.threshold)

    # ... and with `evaluate`: per model and their ensemble; on the validation split the
    # training-time F1 is reproduced through the inference code (no train/inference skew).
    out = tmp_path / "eval"
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(val_dir),
                "--model",
                str(first),
                "--model",
                str(tmp_path / "models" / "kept"),
                "--out",
                str(out),
                "--pr-curve",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| model | threshold | precision | recall | F1 | IoU |" in printed
    table = {r["model"]: r for r in csv.DictReader(open(out / "metrics.csv"))}
    assert set(table) == {"first", "kept", "ensemble (equal weights)"}
    assert float(table["first"]["f1"]) == pytest.approx(resumed.metrics["val_f1"], abs=0.01)
    assert float(table["kept"]["f1"]) == pytest.approx(card.metrics["val_f1"], abs=0.01)
    total = sum(int(table["first"][k]) for k in ("tp", "fp", "fn", "tn"))
    assert total == 4 * PATCH * PATCH
    assert (out / "metrics.md").read_text().count("|") > 20 and (out / "pr_curve.png").stat().st_size > 1000
    assert json.loads((first / "card.json").read_text())["weights_sha256"]
