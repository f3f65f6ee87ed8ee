"""The predictor against the plain model: same numbers, whatever it does for speed."""

import numpy as np
import pytest
import torch
from conftest import make_varying_model
from maps import assert_same_map

from landslide_batch.bands import derive_features
from landslide_batch.config import EnsembleConfig, EnsembleMember
from landslide_batch.infer.predictor import EnsemblePredictor, _balanced_batches
from landslide_batch.models.card import load_model_folder


@pytest.fixture(scope="module")
def varying_plain_model(tmp_path_factory, tiny_plain_model, scene_arrays):
    """``tiny_plain_model`` with a head and normalisation that make its map vary on the scene."""
    _, card = load_model_folder(tiny_plain_model)
    out = tmp_path_factory.mktemp("models") / "plain_varying"
    make_varying_model(tiny_plain_model, out, derive_features(scene_arrays[0], card.features))
    return out


@pytest.mark.parametrize("fixture", ["varying_model", "varying_plain_model"])
def test_one_tile_equals_the_model_on_normalised_features(request, scene_arrays, fixture):
    folder = request.getfixturevalue(fixture)
    bands = np.ascontiguousarray(scene_arrays[0][:, :128, :128])
    bands[:, :3, :3] = np.nan
    valid = np.isfinite(bands).all(0)
    predictor = EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=folder)]), device="cpu")
    prob, spread = predictor.predict_window(bands, valid)

    model, card = load_model_folder(folder)
    feats = derive_features(bands, card.features)
    mean = np.array(card.normalization.mean, np.float32)[:, None, None]
    std = np.array(card.normalization.std, np.float32)[:, None, None]
    x = torch.from_numpy(np.nan_to_num((feats - mean) / std, nan=0.0))[None]
    with torch.inference_mode():
        expected = torch.sigmoid(model(x))[0, 0].numpy()
    assert_same_map(prob, expected, atol=1e-4)
    assert (spread == 0).all() and predictor.forward_passes == 1


def test_window_must_be_covered_by_tiles(tiny_model):
    predictor = EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=tiny_model)]), device="cpu")
    with pytest.raises(ValueError, match="not covered exactly"):
        predictor.predict_window(np.zeros((14, 150, 128), np.float32), np.ones((150, 128), bool))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 255, 256, 272, 289])
def test_balanced_batches_cover_every_tile_once_in_near_equal_batches(n):
    batches = _balanced_batches(list(range(n)), 16)
    assert [i for b in batches for i in b] == list(range(n))  # every tile once, in order
    assert len(batches) == -(-n // 16)  # as few forward passes as fixed-size batches
    sizes = {len(b) for b in batches}
    assert max(sizes, default=0) <= 16 and max(sizes, default=0) - min(sizes, default=0) <= 1


def test_models_loading_in_another_thread_do_not_disturb_a_prediction(scene_arrays, tiny_model):
    """Loading folds BatchNorm with torch.fx, which patches every module call in the process while
    it traces; a prediction running meanwhile in another thread must neither fail nor change."""
    import threading

    bands, valid = scene_arrays[0][:, :192, :192], np.ones((192, 192), bool)
    cfg = EnsembleConfig(members=[EnsembleMember(model=tiny_model)])
    predictor = EnsemblePredictor(cfg, device="cpu")
    expected, _ = predictor.predict_window(bands, valid)
    loader = threading.Thread(target=lambda: [EnsemblePredictor(cfg, device="cpu") for _ in range(4)])
    loader.start()
    while loader.is_alive():
        np.testing.assert_array_equal(predictor.predict_window(bands, valid)[0], expected)
    loader.join()


def test_windows_of_other_valid_pixels_in_turn_give_what_a_fresh_predictor_gives(scene_arrays, varying_model):
    """Nothing a window leaves in the predictor changes the next: windows whose valid pixels run
    other tiles (or whose size differs), predicted in turn by one predictor, give exactly the
    maps of a fresh predictor each (the NaN where no tile ran included)."""
    bands = np.ascontiguousarray(scene_arrays[0][:, :256, :256])
    full = np.ones((256, 256), bool)
    holed = full.copy()
    holed[:130, :130] = False  # the first tile does not run: the weights sum to 0 on its corner
    windows = [(bands, full), (bands, holed), (bands[:, :192, :256], full[:192]), (bands, full)]
    cfg = EnsembleConfig(members=[EnsembleMember(model=varying_model)])
    shared = EnsemblePredictor(cfg, device="cpu")
    for window, valid in windows:
        got, got_spread = shared.predict_window(window, valid)
        want, want_spread = EnsemblePredictor(cfg, device="cpu").predict_window(window, valid)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_spread, want_spread)
    a, b = (shared.predict_window(bands, v)[0] for v in (full, holed))
    assert float(np.nanstd(a)) >= 0.05 and np.isfinite(a).all()
    assert np.isnan(b[:64, :64]).all() and np.isfinite(b[64:, 64:]).all()  # no tile ran there: no weight
