"""End-to-end region jobs on small synthetic scenes."""

import json

import numpy as np
import pytest
import rasterio
import torch
from maps import KERNEL_ATOL, assert_same_map
from rio_cogeo.cogeo import cog_validate

from landslide_batch.config import job_from_dict
from landslide_batch.errors import ConfigError, InputError, OutputLockedError
from landslide_batch.infer import stages
from landslide_batch.infer.executors import shutdown_ray
from landslide_batch.models.card import (
    init_model_folder,
    load_model_folder,
    save_model_folder,
)
from landslide_batch.pipeline import OUTPUTS, run_job


def job(scene, out, model, **kw):
    return job_from_dict(
        {"scene": str(scene), "out": str(out), "models": [str(model)], "block": 128, "batch_size": 8, **kw}
    )


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
    """A U-Net whose head outputs the same logit everywhere (p = sigmoid(0.8) = 0.69)."""
    out = tmp_path_factory.mktemp("models") / "const"
    init_model_folder("Unet", "mobilenet_v2", out, seed=0)
    model, card = load_model_folder(out)
    with torch.no_grad():
        model.segmentation_head[0].weight.zero_()
        model.segmentation_head[0].bias.fill_(0.8)
    save_model_folder(model, card, out, overwrite=True)
    return out


def test_map_keeps_georeferencing_and_masks_nodata(tmp_path, scene_tif, tiny_model):
    manifest = run_job(job(scene_tif, tmp_path / "out", tiny_model))
    out = tmp_path / "out"
    assert set(OUTPUTS.values()) <= {p.name for p in out.iterdir()}
    prob, profile = read(out / "probability.tif")
    with rasterio.open(scene_tif) as src:
        assert (profile["crs"], profile["transform"]) == (src.crs, src.transform)
        assert prob.shape == (src.height, src.width)
    assert profile["dtype"] == "float32" and profile["nodata"] == -1
    assert not np.isnan(prob).any()
    nodata = prob == -1
    assert nodata[10:14, 20:30].all() and nodata.sum() == 40  # exactly the NaN pixels of the fixture
    assert ((prob[~nodata] >= 0) & (prob[~nodata] <= 1)).all()
    mask, mprofile = read(out / "mask.tif")
    assert mprofile["dtype"] == "uint8" and set(np.unique(mask)) <= {0, 1, 255}
    np.testing.assert_array_equal(mask == 255, nodata)
    np.testing.assert_array_equal(mask == 1, prob >= manifest["summary"]["threshold"])
    for name in ("probability.tif", "uncertainty.tif", "mask.tif"):
        valid, errors, _ = cog_validate(out / name, strict=True)
        assert valid, (name, errors)
    assert manifest["tiles"]["grid"] == 25 and manifest["blocks"]["total"] == 9
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["inputs"]["scene"]["sha256"]
    assert run["models"][0]["trained"] is False and run["versions"]["torch"].startswith("2.")
    assert not (out / ".work").exists()


def test_cog_has_overviews_and_cog_layout_on_a_larger_map(tmp_path):
    """Overviews only exist once the map exceeds one 512 px tile: write one directly."""
    from landslide_batch.ingest.scene import SceneInfo
    from landslide_batch.outputs.rasters import write_cog

    info = SceneInfo(
        1100,
        1300,
        ("B1",),
        rasterio.crs.CRS.from_epsg(32645).to_wkt(),
        (10.0, 0.0, 500000.0, 0.0, -10.0, 3100000.0),
        512,
    )
    ramp = np.add.outer(np.arange(1100), np.arange(1300)).astype(np.float32) / 2400
    write_cog(
        tmp_path / "p.tif",
        info,
        lambda y0, y1, x0, x1: ramp[y0:y1, x0:x1],
        dtype="float32",
        nodata=-1,
        scratch=tmp_path / "scratch.tif",
    )
    valid, errors, warnings = cog_validate(tmp_path / "p.tif", strict=True)
    assert valid and not errors and not warnings
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2, 4] and ds.block_shapes == [(512, 512)]
        np.testing.assert_array_equal(ds.read(1), ramp)
    assert not (tmp_path / "scratch.tif").exists()


def test_zarr_output_is_georeferenced_for_xarray(tmp_path, scene_tif, varying_model):
    import rioxarray  # noqa: F401
    import xarray as xr

    run_job(job(scene_tif, tmp_path / "out", varying_model))
    ds = xr.open_zarr(tmp_path / "out" / "probability.zarr", consolidated=False)
    prob, _ = read(tmp_path / "out" / "probability.tif")
    assert_same_map(ds["probability"].fillna(-1).values, prob)  # CF decoding reads nodata (-1) as NaN
    with rasterio.open(scene_tif) as src:
        assert ds["probability"].rio.crs == src.crs
        assert ds["probability"].rio.transform().almost_equals(src.transform)


def test_map_does_not_depend_on_block_size(tmp_path, scene_tif, varying_model):
    run_job(job(scene_tif, tmp_path / "a", varying_model, block=128))
    run_job(job(scene_tif, tmp_path / "b", varying_model, block=320))
    a, _ = read(tmp_path / "a" / "probability.tif")
    b, _ = read(tmp_path / "b" / "probability.tif")
    assert_same_map(a, b, atol=KERNEL_ATOL)


@pytest.mark.parametrize("blend", ["gaussian", "cosine"])
def test_constant_model_gives_a_seamless_constant_map(tmp_path, scene_tif, constant_model, blend):
    run_job(job(scene_tif, tmp_path / "out", constant_model, blend=blend))
    prob, _ = read(tmp_path / "out" / "probability.tif")
    valid = prob != -1
    np.testing.assert_allclose(prob[valid], 1 / (1 + np.exp(-0.8)), atol=1e-5)


def test_ensemble_of_members_with_different_features(tmp_path, scene_tif, varying_model, tiny_plain_model):
    ens = tmp_path / "ensemble.yaml"
    ens.write_text(f"members:\n  - model: {varying_model}\n    weight: 2\n  - model: {tiny_plain_model}\n")
    cfg = job_from_dict({"scene": str(scene_tif), "out": str(tmp_path / "ens"), "ensemble": str(ens), "block": 128})
    run_job(cfg)
    single = {}
    for name, model in (("a", varying_model), ("b", tiny_plain_model)):
        run_job(job(scene_tif, tmp_path / name, model))
        single[name], _ = read(tmp_path / name / "probability.tif")
    prob, _ = read(tmp_path / "ens" / "probability.tif")
    spread, _ = read(tmp_path / "ens" / "uncertainty.tif")
    valid = prob != -1
    assert_same_map(prob, np.where(valid, (2 * single["a"] + single["b"]) / 3, -1), atol=KERNEL_ATOL)
    expected_std = np.sqrt((2 * (single["a"] - prob) ** 2 + (single["b"] - prob) ** 2) / 3)
    np.testing.assert_allclose(spread[valid], expected_std[valid], atol=KERNEL_ATOL)


def test_resume_after_failure_recomputes_only_unfinished_blocks(tmp_path, scene_tif, varying_model, monkeypatch):
    reference = run_job(job(scene_tif, tmp_path / "ref", varying_model))
    real_write = stages.WriteBlock.__call__
    written = []

    in_flight = []

    def failing_write(self, row):
        if len(written) == 4:
            in_flight.append(row["key"])  # predicted, not yet written: lost with the crash
            raise RuntimeError("simulated crash")
        written.append(row["key"])
        return real_write(self, row)

    monkeypatch.setattr(stages.WriteBlock, "__call__", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(job(scene_tif, tmp_path / "out", varying_model))
    # A failed run leaves nothing that looks finished.
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS.values())
    assert not (tmp_path / "out" / "run.json").exists()
    monkeypatch.setattr(stages.WriteBlock, "__call__", real_write)
    resumed = run_job(job(scene_tif, tmp_path / "out", varying_model))
    assert resumed["blocks"]["resumed"] == 4
    assert resumed["blocks"]["computed"] == reference["blocks"]["computed"] - 4
    recomputed = set(resumed["blocks"]["node_of"])  # the blocks this run computed
    assert in_flight[0] in recomputed and not recomputed & set(written)
    a, _ = read(tmp_path / "ref" / "probability.tif")
    b, _ = read(tmp_path / "out" / "probability.tif")
    # Tiles shared with finished blocks are recomputed in other batches: float32 rounding only.
    assert_same_map(a, b, atol=KERNEL_ATOL)
    # Complete: a third run computes nothing.
    again = run_job(job(scene_tif, tmp_path / "out", varying_model))
    assert again["blocks"]["computed"] == 0 and again["tiles"]["forward_passes"] == 0


def test_output_of_another_job_is_not_overwritten(tmp_path, scene_tif, tiny_model):
    run_job(job(scene_tif, tmp_path / "out", tiny_model))
    with pytest.raises(ConfigError, match="different job"):
        run_job(job(scene_tif, tmp_path / "out", tiny_model, blend="mean"))


def test_concurrent_job_on_same_output_is_refused(tmp_path, scene_tif, tiny_model):
    from filelock import FileLock

    (tmp_path / "out").mkdir()
    with FileLock(tmp_path / "out" / ".lock"):
        with pytest.raises(OutputLockedError, match="another job"):
            run_job(job(scene_tif, tmp_path / "out", tiny_model))


def test_h5_patch_and_scene_smaller_than_a_tile(tmp_path, scene_arrays, tiny_model):
    from landslide_batch.synthetic import write_l4s_patch

    write_l4s_patch(tmp_path / "image_1.h5", scene_arrays[0][:, :100, :90])
    manifest = run_job(job(tmp_path / "image_1.h5", tmp_path / "out", tiny_model))
    prob, profile = read(tmp_path / "out" / "probability.tif")
    assert prob.shape == (100, 90) and (prob >= 0).all()
    assert manifest["tiles"]["grid"] == 2 * 2  # a one-stride margin, then one more tile per axis


def test_wrong_band_count_fails_clearly(tmp_path, scene_arrays, tiny_model):
    from landslide_batch.synthetic import write_geotiff

    bad = write_geotiff(tmp_path / "bad.tif", scene_arrays[0][:12])
    with pytest.raises(InputError, match="expected 14 bands.*found 12"):
        run_job(job(bad, tmp_path / "out", tiny_model))
    assert not (tmp_path / "out" / "probability.tif").exists()


@pytest.mark.slow
def test_ray_executor_equals_local_executor(tmp_path, scene_tif, varying_model):
    run_job(job(scene_tif, tmp_path / "local", varying_model))
    manifest = run_job(job(scene_tif, tmp_path / "ray", varying_model, executor="ray"))
    a, _ = read(tmp_path / "local" / "probability.tif")
    b, _ = read(tmp_path / "ray" / "probability.tif")
    assert_same_map(a, b, atol=KERNEL_ATOL)
    assert manifest["blocks"]["computed"] == 9


@pytest.mark.slow
def test_ray_read_tasks_equal_local_executor_and_a_gpu_torch_cannot_see_fails_clearly(
    tmp_path, scene_tif, varying_model, caplog
):
    """GPU actors are fed by read tasks; the same path on CPU actors (``ray.read_tasks``) gives the
    local map. A Ray that declares a GPU this machine does not have gets GPU actors for ``device:
    auto``, whose torch sees no GPU: a clear error, never a silent CPU run."""
    import ray

    from landslide_batch.errors import DeviceError

    run_job(job(scene_tif, tmp_path / "local", varying_model))
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with caplog.at_level("INFO", logger="landslide_batch.infer.executors"):
            run_job(
                job(scene_tif, tmp_path / "ray", varying_model, executor="ray", device="cpu", ray={"read_tasks": 2})
            )
        with pytest.raises(DeviceError, match="device cuda was asked for, but torch .* sees no CUDA GPU"):
            run_job(job(scene_tif, tmp_path / "gpu", varying_model, executor="ray"))
    finally:
        shutdown_ray()
    assert "through 1 predictor actor(s) on cpu" in caplog.text and "2 block(s) read ahead by Ray tasks" in caplog.text
    a, _ = read(tmp_path / "local" / "probability.tif")
    b, _ = read(tmp_path / "ray" / "probability.tif")
    assert_same_map(a, b, atol=KERNEL_ATOL)
    assert not (tmp_path / "gpu" / "run.json").exists()


def test_tiles_shared_by_blocks_are_predicted_once(tmp_path, scene_tif, tiny_model):
    small = run_job(job(scene_tif, tmp_path / "small", tiny_model, block=128))
    whole = run_job(job(scene_tif, tmp_path / "whole", tiny_model, block=512))
    assert small["blocks"]["total"] == 9 and whole["blocks"]["total"] == 1
    # Nine blocks predict 49 tile slots between them, yet each of the 25 grid tiles runs once.
    assert small["tiles"]["computed_in_blocks"] > small["tiles"]["grid"]
    assert small["tiles"]["forward_passes"] == whole["tiles"]["forward_passes"] == small["tiles"]["grid"] == 25


def test_finished_job_with_a_missing_product_asks_for_overwrite(tmp_path, scene_tif, tiny_model):
    run_job(job(scene_tif, tmp_path / "out", tiny_model))
    (tmp_path / "out" / "mask.tif").unlink()
    with pytest.raises(ConfigError, match="mask.tif is missing; use --overwrite"):
        run_job(job(scene_tif, tmp_path / "out", tiny_model))
    assert run_job(job(scene_tif, tmp_path / "out", tiny_model), overwrite=True)["blocks"]["computed"] == 9
    assert (tmp_path / "out" / "mask.tif").exists()
