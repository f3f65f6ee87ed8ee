"""``fetch-data l4s`` against a loopback HTTP server serving archives built from the real sample patches."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from loopback_http import serve

from landslide_batch.cli import main
from landslide_batch.fetch_data import load_sources
from landslide_training.dataset import find_pairs, read_pair

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "landslide4sense"
pytestmark = pytest.mark.skipif(
    not (SAMPLE / "labelled" / "img").is_dir(), reason=f"real Landslide4Sense sample not found at {SAMPLE}"
)
TRAIN_IDS = (1, 2, 3, 16)  # mask_3 is empty: an all-zero mask is data too
TEST_IDS = (31, 37)


def _train_zip(path: Path, ids=TRAIN_IDS) -> Path:
    """Like the record's TrainData.zip: TrainData/img/image_N.h5 + TrainData/mask/mask_N.h5 (stored, so
    a flipped byte is a CRC error rather than a decompression error)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("TrainData/", "")
        for n in ids:
            z.write(SAMPLE / "labelled" / "img" / f"image_{n}.h5", f"TrainData/img/image_{n}.h5")
            z.write(SAMPLE / "labelled" / "mask" / f"mask_{n}.h5", f"TrainData/mask/mask_{n}.h5")
        z.writestr("TrainData/readme.txt", "not a patch")
    return path


def _test_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for n in TEST_IDS:
            t.add(SAMPLE / "unlabelled" / "img" / f"image_{n}.h5", f"TestData/img/image_{n}.h5")
    return path


def _sources(path: Path, files: list[dict], **extra) -> Path:
    path.write_text(
        yaml.safe_dump({"dataset": "Landslide4Sense", "base_url": "http://unused.invalid", "files": files, **extra})
    )
    return path


def _record(path: Path, checksums: dict[str, str]) -> Path:
    """A record listing in the shape of Zenodo's REST API (``GET /api/records/ID``)."""
    path.write_text(
        json.dumps(
            {
                "id": 10463239,
                "files": [{"key": name, "size": 1, "checksum": f"md5:{md5}"} for name, md5 in checksums.items()],
            }
        )
    )
    return path


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path):
    srv = tmp_path / "srv"
    srv.mkdir()
    return _train_zip(srv / "TrainData.zip"), _test_tar(srv / "TestData.tar.gz")


def test_fetch_lays_out_verified_splits(served, tmp_path, capsys):
    train_zip, test_tar = served
    sources = _sources(
        tmp_path / "s.yaml",
        [
            {"name": "TrainData.zip", "split": "train", "md5": _md5(train_zip)},
            {"name": "TestData.tar.gz", "split": "test"},  # no checksum: fetched, flagged, digests recorded
        ],
    )
    out = tmp_path / "l4s"
    with serve(train_zip.parent) as (base, state):
        state.drop_once.add("/TrainData.zip")
        assert main(["fetch-data", "l4s", "--out", str(out), "--sources", str(sources), "--base-url", base]) == 0
    captured = capsys.readouterr()
    assert "TrainData.zip" in captured.err and "100%" in captured.err  # progress bar
    assert "UNVERIFIED" in captured.out and _md5(test_tar) in captured.out
    assert [s for p, _, s in state.requests if p == "/TrainData.zip"] == [200, 206]  # resumed after the drop

    pairs = find_pairs(out / "train")  # the layout train/evaluate read
    assert [p.number for p in pairs] == sorted(TRAIN_IDS)
    for p in pairs:
        assert p.image.read_bytes() == (SAMPLE / "labelled" / "img" / p.image.name).read_bytes()
        assert p.mask.read_bytes() == (SAMPLE / "labelled" / "mask" / p.mask.name).read_bytes()
    bands, mask = read_pair(pairs[0])
    assert bands.shape == (14, 128, 128) and mask.shape == (128, 128)
    assert sorted(p.name for p in (out / "test" / "img").iterdir()) == [f"image_{n}.h5" for n in TEST_IDS]
    assert not (out / "test" / "mask").exists() and not (out / "val").exists()
    manifest = json.loads((out / "fetch.json").read_text())
    assert [(f["split"], f["verified"], f["images"], f["masks"]) for f in manifest["files"]] == [
        ("train", True, 4, 4),
        ("test", False, 2, 0),
    ]
    assert manifest["files"][1]["sha256"] == hashlib.sha256(test_tar.read_bytes()).hexdigest()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_archive_is_refused(served, tmp_path, capsys):
    train_zip, _ = served
    good_md5 = _md5(train_zip)
    _corrupt(train_zip)
    out = tmp_path / "l4s"
    with serve(train_zip.parent) as (base, _):
        checked = _sources(tmp_path / "a.yaml", [{"name": "TrainData.zip", "split": "train", "md5": good_md5}])
        assert main(["fetch-data", "l4s", "--out", str(out), "--sources", str(checked), "--base-url", base]) == 2
        assert f"md5 expected {good_md5}" in capsys.readouterr().err
        assert not (out / "train").exists() and list((out / "downloads").iterdir()) == []

        unchecked = _sources(tmp_path / "b.yaml", [{"name": "TrainData.zip", "split": "train"}])
        assert main(["fetch-data", "l4s", "--out", str(out), "--sources", str(unchecked), "--base-url", base]) == 2
        assert "corrupt or truncated archive" in capsys.readouterr().err
        assert not (out / "train").exists() and not any(p.name.startswith(".train") for p in out.iterdir())


def test_an_archive_without_patches_is_refused(tmp_path, capsys):
    srv = tmp_path / "srv"
    srv.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ValidData/notes.txt", "nothing here")
    (srv / "ValidData.zip").write_bytes(buf.getvalue())
    sources = _sources(tmp_path / "s.yaml", [{"name": "ValidData.zip", "split": "val"}])
    with serve(srv) as (base, _):
        assert (
            main(["fetch-data", "l4s", "--out", str(tmp_path / "o"), "--sources", str(sources), "--base-url", base])
            == 2
        )
    assert "no image_N.h5 under an img/ folder" in capsys.readouterr().err


def test_checksums_come_from_the_record_listing(served, tmp_path, capsys):
    train_zip, test_tar = served
    _record(train_zip.parent / "record.json", {"TrainData.zip": _md5(train_zip), "TestData.tar.gz": _md5(test_tar)})
    files = [{"name": "TrainData.zip", "split": "train"}, {"name": "TestData.tar.gz", "split": "test"}]
    out = tmp_path / "l4s"
    with serve(train_zip.parent) as (base, state):
        sources = _sources(tmp_path / "s.yaml", files, record_api=f"{base}/record.json")
        assert main(["fetch-data", "l4s", "--out", str(out), "--sources", str(sources), "--base-url", base]) == 0
    assert "UNVERIFIED" not in capsys.readouterr().out
    manifest = json.loads((out / "fetch.json").read_text())
    assert [(f["split"], f["verified"]) for f in manifest["files"]] == [("train", True), ("test", True)]
    assert state.requests[0][0] == "/record.json"  # the listing is read before any archive

    # The record's checksum is enforced: a corrupted archive on the server is refused.
    _corrupt(train_zip)
    with serve(train_zip.parent) as (base, _):
        sources = _sources(tmp_path / "s.yaml", files[:1], record_api=f"{base}/record.json")
        assert (
            main(["fetch-data", "l4s", "--out", str(tmp_path / "again"), "--sources", str(sources), "--base-url", base])
            == 2
        )
        assert "checksum mismatch" in capsys.readouterr().err
        assert not (tmp_path / "again" / "train").exists()

        # A file the record does not list, and a pinned checksum the record contradicts.
        unlisted = _sources(
            tmp_path / "u.yaml", [{"name": "ValidData.zip", "split": "val"}], record_api=f"{base}/record.json"
        )
        assert main(["fetch-data", "l4s", "--out", str(tmp_path / "u"), "--sources", str(unlisted)]) == 2
        assert "does not list ValidData.zip" in capsys.readouterr().err
        pinned = _sources(tmp_path / "p.yaml", [{**files[0], "md5": "0" * 32}], record_api=f"{base}/record.json")
        assert main(["fetch-data", "l4s", "--out", str(tmp_path / "p"), "--sources", str(pinned)]) == 2
        assert "the record says" in capsys.readouterr().err


def test_an_unreachable_record_is_a_clear_error(tmp_path, capsys):
    sources = _sources(
        tmp_path / "s.yaml",
        [{"name": "TrainData.zip", "split": "train"}],
        record_api="http://127.0.0.1:9/api/records/1",
    )
    assert main(["fetch-data", "l4s", "--out", str(tmp_path / "o"), "--sources", str(sources)]) == 2
    assert "cannot reach http://127.0.0.1:9/api/records/1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_shipped_sources_name_the_zenodo_record():
    s = load_sources()
    assert s.record_api == "https://zenodo.org/api/records/10463239" and not any(f.checksums for f in s.files)
    assert [(f.name, f.split) for f in s.files] == [
        ("TrainData.zip", "train"),
        ("ValidData.zip", "val"),
        ("TestData.zip", "test"),
    ]
    assert s.url(s.files[0]) == "https://zenodo.org/records/10463239/files/TrainData.zip?download=1"
    assert s.url(s.files[0], "http://mirror/l4s/") == "http://mirror/l4s/TrainData.zip"
