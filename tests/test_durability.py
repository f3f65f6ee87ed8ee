"""Power-loss safety (docs/reliability.md): every local write that vouches for other data reaches
the disk after that data. Checked on a real job's write path by recording each ``os.fsync``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zarr
from maps import job

from landslide_batch.outputs.store import LAYERS
from landslide_batch.pipeline import OUTPUTS, run_job
from landslide_batch.storage.durable import durable_replace


def is_chunk(path: Path) -> bool:
    """A chunk file of the output store (``probability.zarr/<layer>/c/<i>/<j>``)."""
    return path.parent.parent.name == "c" and path.parents[3].name == "probability.zarr"


@pytest.fixture
def synced(monkeypatch) -> list[Path]:
    """The paths ``os.fsync`` is called on, in order (each fsync still runs)."""
    calls: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_durable_replace_syncs_the_file_then_the_rename(tmp_path, synced):
    (tmp_path / "a").mkdir()
    src, dst = tmp_path / "a" / "new.tmp", tmp_path / "b.json"
    src.write_text("{}")
    durable_replace(src, dst)
    # The contents before the rename (under the old name), then both folders' entries.
    assert synced == [src, tmp_path, tmp_path / "a"]
    assert dst.read_text() == "{}" and not src.exists()


def test_job_syncs_block_data_before_markers_and_products_before_run_json(tmp_path, scene_tif, tiny_model, synced):
    out = tmp_path / "out"
    manifest = run_job(job(scene_tif, out, tiny_model))
    work, markers = out / ".work", out / ".work" / "blocks"

    # Each block: its chunks (one per layer: probability, uncertainty, agreement) synced, then its marker's entry.
    final = work / "final"
    first_publish = next(i for i, p in enumerate(synced) if final in p.parents)
    events = ["marker" if p == markers else "chunk" for p in synced[:first_publish] if p == markers or is_chunk(p)]
    assert manifest["blocks"]["skipped_nodata"] == 0 and manifest["blocks"]["computed"] == manifest["blocks"]["total"]
    assert events == (["chunk"] * len(LAYERS) + ["marker"]) * manifest["blocks"]["total"]
    store = zarr.open_group(str(out / OUTPUTS["zarr"]), mode="r")
    assert store["probability"].nchunks_initialized == manifest["blocks"]["total"]

    # Publishing: each product synced under its working name, then ``out`` (its rename); run.json last.
    last = {p: i for i, p in enumerate(synced)}
    for name in ("probability", "mask", "uncertainty"):
        assert final / OUTPUTS[name] in last, name
    assert work / "probability.zarr" / "zarr.json" in last  # the store, as a tree
    run_json_synced = last[final / "run.json"]
    assert synced[-3:] == [final / "run.json", out, final]  # run.json, then its rename: the last made durable
    assert all(last[final / OUTPUTS[n]] < run_json_synced for n in ("probability", "mask", "polygons"))
    assert (out / "run.json").is_file()
