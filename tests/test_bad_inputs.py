"""The bad-input matrix of docs/reliability.md, through the CLI.

Every bad input ends in exit code 2 and one ``landslide-batch run: error: ...`` line on stderr
that says what was expected, what was found and which file, with no traceback and nothing in
the output folder that looks finished. Inputs that have a right answer (partial NaN, a nodata
value, a scene smaller than a tile, a DEM on another grid) get that answer.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import rasterio

from landslide_batch.cli import main
from landslide_batch.hashing import sha256_file
from landslide_batch.models.card import CARD_FILE, WEIGHTS_FILE, init_model_folder
from landslide_batch.pipeline import OUTPUTS
from landslide_batch.synthetic import write_geotiff, write_l4s_patch

ORIGIN = (500000.0, 3100000.0)  # write_geotiff's default upper-left corner, EPSG:32645


@pytest.fixture(scope="module")
def bands(scene_arrays):
    """A 128 x 160 px 14-band scene: one block, a few tiles."""
    return np.ascontiguousarray(scene_arrays[0][:, :128, :160])


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["run", *map(str, args)])
    return code, capsys.readouterr().err


def flags(scene, model, out, *extra):
    return ["--scene", scene, "--model", model, "--out", out, "--block", 128, *extra]


def assert_nothing_finished(out) -> None:
    assert not (out / "run.json").exists()
    assert not [name for name in OUTPUTS.values() if (out / name).exists()]


def write_zarr_scene(path, data):
    import xarray as xr

    ds = xr.Dataset(
        {"bands": (("band", "y", "x"), data)},
        attrs={"crs": "EPSG:32645", "transform": [10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]]},
    )
    ds.to_zarr(path, consolidated=False)
    return path


def copy_model(model, dest, **card_changes):
    shutil.copytree(model, dest)
    card = json.loads((dest / CARD_FILE).read_text())
    for key, value in card_changes.items():
        if value is None:
            del card[key]
        else:
            card[key] = value
    (dest / CARD_FILE).write_text(json.dumps(card))
    return dest


# Each case builds its input under ``tmp`` and returns (CLI arguments, patterns stderr must hold).


def h5_wrong_band_count(tmp, bands, model):
    write_l4s_patch(tmp / "image_1.h5", bands[:12, :64, :64])
    return flags(tmp / "image_1.h5", model, tmp / "out"), [
        "image_1.h5",
        "expected 14 bands in Landslide4Sense order",
        r"found array of shape \(64, 64, 12\)",
    ]


def complex_geotiff(tmp, bands, model):
    path = write_geotiff(tmp / "complex.tif", bands.astype(np.complex64))
    return flags(path, model, tmp / "out"), ["complex.tif", "expected integer or float bands", "complex64"]


def bool_h5(tmp, bands, model):
    import h5py

    with h5py.File(tmp / "image_2.h5", "w") as f:
        f.create_dataset("img", data=np.moveaxis(bands > 0.1, 0, -1))
    return flags(tmp / "image_2.h5", model, tmp / "out"), ["image_2.h5", "should be numeric", "found dtype bool"]


def bool_zarr(tmp, bands, model):
    path = write_zarr_scene(tmp / "scene.zarr", bands > 0.1)
    return flags(path, model, tmp / "out"), ["scene.zarr", "integer or float values", "found dtype bool"]


def all_nan(tmp, bands, model):
    path = write_geotiff(tmp / "nan.tif", np.full_like(bands, np.nan))
    return flags(path, model, tmp / "out"), ["nan.tif", "has no valid pixel", "NaN, infinite or nodata"]


def all_nodata_layer(tmp, bands, model):
    data = bands.copy()
    data[13] = -9999  # the DEM layer is nodata everywhere
    path = write_geotiff(tmp / "nodem.tif", data, nodata=-9999)
    return flags(path, model, tmp / "out"), [
        "nodem.tif",
        "has no valid pixel",
        "layers without a single valid value: DEM$",
    ]


def truncated_geotiff(tmp, bands, model):
    whole = write_geotiff(tmp / "whole.tif", bands).read_bytes()
    (tmp / "cut.tif").write_bytes(whole[: len(whole) // 2])
    return flags(tmp / "cut.tif", model, tmp / "out"), ["cut.tif", "truncated or corrupt"]


def random_bytes_geotiff(tmp, bands, model):
    (tmp / "noise.tif").write_bytes(np.random.default_rng(0).bytes(10000))
    return flags(tmp / "noise.tif", model, tmp / "out"), [
        "noise.tif",
        "cannot open as a raster",
        "not recognized as being in a supported file format",
    ]


def empty_geotiff(tmp, bands, model):
    (tmp / "empty.tif").touch()
    return flags(tmp / "empty.tif", model, tmp / "out"), ["empty.tif", "cannot open as a raster"]


def empty_h5(tmp, bands, model):
    (tmp / "image_3.h5").touch()
    return flags(tmp / "image_3.h5", model, tmp / "out"), ["image_3.h5", "not a readable HDF5 file"]


def truncated_h5(tmp, bands, model):
    write_l4s_patch(tmp / "whole.h5", bands)
    whole = (tmp / "whole.h5").read_bytes()
    (tmp / "image_4.h5").write_bytes(whole[: len(whole) // 2])
    return flags(tmp / "image_4.h5", model, tmp / "out"), ["image_4.h5", "not a readable HDF5 file", "truncated"]


def zero_pixel_h5(tmp, bands, model):
    import h5py

    with h5py.File(tmp / "image_5.h5", "w") as f:
        f.create_dataset("img", shape=(0, 0, 14), dtype="float32")
    return flags(tmp / "image_5.h5", model, tmp / "out"), ["image_5.h5", r"zero size \(0x0 pixels\)"]


def missing_crs(tmp, bands, model):
    path = write_geotiff(tmp / "nocrs.tif", bands, crs=None)
    return flags(path, model, tmp / "out"), ["nocrs.tif", "has no CRS"]


def missing_scene(tmp, bands, model):
    return flags(tmp / "nowhere.tif", model, tmp / "out"), ["nowhere.tif", "does not exist"]


def checkpoint_channels(tmp, bands, model, executor="local"):
    """weights.pt of a 6-feature model under the 14-band model's card (hash updated to match)."""
    init_model_folder("Unet", "mobilenet_v2", tmp / "six", features="rgb_ndvi_slope_dem")
    bad = copy_model(model, tmp / "mixed", weights_sha256=sha256_file(tmp / "six" / WEIGHTS_FILE))
    shutil.copy(tmp / "six" / WEIGHTS_FILE, bad / WEIGHTS_FILE)
    scene = write_geotiff(tmp / "scene.tif", bands)
    return flags(scene, bad, tmp / "out", "--executor", executor), [
        "mixed/weights.pt",
        "14 input channels as the card says",
        "first conv expects 6 input channels",
    ]


def checkpoint_channels_on_ray(tmp, bands, model):
    """Caught on the driver before the actors start: on Ray a predictor failing to load is only an
    ActorDiedError under Ray's traceback."""
    return checkpoint_channels(tmp, bands, model, executor="ray")


def weights_changed(tmp, bands, model):
    bad = copy_model(model, tmp / "changed")
    with open(bad / WEIGHTS_FILE, "ab") as f:
        f.write(b"\0")
    return flags(write_geotiff(tmp / "scene.tif", bands), bad, tmp / "out"), [
        "changed/weights.pt",
        "does not match the card's",
        "changed or truncated",
    ]


def card_missing_fields(tmp, bands, model):
    bad = copy_model(model, tmp / "cardless", arch=None, features=None)
    return flags(write_geotiff(tmp / "scene.tif", bands), bad, tmp / "out"), [
        "cardless/card.json",
        "model card is invalid",
        "^  arch: Field required$",
        "^  features: Field required$",
    ]


def job_yaml(tmp, bands, model, text):
    write_geotiff(tmp / "scene.tif", bands)
    (tmp / "job.yaml").write_text(f"scene: scene.tif\nout: out\nmodels: [{model}]\n{text}")
    return [tmp / "job.yaml"]


def yaml_syntax_error(tmp, bands, model):
    return job_yaml(tmp, bands, model, "block: [128\n"), ["job.yaml", "not valid YAML", "expected ',' or ']'"]


def yaml_unknown_key(tmp, bands, model):
    return job_yaml(tmp, bands, model, "tiles: 128\n"), [
        "job.yaml",
        "invalid JobConfig",
        "tiles: Extra inputs are not permitted",
    ]


def yaml_wrong_type(tmp, bands, model):
    return job_yaml(tmp, bands, model, "tile: large\n"), [
        "job.yaml",
        "invalid JobConfig",
        "tile: Input should be a valid integer",
    ]


def unknown_blend(tmp, bands, model):
    return flags(write_geotiff(tmp / "scene.tif", bands), model, tmp / "out", "--blend", "median"), [
        r"argument --blend: invalid choice: 'median' \(choose from 'mean', 'cosine', 'gaussian'\)",
    ]


def dem_outside_scene(tmp, bands, model):
    """``inputs.dem`` on another grid (EPSG:4326) that misses the scene entirely."""
    write_dem(tmp / "dem.tif", bands, lon_offset=1.0)
    return job_yaml(tmp, bands, model, "inputs:\n  dem: dem.tif\n"), ["scene.tif", "does not cover 100.00%"]


CASES = [
    h5_wrong_band_count,
    complex_geotiff,
    bool_h5,
    bool_zarr,
    all_nan,
    all_nodata_layer,
    truncated_geotiff,
    random_bytes_geotiff,
    empty_geotiff,
    empty_h5,
    truncated_h5,
    zero_pixel_h5,
    missing_crs,
    missing_scene,
    checkpoint_channels,
    checkpoint_channels_on_ray,
    weights_changed,
    card_missing_fields,
    yaml_syntax_error,
    yaml_unknown_key,
    yaml_wrong_type,
    unknown_blend,
    dem_outside_scene,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_fails_clearly_and_leaves_nothing_finished(case, tmp_path, bands, tiny_model, capsys):
    args, patterns = case(tmp_path, bands, tiny_model)
    code, err = run_cli(capsys, *args)
    assert code == 2, err
    assert "landslide-batch run: error: " in err and "Traceback" not in err
    # Ray starts while the driver checks the models, and may print its start-up notice first.
    assert err.startswith("landslide-batch run: error: ") or case is checkpoint_channels_on_ray, err
    for pattern in patterns:
        assert re.search(pattern, err, re.MULTILINE), f"{pattern!r} not in:\n{err}"
    assert_nothing_finished(tmp_path / "out")


# --- inputs with a right answer ------------------------------------------------------------------------


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.crs, ds.transform


def run_ok(capsys, *args):
    code, err = run_cli(capsys, *args)
    assert code == 0, err


def test_partial_nan_and_infinity_are_nodata_and_the_rest_is_mapped(tmp_path, bands, tiny_model, capsys):
    data = bands.copy()
    data[13, 20:30, 40:60] = np.nan  # one layer (DEM) missing
    data[3, 90:95, 5:15] = np.inf  # one layer (B4) saturated to infinity
    scene = write_geotiff(tmp_path / "holes.tif", data)
    run_ok(capsys, *flags(scene, tiny_model, tmp_path / "out"))
    prob, _, _ = read(tmp_path / "out" / "probability.tif")
    mask, _, _ = read(tmp_path / "out" / "mask.tif")
    expected_nodata = ~np.isfinite(data).all(axis=0)
    np.testing.assert_array_equal(prob == -1, expected_nodata)
    np.testing.assert_array_equal(mask == 255, expected_nodata)
    assert ((prob[~expected_nodata] >= 0) & (prob[~expected_nodata] <= 1)).all()


def test_geotiff_nodata_value_is_masked(tmp_path, bands, tiny_model, capsys):
    data = bands.copy()
    data[:, :16, :24] = -9999  # a corner outside the swath
    data[5, 60:70, 100:110] = -9999  # one layer without a value
    scene = write_geotiff(tmp_path / "nodata.tif", data, nodata=-9999)
    run_ok(capsys, *flags(scene, tiny_model, tmp_path / "out"))
    prob, _, _ = read(tmp_path / "out" / "probability.tif")
    expected_nodata = (data == -9999).any(axis=0)
    np.testing.assert_array_equal(prob == -1, expected_nodata)
    assert (prob[~expected_nodata] >= 0).all()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["summary"]["valid_pixels"] == (~expected_nodata).sum()


@pytest.mark.parametrize("shape", [(40, 30), (1, 1)], ids=["40x30", "1x1"])
def test_scene_smaller_than_one_tile_is_mapped_in_place(tmp_path, bands, tiny_model, capsys, shape):
    scene = write_geotiff(tmp_path / "small.tif", bands[:, : shape[0], : shape[1]])
    run_ok(capsys, *flags(scene, tiny_model, tmp_path / "out"))
    prob, crs, transform = read(tmp_path / "out" / "probability.tif")
    with rasterio.open(scene) as src:
        assert (prob.shape, crs, transform) == ((src.height, src.width), src.crs, src.transform)
    assert ((prob >= 0) & (prob <= 1)).all()


def write_dem(path, bands, lon_offset=0.0, fraction=1.0):
    """A DEM in EPSG:4326 at ~30 m around the scene's footprint (its west ``fraction``), shifted by
    ``lon_offset`` degrees."""
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs("EPSG:32645", "EPSG:4326", always_xy=True)
    _, h, w = bands.shape
    west, north = to_lonlat.transform(*ORIGIN)
    east, south = to_lonlat.transform(ORIGIN[0] + 10 * w, ORIGIN[1] - 10 * h)
    pixel, margin = 0.0003, 0.002
    nx = int((west + fraction * (east - west) - west + margin) / pixel)
    ny = int((north - south + 2 * margin) / pixel)
    dem = 500 + 3 * np.arange(nx)[None, :] + 2 * np.arange(ny)[:, None]
    return write_geotiff(
        path, dem.astype(np.float32), crs="EPSG:4326", origin=(west - margin + lon_offset, north + margin), pixel=pixel
    )


def test_dem_on_another_grid_is_reprojected_and_uncovered_pixels_are_nodata(tmp_path, bands, tiny_model, capsys):
    """``inputs.dem`` in EPSG:4326 at ~30 m covering the west half of a UTM 10 m scene: refused
    unless a partial DEM is allowed (then the uncovered part is nodata)."""
    write_dem(tmp_path / "dem.tif", bands, fraction=0.5)
    code, err = run_cli(capsys, *job_yaml(tmp_path, bands, tiny_model, "inputs:\n  dem: dem.tif\n"))
    assert code == 2 and re.search(r"DEM \(inputs.dem\) does not cover 5\d\.\d\d% of the scene", err), err
    run_ok(capsys, *job_yaml(tmp_path, bands, tiny_model, "inputs:\n  dem: dem.tif\n"), "--allow-partial-dem")
    prob, crs, _ = read(tmp_path / "out" / "probability.tif")
    assert crs == "EPSG:32645" and prob.shape == bands.shape[1:]
    quarter = prob.shape[1] // 4
    assert (prob[:, :quarter] >= 0).all()  # under the DEM: mapped
    assert (prob[:, -quarter:] == -1).all()  # beyond it: nodata, not a guess
