"""Bad inputs, round two (docs/reliability.md): wrong units, an implausible result, ``--out`` that
cannot be an output folder, a model folder without weights, a full disk, geographic grids.

Every case runs the real CLI (``landslide_batch.cli.main``, or ``python -m landslide_batch.cli``
in a private mount namespace for the full disk) and checks the exit code, the message and that
nothing in the output folder looks finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from landslide_batch.bands import L4S_BANDS
from landslide_batch.cli import main
from landslide_batch.ingest.units import scale_from_physical
from landslide_batch.models.card import (
    CARD_FILE,
    WEIGHTS_FILE,
    load_model_folder,
    read_card,
    save_model_folder,
)
from landslide_batch.pipeline import OUTPUTS
from landslide_batch.synthetic import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
L4S = ROOT.parent / "shared" / "data" / "landslide4sense" / "labelled"
needs_l4s = pytest.mark.skipif(not (L4S / "img").is_dir(), reason=f"real L4S patches not found at {L4S}")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["run", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flags(scene, model, out, *extra):
    return ["--scene", scene, "--model", model, "--out", out, "--block", 128, *extra]


def assert_nothing_finished(out: Path) -> None:
    assert not (out / "run.json").exists()
    assert not [name for name in OUTPUTS.values() if (out / name).exists()]


def assert_no_block_computed(out: Path) -> None:
    blocks = out / ".work" / "blocks"
    assert not blocks.exists() or not any(blocks.iterdir())


def write_job(tmp: Path, scene: Path, model: Path, extra: str = "") -> Path:
    (tmp / "job.yaml").write_text(f"scene: {scene}\nout: {tmp / 'out'}\nmodels: [{model}]\nblock: 128\n{extra}")
    return tmp / "job.yaml"


def manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# --- the units guard -------------------------------------------------------------------------------------


def l4s_mosaic(n: int = 2) -> np.ndarray:
    """The first n x n real labelled L4S patches (sorted by name) side by side: (14, 128 n, 128 n)."""
    import h5py

    files = sorted((L4S / "img").glob("image_*.h5"))[: n * n]
    patches = [np.moveaxis(h5py.File(f, "r")["img"][()], -1, 0) for f in files]
    rows = [np.concatenate(patches[i * n : (i + 1) * n], axis=2) for i in range(n)]
    return np.concatenate(rows, axis=1).astype(np.float32)


def model_with_statistics(src: Path, dest: Path, normalization, name: str) -> Path:
    """``src`` (an untrained model folder) with a trained card holding ``normalization`` and no
    ``input_units`` (as cards written before the field existed): the weights and their hash stay."""
    shutil.copytree(src, dest)
    card = json.loads((dest / CARD_FILE).read_text())
    card.pop("input_units", None)
    card.update(name=name, trained=True, normalization=normalization.model_dump())
    (dest / CARD_FILE).write_text(json.dumps(card))
    return dest


@pytest.fixture(scope="module")
def l4s_model(tmp_path_factory, tiny_model):
    """A model card whose statistics are the real labelled patches' own (training's streamed
    statistics over all of them), units left for the card to derive."""
    if not (L4S / "img").is_dir():
        pytest.skip(f"real L4S patches not found at {L4S}")
    from landslide_training.dataset import find_pairs, scan_split

    stats = scan_split(find_pairs(L4S), L4S_BANDS).normalization
    return model_with_statistics(tiny_model, tmp_path_factory.mktemp("models") / "l4s_real", stats, "l4s_real")


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    """The real L4S mosaic as UTM 10 m GeoTIFFs in three conventions: as the patches (l4s), as
    reflectance 0-1 (float32) and as Sentinel-2 digital numbers (uint16)."""
    if not (L4S / "img").is_dir():
        pytest.skip(f"real L4S patches not found at {L4S}")
    tmp = tmp_path_factory.mktemp("mosaics")
    l4s = l4s_mosaic()
    physical = l4s / scale_from_physical("l4s").astype(np.float32)[:, None, None]
    dn = np.round(physical * scale_from_physical("dn")[:, None, None])
    assert dn.min() >= 0 and dn.max() < 65535
    return {
        "l4s": write_geotiff(tmp / "l4s.tif", l4s),
        "reflectance": write_geotiff(tmp / "reflectance.tif", physical),
        "dn": write_geotiff(tmp / "dn.tif", dn.astype(np.uint16)),
    }


@needs_l4s
def test_card_derives_l4s_units_from_real_patch_statistics(l4s_model):
    assert read_card(l4s_model).input_units == "l4s"


@needs_l4s
def test_real_l4s_mosaic_with_a_card_from_real_patches_passes_the_guard(tmp_path, l4s_model, mosaics, capsys):
    code, _, err = run_cli(capsys, *flags(mosaics["l4s"], l4s_model, tmp_path / "out"))
    assert code == 0, err
    (check,) = manifest(tmp_path / "out")["checks"]["units"]
    assert check["mismatch"] is False and check["layers"] == 14 and 0.7 < check["median_factor"] < 1.4
    assert not any(w.startswith("units mismatch") for w in manifest(tmp_path / "out")["warnings"])


@needs_l4s
@pytest.mark.parametrize(
    "units, patterns",
    [
        (
            "dn",
            [
                "Sentinel-2 digital numbers",
                r"inputs: \{units: l4s, reflectance: \{mode: l2a, boa_add_offset: 0\}\}",
                r"~[5-9]\d\dx the values it was trained on",
            ],
        ),
        (
            "reflectance",
            [
                "reflectance 0-1",
                "set inputs.units: l4s",
                r"~0\.1\d*x the values it was trained on",
                r"DEM \d+ vs 2\.\d+, slope \d+ vs 1\.\d+",
            ],
        ),
    ],
)
def test_guard_refuses_a_scene_in_other_units_than_an_l4s_model(tmp_path, l4s_model, mosaics, capsys, units, patterns):
    code, _, err = run_cli(capsys, *flags(mosaics[units], l4s_model, tmp_path / "out"))
    assert code == 2, err
    assert err.startswith("landslide-batch run: error: the scene is not in the units the model was trained on")
    assert "Traceback" not in err
    for pattern in [
        r"model l4s_real:",
        "Landslide4Sense scaling",
        r"B\d+ [\d.]+ vs [\d.]+",
        "--accept-units-mismatch",
        *patterns,
    ]:
        assert re.search(pattern, err), f"{pattern!r} not in:\n{err}"
    assert_nothing_finished(tmp_path / "out")
    assert_no_block_computed(tmp_path / "out")


@needs_l4s
@pytest.mark.parametrize(
    "units, inputs",
    [
        ("reflectance", "inputs: {}\n"),  # units: auto -> l4s from the card: converted at ingest
        ("dn", "inputs: {reflectance: {mode: l2a, boa_add_offset: 0}}\n"),  # the fix the refusal names
    ],
)
def test_inputs_convert_to_the_cards_units_and_the_guard_passes(tmp_path, l4s_model, mosaics, capsys, units, inputs):
    code, _, err = run_cli(capsys, write_job(tmp_path, mosaics[units], l4s_model, inputs))
    assert code == 0, err
    run = manifest(tmp_path / "out")
    assert run["config"]["inputs"]["units"] == "l4s"
    (check,) = run["checks"]["units"]
    assert check["mismatch"] is False and 0.7 < check["median_factor"] < 1.4


@needs_l4s
def test_accepted_mismatch_is_mapped_and_recorded_as_a_warning(tmp_path, l4s_model, mosaics, capsys):
    code, out, err = run_cli(capsys, *flags(mosaics["dn"], l4s_model, tmp_path / "out", "--accept-units-mismatch"))
    assert code == 0, err
    run = manifest(tmp_path / "out")
    assert run["checks"]["units"][0]["mismatch"] is True
    assert run["checks"]["units"][0]["likely_cause"] == "dn scene for a l4s model"
    accepted = [w for w in run["warnings"] if w.startswith("units mismatch accepted")]
    assert len(accepted) == 1 and "digital numbers" in accepted[0]
    assert f"warning: {accepted[0]}" in out


@needs_l4s
def test_members_trained_on_different_units_are_refused_before_ingest(
    tmp_path, l4s_model, tiny_model, mosaics, scene_arrays, capsys
):
    from landslide_batch.models.card import Normalization

    flat = scene_arrays[0].reshape(14, -1).astype(np.float64)
    stats = Normalization(mean=flat.mean(1).tolist(), std=flat.std(1).tolist())
    reflectance_model = model_with_statistics(tiny_model, tmp_path / "refl_model", stats, "refl_model")
    (tmp_path / "ensemble.yaml").write_text(f"members:\n  - model: {l4s_model}\n  - model: {reflectance_model}\n")
    (tmp_path / "job.yaml").write_text(
        f"scene: {mosaics['reflectance']}\nout: {tmp_path / 'out'}\n"
        f"ensemble: {tmp_path / 'ensemble.yaml'}\ninputs: {{}}\n"
    )
    code, _, err = run_cli(capsys, tmp_path / "job.yaml")
    assert code == 2 and "Traceback" not in err
    assert (
        "the models were trained on different input units ({'l4s_real': 'l4s', 'refl_model': 'physical'}); "
        "one scene cannot serve them all"
    ) in err
    assert not (tmp_path / "out").exists()


def test_sample_windows_spread_over_the_scene_and_stay_inside_it():
    from landslide_batch.checks.units import sample_windows

    wins = sample_windows(1000, 600)
    assert len(wins) == 36 and all(0 <= y0 < y1 <= 1000 and 0 <= x0 < x1 <= 600 for y0, y1, x0, x1 in wins)
    assert {y1 - y0 for y0, y1, _, _ in wins} == {64} and min(w[0] for w in wins) < 64 and max(w[1] for w in wins) > 936
    assert sample_windows(40, 30) == [(0, 40, 0, 30)]  # a scene smaller than a window: read once, whole


def test_demo_scene_passes_the_guard_of_a_model_with_the_demos_statistics(tmp_path, tiny_model, capsys):
    """The demo's own data path (``landslide_training.demo``): its training scene cut into patches, the
    statistics its training writes into the card (``scan_split``, as ``train`` does), and its
    unseen map scene. (The full demo, training included, asserts the same in test_demo.py.)"""
    from landslide_training.dataset import find_pairs, scan_split
    from landslide_training.demo import _labelled_scene
    from landslide_training.patches import cut_scene

    (tmp_path / "data").mkdir()
    cut_scene(*_labelled_scene(tmp_path / "data", "train_scene", 256, 11)[:2], tmp_path / "train", stride=64)
    stats = scan_split(find_pairs(tmp_path / "train"), L4S_BANDS).normalization
    model = model_with_statistics(tiny_model, tmp_path / "demo_model", stats, "demo_like")
    assert read_card(model).input_units == "reflectance"
    scene, _, _ = _labelled_scene(tmp_path, "scene", 256, 13)
    code, _, err = run_cli(capsys, *flags(scene, model, tmp_path / "out"))
    assert code == 0, err
    (check,) = manifest(tmp_path / "out")["checks"]["units"]
    assert check["mismatch"] is False and 0.7 < check["median_factor"] < 1.4


# --- result sanity ---------------------------------------------------------------------------------------


def model_with_head_bias(src: Path, dest: Path, bias: float) -> Path:
    """``src`` with a constant segmentation head: every pixel gets logit ``bias``."""
    import torch

    model, card = load_model_folder(src)
    head = model.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(bias)
    save_model_folder(model, card, dest)
    return dest


@pytest.fixture(scope="module")
def everywhere_model(tmp_path_factory, tiny_model):
    return model_with_head_bias(tiny_model, tmp_path_factory.mktemp("models") / "everywhere", 20.0)


@pytest.fixture(scope="module")
def nowhere_model(tmp_path_factory, tiny_model):
    return model_with_head_bias(tiny_model, tmp_path_factory.mktemp("models") / "nowhere", -20.0)


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory, scene_arrays):
    return write_geotiff(tmp_path_factory.mktemp("scenes") / "small.tif", scene_arrays[0][:, :128, :160])


def test_implausible_landslide_fraction_is_a_warning_in_run_json_and_the_summary(
    tmp_path, everywhere_model, nowhere_model, small_scene, capsys
):
    code, out, err = run_cli(capsys, *flags(small_scene, everywhere_model, tmp_path / "all"))
    assert code == 0, err
    run = manifest(tmp_path / "all")
    assert run["summary"]["landslide_pixels"] == run["summary"]["valid_pixels"] == 128 * 160
    (warning,) = [w for w in run["warnings"] if w.startswith("implausible result")]
    assert "100% of the mapped area is classified as landslide" in warning and "above 30%" in warning
    assert f"warning: {warning}" in out
    code, out, err = run_cli(capsys, *flags(small_scene, nowhere_model, tmp_path / "none"))
    assert code == 0, err
    assert manifest(tmp_path / "none")["summary"]["landslide_pixels"] == 0
    assert not any(w.startswith("implausible") for w in manifest(tmp_path / "none")["warnings"])
    assert "warning" not in out


# --- --out that cannot be an output folder; a model folder without weights ----------------------------------


def test_out_that_is_a_file_is_refused_before_anything_is_written(tmp_path, tiny_model, small_scene, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    code, _, err = run_cli(capsys, *flags(small_scene, tiny_model, taken))
    assert code == 2 and "Traceback" not in err
    assert re.match(rf"landslide-batch run: error: --out {re.escape(str(taken))} is a file; expected a folder", err)
    assert taken.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_out_that_is_the_scene_is_refused_before_anything_is_written(tmp_path, tiny_model, scene_arrays, capsys):
    scene = write_geotiff(tmp_path / "scene.tif", scene_arrays[0][:, :128, :128])
    before = scene.read_bytes()
    code, _, err = run_cli(capsys, *flags(scene, tiny_model, scene))
    assert code == 2 and "Traceback" not in err
    assert f"--out {scene} is the scene itself" in err
    assert scene.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


@pytest.mark.parametrize("scene_is_the_store", [True, False], ids=["the-scene-store", "another-zarr-store"])
def test_out_inside_a_scene_store_is_refused_before_anything_is_written(
    tmp_path, tiny_model, scene_arrays, small_scene, capsys, scene_is_the_store
):
    import xarray as xr

    store = tmp_path / "scene.zarr"
    xr.Dataset(
        {"bands": (("band", "y", "x"), scene_arrays[0][:, :128, :128])},
        attrs={"crs": "EPSG:32645", "transform": [10.0, 0.0, 5e5, 0.0, -10.0, 3.1e6]},
    ).to_zarr(store, consolidated=False)
    listing = sorted(p.relative_to(store) for p in store.rglob("*"))
    code, _, err = run_cli(capsys, *flags(store if scene_is_the_store else small_scene, tiny_model, store / "maps"))
    assert code == 2 and "Traceback" not in err
    inside = f"the scene {store}" if scene_is_the_store else f"the Zarr store {store}"
    assert f"--out {store / 'maps'} lies inside {inside}; choose a folder outside it" in err
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == listing


def test_model_folder_without_weights_fails_before_ingest(tmp_path, tiny_model, small_scene, capsys):
    shutil.copytree(tiny_model, tmp_path / "noweights")
    (tmp_path / "noweights" / WEIGHTS_FILE).unlink()
    code, _, err = run_cli(capsys, *flags(small_scene, tmp_path / "noweights", tmp_path / "out"))
    assert code == 2 and "Traceback" not in err
    assert f"{tmp_path / 'noweights'}: missing {WEIGHTS_FILE}" in err
    assert not (tmp_path / "out").exists()  # not ingested: nothing written at all


# --- geographic grids ------------------------------------------------------------------------------------


def test_geographic_scene_has_geodesic_areas_in_the_summary_and_the_polygons(
    tmp_path, varying_model, scene_arrays, capsys
):
    """EPSG:4326 at 0.0001° (~10 x 11 m at 28° N): the summary's per-row pixel areas and the
    polygons' geodesic areas are two computations; both are checked against pyproj's Geod."""
    import geopandas as gpd
    from pyproj import Geod

    bands = scene_arrays[0][:, :160, :200].copy()
    bands[:, 40:70, 30:90] = np.nan
    west, north, pixel = 85.3, 28.0, 1e-4
    scene = write_geotiff(tmp_path / "lonlat.tif", bands, crs="EPSG:4326", origin=(west, north), pixel=pixel)
    geod = Geod(ellps="WGS84")

    def box_m2(x0, y0, x1, y1):  # pixel box -> geodesic area
        lons, lats = [west + x0 * pixel, west + x1 * pixel], [north - y0 * pixel, north - y1 * pixel]
        return abs(
            geod.polygon_area_perimeter([lons[0], lons[1], lons[1], lons[0]], [lats[0], lats[0], lats[1], lats[1]])[0]
        )

    code, out, err = run_cli(capsys, write_job(tmp_path, scene, varying_model, "min_pixels: 1\n"))
    assert code == 0, err
    s = manifest(tmp_path / "out")["summary"]
    expected = box_m2(0, 0, 200, 160) - box_m2(30, 40, 90, 70)
    assert s["area_mapped_km2"] * 1e6 == pytest.approx(expected, rel=1e-6)
    assert 0 < s["landslide_pixels"] < s["valid_pixels"]
    polygons = gpd.read_file(tmp_path / "out" / OUTPUTS["polygons"])
    assert polygons.crs.to_epsg() == 4326 and polygons["area_m2"].notna().all()
    assert polygons["area_m2"].sum() == pytest.approx(s["landslide_area_km2"] * 1e6, rel=1e-6)
    assert (polygons["area_m2"] / polygons["pixels"]).between(100, 120).all()  # ~ 9.8 m x 11.1 m pixels
    assert f"{s['landslide_area_km2']:.3f} km² of {s['area_mapped_km2']:.3f} km² mapped" in out


# --- a full disk -----------------------------------------------------------------------------------------


def _namespaces_allowed() -> str | None:
    """None when this process may mount a tmpfs in a private mount namespace; else why not."""
    if shutil.which("unshare") is None:
        return "unshare not installed"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"no private mount namespace here: {probe.stderr.strip()}"


needs_namespaces = pytest.mark.skipif(_namespaces_allowed() is not None, reason=str(_namespaces_allowed()))
CLI = [sys.executable, "-m", "landslide_batch.cli", "run"]


def _in_tmpfs(mount: Path, size: str, script: str) -> subprocess.Popen:
    """``script`` (sh) in a private mount namespace with a ``size`` tmpfs on ``mount``."""
    mount.mkdir()
    return subprocess.Popen(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs -o size={size} tmpfs {mount} && {script}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def scene_256(tmp_path_factory, scene_arrays):
    return write_geotiff(tmp_path_factory.mktemp("scenes") / "s256.tif", scene_arrays[0][:, :256, :256])


@pytest.mark.slow
@needs_namespaces
def test_full_disk_is_refused_before_ingest_with_both_figures(tmp_path, tiny_model, scene_256):
    mnt = tmp_path / "mnt"
    args = " ".join(map(str, [*CLI, *flags(scene_256, tiny_model, mnt / "out")]))
    proc = _in_tmpfs(mnt, "1m", f"{args}; echo rc=$?; ls -A {mnt}")
    text, _ = proc.communicate(timeout=120)
    assert "rc=4" in text, text
    assert re.search(
        r"error: not enough free space for .*/out: this 256x256 px job needs up to 5\.3 MB \(scene "
        r"store 3\.7 MB, output store 524\.3 KB, products 1\.0 MB; uncompressed upper bound\) and its "
        r"file system has 1\.0 MB free",
        text,
    ), text
    assert "Traceback" not in text
    assert text.rstrip().endswith("rc=4")  # ls printed nothing: not even the output folder was made


@pytest.mark.slow
@needs_namespaces
def test_disk_filling_up_mid_job_is_a_clear_error_and_the_rerun_resumes(tmp_path, tiny_model, scene_256):
    """A 16 MB tmpfs passes the estimate (~5.3 MB); once the first block is done, the job is
    stopped, another writer fills the disk, and the job continues into a full disk."""
    mnt = tmp_path / "mnt"
    run = " ".join(map(str, [*CLI, *flags(scene_256, tiny_model, mnt / "out")]))
    script = (
        f"{run} & echo job=$!; wait $!; echo rc1=$?; "
        f"while [ -e {mnt}/filler ]; do sleep 0.1; done; {run}; echo rc2=$?; cat {mnt}/out/run.json"
    )
    proc = _in_tmpfs(mnt, "16m", script)
    seen, job = [], None
    inside = Path(f"/proc/{proc.pid}/root") / mnt.relative_to("/")  # the namespace's view of the tmpfs
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("job="):
                job = int(line.split("=")[1])
            elif re.search(r"block \S+ done \(1/4\)", line):
                os.kill(job, signal.SIGSTOP)
                _fill(inside / "filler")
                os.kill(job, signal.SIGCONT)
            elif line.startswith("rc1="):
                break
        text = "".join(seen)
        assert line.strip() == "rc1=4", text
        assert re.search(
            r"error: the file system of \S+/out is full( while writing \S+)? \(No space left on device; "
            r"[\d.]+ K?B free of 16\.\d MB\)\. Nothing in \S+/out looks finished, and finished blocks are kept: "
            r"free some space and run the same command again to resume",
            text,
        ), text
        assert "Traceback" not in text
        assert_nothing_finished(inside / "out")
        kept = {m.name.removesuffix(".done") for m in (inside / "out" / ".work" / "blocks").iterdir()}
        assert kept  # the finished block is kept
        (inside / "filler").unlink()
        rest, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "rc2=0" in rest, rest
    blocks = json.loads(rest.split("rc2=0", 1)[1])["blocks"]
    assert blocks["total"] == 4 and blocks["resumed"] == len(kept) and blocks["computed"] == 4 - len(kept)
    # The re-run computed the blocks unfinished when the disk filled, the one being written among them.
    assert len(blocks["node_of"]) == 4 - len(kept) and not set(blocks["node_of"]) & kept


def _fill(path: Path) -> None:
    """Write ``path`` until its file system is full (to the last page)."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == 28
