"""What compressing the working scene store costs and saves: bytes, write and read time per codec,
on a local disk and on an S3 API (moto's server on loopback), against a block's prediction time.

The scene is a mosaic of the real Landslide4Sense patches in ../shared (float32, as the working
store holds them); the store's layout is the pipeline's (bands chunked (14, 512, 512)). A job
reads each block once (the halo re-reads neighbours' chunks), so the read cost per block is what
competes with the model; writing happens once, at ingest.

    .venv/bin/python benchmarks/working_store_codec.py [--size 1024] [--repeat 3] [--no-s3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
L4S = ROOT.parent / "shared" / "data" / "landslide4sense" / "labelled" / "img"
CHUNK = 512


def mosaic(size: int) -> np.ndarray:
    """(14, size, size) float32 from the real L4S patches (repeated in a grid)."""
    import h5py

    patches = [np.asarray(h5py.File(p, "r")["img"], np.float32).transpose(2, 0, 1) for p in sorted(L4S.glob("*.h5"))]
    n = size // 128
    rows = [np.concatenate([patches[(r * n + c) % len(patches)] for c in range(n)], axis=2) for r in range(n)]
    return np.concatenate(rows, axis=1)


def codecs() -> dict[str, object]:
    from zarr.codecs import BloscCodec, ZstdCodec

    return {
        "none": None,
        "zstd-1": ZstdCodec(level=1),
        "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),
        "blosc-zstd1-bitshuffle": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    }


def measure(where: str, bands: np.ndarray, codec, repeat: int) -> dict[str, float]:
    import zarr

    from landslide_batch.storage import location

    best_w = best_r = float("inf")
    for _ in range(repeat):
        location(where).rm()
        group = zarr.open_group(where, mode="w")
        arr = group.create_array(
            "bands", shape=bands.shape, chunks=(bands.shape[0], CHUNK, CHUNK), dtype="float32", compressors=codec
        )
        t = time.perf_counter()
        for y in range(0, bands.shape[1], CHUNK):
            for x in range(0, bands.shape[2], CHUNK):
                arr[:, y : y + CHUNK, x : x + CHUNK] = bands[:, y : y + CHUNK, x : x + CHUNK]
        best_w = min(best_w, time.perf_counter() - t)
        arr = zarr.open_group(where, mode="r")["bands"]
        t = time.perf_counter()
        got = arr[:]
        best_r = min(best_r, time.perf_counter() - t)
        assert np.array_equal(got, bands)
    loc = location(where)
    stored = (
        sum(p.stat().st_size for p in loc.path.rglob("*") if p.is_file())
        if loc.is_local
        else sum(loc.fs.du(loc.fs_path, total=False).values())
    )
    mb = bands.nbytes / 1e6
    return {"ratio": bands.nbytes / stored, "write_MBps": mb / best_w, "read_MBps": mb / best_r}


def block_predict_s(bands: np.ndarray) -> float:
    """Seconds the CPU pipeline's predictor takes for one 1024² block (U-Net-MobileNetV2, as in the
    benchmarks' memory rows; the ResNet34 rows are slower, which only shrinks the codec's share)."""
    import torch

    from landslide_batch.config import EnsembleConfig, EnsembleMember
    from landslide_batch.infer.predictor import EnsemblePredictor
    from landslide_batch.models.card import init_model_folder

    torch.set_num_threads(os.cpu_count() or 1)  # the benchmark owns its process
    with tempfile.TemporaryDirectory() as tmp:
        init_model_folder("Unet", "mobilenet_v2", Path(tmp) / "m", seed=0)
        pred = EnsemblePredictor(
            EnsembleConfig(members=[EnsembleMember(model=Path(tmp) / "m")]), tile=128, stride=64, device="cpu"
        )
        window = bands[:, : 1024 + 64, : 1024 + 64]
        valid = np.ones(window.shape[1:], bool)
        t = time.perf_counter()
        pred.predict_window(window, valid)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-s3", action="store_true")
    args = ap.parse_args()
    bands = mosaic(args.size)
    block_mb = 14 * (1024 + 64) ** 2 * 4 / 1e6  # one 1024² block with its halo
    predict = block_predict_s(bands)
    print(
        f"scene {bands.shape}, {bands.nbytes / 1e6:.0f} MB; one 1024² block (+halo, {block_mb:.0f} MB) "
        f"predicts in {predict:.2f} s on {os.cpu_count()} CPU(s)"
    )
    targets = []
    with tempfile.TemporaryDirectory() as tmp:
        targets.append(("local disk", f"{tmp}/scene.zarr"))
        server = None
        if not args.no_s3:
            sys.path.insert(0, str(ROOT / "tests"))
            from s3_server import moto_s3

            server = moto_s3(Path(tmp) / "moto.log")
            os.environ.update(server.__enter__())
            import s3fs

            s3fs.S3FileSystem().mkdir("bench")
            targets.append(("S3 (moto, loopback)", "s3://bench/scene.zarr"))
        try:
            print(
                f"{'store':22} {'codec':24} {'ratio':>6} {'write MB/s':>11} {'read MB/s':>10} "
                f"{'read s/block':>13} {'vs none':>8} {'of predict':>11}"
            )
            for label, where in targets:
                base = None
                for name, codec in codecs().items():
                    m = measure(where, bands, codec, args.repeat)
                    read_s = block_mb / m["read_MBps"]
                    base = read_s if base is None else base
                    print(
                        f"{label:22} {name:24} {m['ratio']:6.2f} {m['write_MBps']:11.0f} {m['read_MBps']:10.0f} "
                        f"{read_s:13.3f} {read_s - base:+8.3f} {(read_s - base) / predict:+11.1%}"
                    )
        finally:
            if server is not None:
                server.__exit__(None, None, None)


if __name__ == "__main__":
    main()
