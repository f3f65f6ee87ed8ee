"""A local scene job writes each block's products while the next blocks are predicted
(``outputs.products.ProductsWriter`` fed by ``map_scene``'s ``on_block``): the products equal
those ``write_products`` makes afterwards from the same finished store, resumed or not, and an
error in the writer's thread fails the job with nothing published."""

from __future__ import annotations

import threading

import geopandas
import numpy as np
import pytest
import rasterio
import shapely
from conftest import make_varying_model
from maps import job

from landslide_batch.infer import stages
from landslide_batch.outputs import derive
from landslide_batch.outputs.products import OUTPUTS, ProductsWriter, write_products
from landslide_batch.pipeline import run_job
from landslide_batch.synthetic import PIXEL_M, synthetic_scene, write_geotiff

SIDE, BLOCK = 1024, 512  # 4 blocks; write_products' windows are 1024 px: one window
CORES = {(0, 512, 0, 512), (0, 512, 512, 1024), (512, 1024, 0, 512), (512, 1024, 512, 1024)}
RASTERS = ("probability.tif", "uncertainty.tif", "mask.tif")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    bands, _ = synthetic_scene(SIDE, SIDE, seed=5)
    return write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", bands), bands


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model, scene):
    out = tmp_path_factory.mktemp("models") / "varying"
    make_varying_model(tiny_model, out, scene[1])
    return out


@pytest.fixture
def after_the_fact(tmp_path, monkeypatch):
    """Once the job's writer finished (its store and scene store still there), ``write_products``
    writes the same products again into ``tmp_path/after/final``; -> its summaries (one per job)."""
    real_finish = ProductsWriter.finish
    summaries: list[dict] = []
    busy: list[ProductsWriter] = []

    def finish_then_again(self):
        summary = real_finish(self)
        if not busy:  # the job's finish, not write_products' own below
            busy.append(self)
            stage = tmp_path / "after"
            stage.mkdir(exist_ok=True)
            try:
                summaries.append(
                    write_products(
                        self.cfg, self.scene, self.store_path, stage, self.threshold, self.outputs, self.tags
                    )
                )
            finally:
                busy.clear()
        return summary

    monkeypatch.setattr(ProductsWriter, "finish", finish_then_again)
    return summaries


@pytest.fixture
def windows(monkeypatch):
    """The regions the writers' threads add, in order, each once processed."""
    real_window = derive.MaskAndPolygons.window
    done: list[tuple[int, int, int, int]] = []
    first = threading.Event()

    def window(self, y0, y1, x0, x1):
        pieces = real_window(self, y0, y1, x0, x1)
        done.append((y0, y1, x0, x1))
        first.set()
        return pieces

    monkeypatch.setattr(derive.MaskAndPolygons, "window", window)
    return done, first


def assert_same_products(a, b, summary: dict, again: dict) -> None:
    """The COGs' pixels (and overviews, tags), the polygons (order-free, every attribute) and the
    summary of two finishes are equal."""
    for name in RASTERS:
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            assert x.profile == y.profile and x.tags() == y.tags() and x.overviews(1) == y.overviews(1)
            np.testing.assert_array_equal(x.read(1), y.read(1))
            np.testing.assert_array_equal(x.read(1, out_shape=(256, 256)), y.read(1, out_shape=(256, 256)))
    mine, theirs = (_sorted_objects(p / OUTPUTS["polygons"]) for p in (a, b))
    assert len(mine) > 20 and list(mine.columns) == list(theirs.columns)
    assert (mine.object_id.sort_values().to_numpy() == np.arange(1, len(mine) + 1)).all()
    assert shapely.equals(mine.geometry.to_numpy(), theirs.geometry.to_numpy()).all()
    for column in mine.columns.drop(["geometry", "object_id"]):
        np.testing.assert_allclose(mine[column], theirs[column], rtol=1e-12, atol=0, err_msg=column)
    assert {k: summary[k] for k in again} == again and again["objects"] == len(mine)
    # Objects cut by the blocks' borders were joined: some cross the middle row or column.
    middle_x, middle_y = 500000.0 + BLOCK * PIXEL_M, 3100000.0 - BLOCK * PIXEL_M
    b = mine.geometry.bounds
    crossing = ((b.minx < middle_x) & (b.maxx > middle_x)) | ((b.miny < middle_y) & (b.maxy > middle_y))
    assert crossing.sum() >= 3


def _sorted_objects(path):
    objects = geopandas.read_file(path)
    centre = objects.geometry.centroid
    return (
        objects.assign(_x=centre.x.round(6), _y=centre.y.round(6))
        .sort_values(["pixels", "_x", "_y"])
        .drop(columns=["_x", "_y"])
        .reset_index(drop=True)
    )


def test_blocks_products_written_while_predicting_equal_those_written_after(
    tmp_path, scene, model, monkeypatch, after_the_fact, windows
):
    done, first = windows
    real_predict = stages.PredictBlock.__call__
    predicted: list[str] = []
    seen_at_last: list[list] = []

    def predict(self, row):
        predicted.append(row["key"])
        if len(predicted) == len(CORES):  # the last block: the writer must not be waiting for it
            first.wait(120)
            seen_at_last.append(list(done))
        return real_predict(self, row)

    monkeypatch.setattr(stages.PredictBlock, "__call__", predict)
    manifest = run_job(job(scene[0], tmp_path / "out", model, block=BLOCK))
    assert manifest["blocks"]["computed"] == len(CORES)
    assert seen_at_last[0] and seen_at_last[0][0] in CORES  # a block's products before the last prediction
    assert set(done[: len(CORES)]) == CORES and done[len(CORES) :] == [(0, SIDE, 0, SIDE)]
    assert_same_products(tmp_path / "out", tmp_path / "after" / "final", manifest["summary"], after_the_fact[0])


def test_resumed_job_gives_the_products_written_after(tmp_path, scene, model, monkeypatch, after_the_fact, windows):
    real_write = stages.WriteBlock.__call__
    written: list[str] = []

    def crash_after_two(self, row):
        if len(written) == 2:
            raise RuntimeError("simulated crash")
        written.append(row["key"])
        return real_write(self, row)

    monkeypatch.setattr(stages.WriteBlock, "__call__", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(job(scene[0], tmp_path / "out", model, block=BLOCK))
    assert not (tmp_path / "out" / "run.json").exists()
    assert not [t for t in threading.enumerate() if t.name == "products"]  # the writer left with the job
    monkeypatch.setattr(stages.WriteBlock, "__call__", real_write)
    manifest = run_job(job(scene[0], tmp_path / "out", model, block=BLOCK))
    assert manifest["blocks"]["resumed"] == 2 and manifest["blocks"]["computed"] == 2
    assert_same_products(tmp_path / "out", tmp_path / "after" / "final", manifest["summary"], after_the_fact[0])


def test_an_error_in_the_writers_thread_fails_the_job_and_publishes_nothing(tmp_path, scene, model, monkeypatch):
    real_window = derive.MaskAndPolygons.window
    calls: list[int] = []

    def failing(self, *region):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("polygon writer broke")
        return real_window(self, *region)

    monkeypatch.setattr(derive.MaskAndPolygons, "window", failing)
    with pytest.raises(ValueError, match="polygon writer broke"):
        run_job(job(scene[0], tmp_path / "out", model, block=BLOCK))
    out = tmp_path / "out"
    assert not (out / "run.json").exists()
    assert not any((out / name).exists() for name in OUTPUTS.values())
    assert not [t for t in threading.enumerate() if t.name == "products"]
