"""The predictor's batched block work: same maps as a per-tile loop, kept tiles included, with a
count of torch operators per block that does not grow with its tiles; and the GPU benchmark
script, run end to end at tiny sizes on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from maps import KERNEL_ATOL, assert_shift_caught

from landslide_batch.bands import derive_features
from landslide_batch.config import EnsembleConfig, EnsembleMember
from landslide_batch.infer.predictor import EnsemblePredictor, TileReuse
from landslide_batch.models.card import load_model_folder
from landslide_batch.synthetic import synthetic_scene

ROOT = Path(__file__).resolve().parents[1]
TILE, STRIDE = 128, 64


def per_tile_map(bands: np.ndarray, valid: np.ndarray, folder: Path, win: np.ndarray) -> np.ndarray:
    """An independent map: every tile with a valid pixel normalised as the card says and run
    alone, blended in float64 in a plain loop; NaN where no tile ran."""
    model, card = load_model_folder(folder)
    mean = np.array(card.normalization.mean)[:, None, None]
    std = np.array(card.normalization.std)[:, None, None]
    h, w = valid.shape
    num, den = np.zeros((h, w)), np.zeros((h, w))
    for y in range(0, h - TILE + 1, STRIDE):
        for x in range(0, w - TILE + 1, STRIDE):
            ys, xs = slice(y, y + TILE), slice(x, x + TILE)
            if not valid[ys, xs].any():
                continue
            feats = np.nan_to_num((derive_features(bands[:, ys, xs], card.features) - mean) / std, nan=card.nan_fill)
            with torch.inference_mode():
                p = torch.sigmoid(model(torch.from_numpy(feats[None].astype(np.float32))))[0, 0].numpy()
            num[ys, xs] += win * p
            den[ys, xs] += win
    with np.errstate(invalid="ignore"):
        return num / den


def batched_and_per_tile(model: Path, blend: str, loop_blend: str | None = None):
    """One window predicted by the batched predictor and by the per-tile loop (with the loop's
    window of ``loop_blend``, to plant a wrong window), over a scene whose first tile column has
    no valid pixel."""
    from test_oracle import window  # the oracle's windows, from their documented formulas

    bands, _ = synthetic_scene(320, 448, seed=5)
    valid = np.ones((320, 448), bool)
    valid[:, :150] = False  # the first tile column has no valid pixel: skipped, its pixels NaN
    bands[:, ~valid] = np.nan
    predictor = EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=model)]), blend=blend)
    got, spread = predictor.predict_window(bands, valid)
    want = per_tile_map(bands, valid, model, window(loop_blend or blend, TILE))
    assert predictor.forward_passes == 4 * 6 - 4
    assert np.nanmax(spread) == 0  # one member
    return got, want, valid


def assert_same_window(got: np.ndarray, want: np.ndarray, valid: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:, :64]).all() and np.isfinite(got[:, 64:]).all()
    assert got[valid].std() >= 0.05, "the compared map must vary"
    assert_shift_caught(want, KERNEL_ATOL)
    np.testing.assert_allclose(got, want, atol=KERNEL_ATOL, rtol=0)  # batched vs per-tile kernels


@pytest.mark.parametrize("blend", ["gaussian", "cosine", "mean"])
def test_batched_window_equals_a_per_tile_loop(varying_model, blend):
    assert_same_window(*batched_and_per_tile(varying_model, blend))


def test_a_shifted_or_wrongly_windowed_loop_fails_the_comparison(varying_model):
    """The tolerance still catches real errors: the loop's map one pixel off, or blended with
    another window."""
    got, want, valid = batched_and_per_tile(varying_model, "gaussian")
    shifted = want.copy()
    shifted[:, 65:] = want[:, 64:-1]  # one pixel to the right, inside the valid area (NaNs unchanged)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_same_window(got, shifted, valid)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_same_window(*batched_and_per_tile(varying_model, "gaussian", loop_blend="cosine"))


@pytest.mark.slow
def test_the_equality_holds_on_the_avx2_kernels_too():
    """The same comparison with torch and oneDNN held to AVX2 (CPUs without AVX-512 take those
    kernels; this one may have AVX-512, so force them in a fresh process)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    capability = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert capability == "AVX2"
    test = f"{Path(__file__)}::test_batched_window_equals_a_per_tile_loop"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "3 passed" in done.stdout, done.stdout[-3000:]


def test_kept_and_imported_tiles_give_the_map_of_a_fresh_prediction(varying_model, tiny_plain_model):
    """Block B (tile columns 3..6) after block A (0..3) of one stripe: column 3 comes from A's kept
    predictions, column 6 from another stripe (imported); B's map is that of predicting all of B."""
    cfg = EnsembleConfig(
        members=[EnsembleMember(model=varying_model, weight=2.0), EnsembleMember(model=tiny_plain_model)]
    )
    bands, _ = synthetic_scene(256, 512, seed=6)
    a_bands, b_bands = bands[:, :, :320], bands[:, :, 192:]
    valid = np.ones((256, 320), bool)
    fresh = EnsemblePredictor(cfg)
    want, want_spread = fresh.predict_window(b_bands, valid, first_tile=(0, 3))
    shared = {(r, 6): fresh_tile for r, fresh_tile in _member_tiles(fresh, b_bands, valid, column=3).items()}

    predictor, reuse = EnsemblePredictor(cfg), TileReuse()
    reuse.begin(0, {(r, 3): 1 for r in range(3)}, share=[(0, 0)])
    predictor.predict_window(a_bands, valid, first_tile=(0, 0), reuse=reuse)
    exports = reuse.end()
    assert exports[(0, 0)].shape == (2, TILE, TILE) and len(reuse.kept) == 2 * 3
    reuse.begin(1, {}, imports=shared)
    before = predictor.forward_passes
    got, spread = predictor.predict_window(b_bands, valid, first_tile=(0, 3), reuse=reuse)
    reuse.end()
    assert predictor.forward_passes - before == 2 * (12 - 3 - 3)  # per member: 3 kept, 3 imported
    assert not reuse.kept and got.std() >= 0.05
    np.testing.assert_allclose(got, want, atol=KERNEL_ATOL, rtol=0)  # tiles ran in other batches: last bits differ
    np.testing.assert_allclose(spread, want_spread, atol=KERNEL_ATOL, rtol=0)


def _member_tiles(predictor: EnsemblePredictor, bands: np.ndarray, valid: np.ndarray, column: int) -> dict:
    """Each member's predictions ``(members, t, t)`` of the tiles of one column of a window, as
    another stripe would send them: the column predicted alone by a one-column window."""
    alone = [
        EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=m.path)])) for m in predictor.ensemble.members
    ]
    xs = slice(column * STRIDE, column * STRIDE + TILE)
    out = {}
    for r in range(valid.shape[0] // STRIDE - 1):
        ys = slice(r * STRIDE, r * STRIDE + TILE)
        window = np.ascontiguousarray(bands[:, ys, xs])
        out[r] = np.stack([p.predict_window(window, valid[ys, xs])[0] for p in alone])
    return out


@pytest.mark.slow
def test_operators_per_block_outside_the_forward_do_not_grow_with_tiles():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from op_counts import op_counts

    r = op_counts()  # batches of 64, as on a GPU
    small, large = r["detail"]["tiles_16"], r["detail"]["tiles_256"]
    assert small["forward_calls"] == 1 and large["forward_calls"] == 4  # the forwards ran, and were left out
    assert small["top_level"] == large["top_level"]  # no operator called per tile or per batch from Python
    assert r["growth"] <= 0.10, r


@pytest.mark.slow
def test_gpu_benchmark_runs_every_row_at_tiny_sizes_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--device", "cpu", "--threads", "2"]
    proc = subprocess.run(
        [*cmd, "--work", str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["rows"]) == {"zoo", "efficiency", "precision", "zoo_s2"} and r["smoke"]
    assert r["rows"]["zoo"]["members"] == 2 and r["rows"]["zoo_s2"]["members"] == 2
    assert r["rows"]["zoo_s2"]["minutes"] > 0 and r["rows"]["efficiency"]["efficiency"] > 0
    p = r["rows"]["precision"]
    assert p["trained_here"] and 0 < p["max_abs_diff"] < 0.5  # bf16 really ran, and stays near fp32
    assert [g["gate"] for g in r["gates"]] == ["≥ 0.80", "≤ 0.01"]
    assert "PASS" in proc.stdout or "FAIL" in proc.stdout
