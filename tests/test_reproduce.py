"""``reproduce --quick``: the study's zoo path end to end on the real sample (2 models, 1 epoch, CPU)."""

from __future__ import annotations

import csv
import socket
import tempfile
from pathlib import Path

import pytest

from landslide_batch.errors import InputError
from landslide_batch.infer.executors import shutdown_ray
from landslide_batch.models.card import read_card
from landslide_training.dataset import find_pairs
from landslide_training.reproduce import QUICK_MODELS, SAMPLE, STUDY_SETTINGS, reproduce, split_by_links

needs_sample = pytest.mark.skipif(
    not (SAMPLE / "img").is_dir(), reason=f"real Landslide4Sense sample not found at {SAMPLE}"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_ray():
    """A local Ray of this test's own: its temp dir and dashboard port (Ray Train 2 needs the dashboard)."""
    import ray

    if ray.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="rh15-", dir="/tmp") as tmp:
        ray.init(num_cpus=2, _temp_dir=tmp, dashboard_port=_free_port(), include_dashboard=True)
        try:
            yield
        finally:
            shutdown_ray()


@needs_sample
def test_split_by_links_is_seeded_and_copies_nothing(tmp_path):
    pairs = find_pairs(SAMPLE)
    train, val = split_by_links(pairs, tmp_path / "a")
    again, _ = split_by_links(pairs, tmp_path / "b")
    names = sorted(p.name for p in (train / "img").iterdir())
    assert names == sorted(p.name for p in (again / "img").iterdir())  # seed 42, as the study
    assert len(find_pairs(val)) == round(0.2 * len(pairs)) and len(find_pairs(train)) + len(find_pairs(val)) == 21
    assert all(p.is_symlink() for p in (train / "img").iterdir())
    assert set(names).isdisjoint(p.name for p in (val / "img").iterdir())


def _published(folder: Path) -> Path:
    """A folder as ``import-model --all`` leaves it: one imported study checkpoint + ensemble.yaml."""
    import torch
    from test_study_import import lightning_state

    from landslide_batch.models.registry import build_model
    from landslide_batch.models.study import ensemble_yaml, import_checkpoint

    torch.manual_seed(3)
    folder.mkdir()
    torch.save(lightning_state(build_model("Unet", "mobilenet_v2", 14)), folder / "mobilenetv2.pth")
    import_checkpoint("mobilenetv2", folder / "mobilenetv2.pth", folder / "study_mobilenetv2")
    (folder / "ensemble.yaml").write_text(ensemble_yaml(["mobilenetv2"]))
    return folder


def test_reproduce_without_data_says_how_to_get_it(tmp_path):
    with pytest.raises(InputError, match="fetch-data l4s"):
        reproduce(tmp_path / "r", tmp_path / "nowhere")


@pytest.mark.slow
@needs_sample
def test_quick_reproduction_writes_its_table(tmp_path, own_ray):
    rows = reproduce(tmp_path / "repro", quick=True, device="cpu", imported=_published(tmp_path / "published"))
    assert [r["model"] for r in rows] == [
        *QUICK_MODELS,
        "ensemble (equal weights)",
        "study_mobilenetv2",
        "ensemble (ensemble.yaml)",
    ]
    assert [r["source"] for r in rows] == ["trained here"] * 3 + ["published"] * 2
    table = (tmp_path / "repro" / "table.md").read_text()
    assert "QUICK RUN" in table and all(name in table for name in QUICK_MODELS)
    assert f"validation split: 4 patches of `{SAMPLE}` (20%, seed 42; the other 17 trained on)" in table
    csv_rows = list(csv.DictReader(open(tmp_path / "repro" / "table.csv")))
    assert [r["model"] for r in csv_rows] == [r["model"] for r in rows]
    assert all(0 <= float(r["f1"]) <= 1 and 0 <= float(r["precision"]) <= 1 for r in csv_rows)
    assert csv_rows[1]["study_f1"] == "0.701"  # the plain U-Net's reported F1 beside ours
    for name in QUICK_MODELS:
        card = read_card(tmp_path / "repro" / "models" / name)
        assert card.trained and card.training["result"]["epochs_run"] == 1
        assert card.training["bce_weight"] == pytest.approx(STUDY_SETTINGS["bce_weight"])
        assert card.training["result"]["val_patches"] == 4 and card.training["result"]["train_patches"] == 17
    assert not (tmp_path / "repro" / "split").exists()  # the quick split lives in a temp dir
