"""Bad inputs, round three: the cases that used to give a wrong map without a word (issue 31).

Each runs the real CLI (``landslide_batch.cli.main``) where it maps or refuses, and checks the
exit code and the message on the console, the warning in ``run.json`` where it maps, and that a
refusal leaves nothing finished and no block computed. Scenes are tiny synthetic ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs_2 import flags, run_cli

from landslide_batch.bands import BAND_INDEX, L4S_BANDS
from landslide_batch.ingest.units import scale_from_physical, typical_values
from landslide_batch.models.card import CARD_FILE
from landslide_batch.pipeline import OUTPUTS
from landslide_batch.synthetic import write_geotiff

UTM = "EPSG:32645"
ORIGIN = (500000.0, 3100000.0)


def manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def assert_refused_before_compute(out: Path) -> None:
    assert not (out / "run.json").exists()
    assert not [name for name in OUTPUTS.values() if (out / name).exists()]
    blocks = out / ".work" / "blocks"
    assert not blocks.exists() or not any(blocks.iterdir())


def edit_card(src: Path, dest: Path, **changes) -> Path:
    """A copy of model folder ``src`` whose card has ``changes`` (the weights and their hash stay)."""
    shutil.copytree(src, dest)
    card = json.loads((dest / CARD_FILE).read_text())
    card.update(changes)
    (dest / CARD_FILE).write_text(json.dumps(card))
    return dest


@pytest.fixture(scope="module")
def physical(scene_arrays) -> np.ndarray:
    """The synthetic scene (reflectance 0-1, slope in degrees, DEM in metres), 128 x 160 px."""
    return scene_arrays[0][:, :128, :160].copy()


@pytest.fixture(scope="module")
def l4s_model(tmp_path_factory, tiny_model) -> Path:
    """A card trained on L4S-scaled layers (its statistics the L4S dataset's typical values)."""
    typical = typical_values("l4s")
    normalization = {"mean": typical.tolist(), "std": (typical / 2).tolist()}
    dest = tmp_path_factory.mktemp("models") / "l4s_card"
    return edit_card(tiny_model, dest, name="l4s_card", trained=True, input_units="l4s", normalization=normalization)


# --- the units guard, layer by layer ---------------------------------------------------------------------


def test_slope_in_degrees_and_dem_in_metres_inside_an_l4s_stack_are_refused_by_name(
    tmp_path, l4s_model, physical, capsys
):
    """The case the median let through (factor ~1 over 14 layers): two layers in physical units."""
    stack = physical * scale_from_physical("l4s").astype(np.float32)[:, None, None]
    for layer in ("slope", "DEM"):
        stack[BAND_INDEX[layer]] = physical[BAND_INDEX[layer]]
    scene = write_geotiff(tmp_path / "mixed.tif", stack)
    code, _, err = run_cli(capsys, *flags(scene, l4s_model, tmp_path / "out"))
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("landslide-batch run: error: the scene is not in the units the model was trained on")
    assert "model l4s_card: 2 of 14 layers are not in the units it was trained on" in err
    assert (
        "it looks like degrees for a model trained on L4S scaling (degrees / 20.29): multiply slope by 0.04928" in err
    )
    assert "it looks like metres for a model trained on L4S scaling (metres / 772.8): multiply DEM by 0.001294" in err
    assert "no slope exceeds 4.435 in L4S scaling" in err and "--accept-units-mismatch" in err
    assert_refused_before_compute(tmp_path / "out")

    code, out, err = run_cli(capsys, *flags(scene, l4s_model, tmp_path / "accepted", "--accept-units-mismatch"))
    assert code == 0, err
    run = manifest(tmp_path / "accepted")
    (check,) = run["checks"]["units"]
    assert check["mismatch"] is True and check["layers_off"] == ["slope", "DEM"]
    assert 0.5 < check["median_factor"] < 2  # what the median alone saw: nothing
    (accepted,) = [w for w in run["warnings"] if w.startswith("units mismatch accepted")]
    assert "multiply slope by" in accepted and "multiply DEM by" in accepted
    assert f"warning: {accepted}" in out


def test_the_same_stack_with_every_layer_scaled_passes(tmp_path, l4s_model, physical):
    """The control: the per-layer rule leaves a correctly scaled stack (synthetic B10 is ~10x the
    L4S mean, a factor within B10's spread) alone."""
    from landslide_batch.checks.units import sample_scene, units_guard
    from landslide_batch.ingest import ingest
    from landslide_batch.models.card import read_card

    stack = physical * scale_from_physical("l4s").astype(np.float32)[:, None, None]
    scene = ingest(write_geotiff(tmp_path / "l4s.tif", stack), tmp_path / "l4s.zarr", chunk=64)
    verdicts, warnings = units_guard(sample_scene(scene), [read_card(l4s_model)], accept=False)
    assert warnings == [] and [(v.refused, v.layers_off) for v in verdicts] == [(False, ())]


def test_a_constant_zero_layer_is_named_not_dropped(tmp_path, tiny_model, physical, capsys):
    """Even for a card without statistics (nothing else to compare): an all-zero band is refused
    by name; accepted, it is mapped with the warning. A constant B10 is a warning only."""
    bands = physical.copy()
    bands[BAND_INDEX["B5"]] = 0.0
    bands[BAND_INDEX["B10"]] = 0.0
    scene = write_geotiff(tmp_path / "zero_b5.tif", bands)
    code, _, err = run_cli(capsys, *flags(scene, tiny_model, tmp_path / "out"))
    assert code == 2 and "Traceback" not in err, err
    assert "layer B5 holds one value (0) over every sampled valid pixel" in err
    assert "used by model unet_mobilenet_v2" in err
    assert "layer B10" not in err
    assert_refused_before_compute(tmp_path / "out")

    code, out, err = run_cli(capsys, *flags(scene, tiny_model, tmp_path / "accepted", "--accept-units-mismatch"))
    assert code == 0, err
    warnings = manifest(tmp_path / "accepted")["warnings"]
    (b5,) = [w for w in warnings if "layer B5 holds one value" in w]
    (b10,) = [w for w in warnings if "layer B10 holds one value" in w]
    assert b5.startswith("units mismatch accepted") and "L2A products lack B10" in b10
    assert f"warning: {b5}" in out and f"warning: {b10}" in out


# --- no-data that is not tagged --------------------------------------------------------------------------


def test_zero_borders_without_a_nodata_tag_are_nodata_with_a_warning(tmp_path, tiny_model, physical, capsys):
    """A warped scene's zero borders (every layer 0) in a file without a nodata tag: not mapped."""
    bands = physical.copy()
    bands[:, :20] = 0.0
    bands[:, :, -30:] = 0.0
    inner = (128 - 20) * (160 - 30)
    scene = write_geotiff(tmp_path / "borders.tif", bands)
    code, out, err = run_cli(capsys, *flags(scene, tiny_model, tmp_path / "out"))
    assert code == 0, err
    run = manifest(tmp_path / "out")
    assert run["summary"]["valid_pixels"] == inner
    border = 128 * 160 - inner
    (warning,) = [w for w in run["warnings"] if "no nodata tag" in w]
    assert warning.startswith(f"{border} pixels ({100 * border / (128 * 160):.1f}% of the scene) hold 0 in all 12")
    assert f"warning: {warning}" in out

    tagged = write_geotiff(tmp_path / "tagged.tif", bands, nodata=0.0)  # said so: no rule, no warning
    code, out, err = run_cli(capsys, *flags(tagged, tiny_model, tmp_path / "tagged"))
    assert code == 0, err
    assert manifest(tmp_path / "tagged")["summary"]["valid_pixels"] == inner
    assert not [w for w in manifest(tmp_path / "tagged")["warnings"] if "no nodata tag" in w]


def test_a_zero_in_some_layers_stays_data(tmp_path):
    """The rule needs all 12 Sentinel-2 layers at 0: a real zero in one band is a value."""
    from landslide_batch.ingest import ingest
    from landslide_batch.synthetic import synthetic_scene

    bands = synthetic_scene(64, 64, seed=5)[0]
    bands[:11, :8] = 0.0  # B12 keeps its values
    scene = ingest(write_geotiff(tmp_path / "s.tif", bands), tmp_path / "s.zarr", chunk=64)
    assert scene.read_valid(0, 64, 0, 64).all() and not scene.attrs.get("warnings")


def _zarr_with_missing_chunks(path: Path, bands: np.ndarray, fill_value: float) -> None:
    """A Zarr v3 store of ``bands`` in 32 px chunks, its top-left chunk never written."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.attrs.update(crs=UTM, transform=[10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]])
    array = group.create_array(
        "bands",
        shape=bands.shape,
        chunks=(14, 32, 32),
        dtype="float32",
        fill_value=fill_value,
        dimension_names=("band", "y", "x"),
    )
    for y in range(0, bands.shape[1], 32):
        for x in range(0, bands.shape[2], 32):
            if (y, x) != (0, 0):
                array[:, y : y + 32, x : x + 32] = bands[:, y : y + 32, x : x + 32]


def test_zarr_chunks_never_written_are_missing_not_data(tmp_path, tiny_model, physical, capsys):
    bands = physical[:, :96, :96]
    _zarr_with_missing_chunks(tmp_path / "holes.zarr", bands, fill_value=0.0)
    code, out, err = run_cli(capsys, *flags(tmp_path / "holes.zarr", tiny_model, tmp_path / "out"))
    assert code == 0, err
    run = manifest(tmp_path / "out")
    assert run["summary"]["valid_pixels"] == 96 * 96 - 32 * 32
    (warning,) = [w for w in run["warnings"] if "fill value" in w]
    assert warning.startswith("1024 pixels (11.1% of the scene) hold 0 in all 12 Sentinel-2 layers and equal")
    assert f"warning: {warning}" in out


def test_zarr_nan_fill_value_is_missing_without_a_rule(tmp_path, physical):
    from landslide_batch.ingest import ingest

    _zarr_with_missing_chunks(tmp_path / "nan.zarr", physical[:, :64, :64], fill_value=np.nan)
    scene = ingest(tmp_path / "nan.zarr", tmp_path / "scene.zarr", chunk=32)
    valid = scene.read_valid(0, 64, 0, 64)
    assert not valid[:32, :32].any() and valid.sum() == 64 * 64 - 32 * 32
    assert not scene.attrs.get("warnings")


# --- a Zarr written the usual way (rioxarray) ------------------------------------------------------------


def test_rioxarray_written_zarr_opens_with_its_crs(tmp_path, physical):
    import rioxarray  # noqa: F401
    import xarray as xr

    from landslide_batch.ingest import ingest

    h, w = physical.shape[1:]
    da = xr.DataArray(
        physical,
        dims=("band", "y", "x"),
        coords={
            "band": list(L4S_BANDS),
            "y": ORIGIN[1] - 10.0 * (np.arange(h) + 0.5),
            "x": ORIGIN[0] + 10.0 * (np.arange(w) + 0.5),
        },
    ).rio.write_crs(UTM)
    da.to_dataset(name="bands").to_zarr(tmp_path / "rio.zarr", mode="w")
    scene = ingest(tmp_path / "rio.zarr", tmp_path / "scene.zarr", chunk=64)
    assert scene.info.crs.to_epsg() == 32645
    assert scene.info.transform == (10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    assert np.array_equal(scene.read(0, h, 0, w)[0], physical)


# --- pixel size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pixel", [30.0, 3.0])
def test_a_single_scene_at_another_pixel_size_is_refused(tmp_path, tiny_model, physical, capsys, pixel):
    scene = write_geotiff(tmp_path / f"scene_{pixel:g}m.tif", physical, pixel=pixel)
    code, _, err = run_cli(capsys, *flags(scene, tiny_model, tmp_path / "out"))
    assert code == 2 and "Traceback" not in err, err
    assert f"scene {scene}: pixels of {pixel:g} x {pixel:g} m, the models work at 10 m (the job's resolution)" in err
    assert "gdalwarp -tr 10 10" in err
    assert_refused_before_compute(tmp_path / "out")


def test_a_job_whose_models_work_at_the_scenes_pixel_size_maps_it(tmp_path, tiny_model, physical, capsys):
    scene = write_geotiff(tmp_path / "scene_30m.tif", physical, pixel=30.0)
    (tmp_path / "job.yaml").write_text(
        f"scene: {scene}\nout: {tmp_path / 'out'}\nmodels: [{tiny_model}]\nblock: 128\nresolution: 30\n"
    )
    code, _, err = run_cli(capsys, tmp_path / "job.yaml")
    assert code == 0, err


# --- numbers that cannot be ------------------------------------------------------------------------------


def test_a_card_with_a_nan_normalisation_mean_is_refused(tmp_path, tiny_model, physical, capsys):
    mean = [0.0] * 14
    mean[3] = float("nan")
    model = edit_card(tiny_model, tmp_path / "nan_card", normalization={"mean": mean, "std": [1.0] * 14})
    scene = write_geotiff(tmp_path / "scene.tif", physical)
    code, _, err = run_cli(capsys, *flags(scene, model, tmp_path / "out"))
    assert code == 2 and "Traceback" not in err, err
    assert "model card is invalid" in err
    assert "mean and std must be finite numbers; NaN or infinity for the feature(s) at position 3 (mean nan" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value", [("threshold", float("nan")), ("nan_fill", float("inf"))])
def test_a_card_with_a_non_finite_threshold_or_fill_is_refused(tmp_path, tiny_model, field, value):
    from landslide_batch.errors import ModelError
    from landslide_batch.models.card import read_card

    model = edit_card(tiny_model, tmp_path / "card", **{field: value})  # json writes NaN / Infinity
    with pytest.raises(ModelError, match=rf"{field}: Input should be a finite number"):
        read_card(model)


@pytest.mark.parametrize(
    "where, yaml, message",
    [
        ("ensemble", "members:\n  - model: {model}\n    weight: .inf\n", "members.0.weight: Input should be a finite"),
        ("ensemble", "members:\n  - model: {model}\nthreshold: .nan\n", "threshold: Input should be a finite number"),
        ("job", "threshold: .nan\n", "threshold: Input should be a finite number"),
        ("job", "min_area_m2: .inf\n", "min_area_m2: Input should be a finite number"),
        ("job", "resolution: .inf\n", "resolution: Input should be a finite number"),
    ],
)
def test_non_finite_weights_and_thresholds_are_refused_at_validation(
    tmp_path, tiny_model, physical, capsys, where, yaml, message
):
    scene = write_geotiff(tmp_path / "scene.tif", physical)
    job = f"scene: {scene}\nout: {tmp_path / 'out'}\nblock: 128\n"
    if where == "ensemble":
        (tmp_path / "ensemble.yaml").write_text(yaml.format(model=tiny_model))
        job += f"ensemble: {tmp_path / 'ensemble.yaml'}\n"
    else:
        job += f"models: [{tiny_model}]\n{yaml}"
    (tmp_path / "job.yaml").write_text(job)
    code, _, err = run_cli(capsys, tmp_path / "job.yaml")
    assert code == 2 and "Traceback" not in err, err
    assert message in err
    assert not (tmp_path / "out").exists()
