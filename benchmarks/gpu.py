"""The GPU rows of issue 16 in one run, sized to take under 8 minutes on one H200.

    .venv/bin/python benchmarks/gpu.py                             # on a GPU machine
    .venv/bin/python benchmarks/gpu.py --model models/trained      # bf16 vs fp32 on this trained model
    .venv/bin/python benchmarks/gpu.py --rows zoo_s2               # only some rows (a rerun)
    .venv/bin/python benchmarks/gpu.py --smoke --device cpu        # tiny sizes, 2 zoo models: its own test

Rows:

- ``zoo``: ``run.py --device cuda --zoo 4096``'s zoo row (``run.zoo_rows``): the 13 zoo models
  (untrained) as one ensemble, raw tiles/s through all members and the local pipeline on 4096²;
- ``efficiency``: the local pipeline on an 8192² scene, run total, against the raw forward of the
  same U-Net-ResNet34 in the pipeline's arithmetic (bf16 autocast on CUDA); gate ≥ 0.80;
- ``precision``: probability maps of a *trained* model over a synthetic window, bf16 autocast
  against fp32 (TF32 off), max |difference| over the window; gate ≤ 0.01. The model is ``--model``,
  or trained here for a few hundred steps on synthetic scenes with the project's own training;
- ``zoo_s2``: the 13-model zoo over a 10980² scene (a Sentinel-2 tile), in minutes.

Scenes: one synthetic 2048² scene (``run.make_scene``) repeated over the larger ones, since
generating 10980² of synthetic terrain alone would take minutes of the GPU's time. Prints a
table with PASS/FAIL beside each gate and writes JSON (``--json``), as ``run.py`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (benchmarks/run.py: scenes, raw rates, pipeline runs, the zoo row)

ROWS = ("zoo", "efficiency", "precision", "zoo_s2")

#: Sizes (px) per mode: scenes of the rows, the trained model's synthetic data, its training.
SIZES = {
    "full": {
        "zoo": 4096,
        "efficiency": 8192,
        "zoo_s2": 10980,
        "window": 2048,
        "train_scene": 1024,
        "train_model": "unet_resnet34",
        "epochs": 3,
        "steps": 100,
        "zoo_members": None,
    },
    "smoke": {
        "zoo": 256,
        "efficiency": 512,
        "zoo_s2": 384,
        "window": 256,
        "train_scene": 256,
        "train_model": "unet_mobilenet_v2",
        "epochs": 1,
        "steps": 2,
        "zoo_members": 2,
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scene(work: Path, size: int) -> Path:
    return bench.make_scene(work / f"scene_{size}.tif", size)


def train_model(work: Path, sizes: dict[str, Any], device: str) -> Path:
    """A model trained briefly (``epochs`` x ``steps`` steps) on patches of a synthetic scene with
    known landslides, with the project's own Ray Train code: a model whose logits are spread
    as a trained model's are, which an untrained one's are not."""
    import ray

    from landslide_batch.synthetic import synthetic_scene, write_geotiff
    from landslide_training.config import TrainConfig
    from landslide_training.patches import cut_scene
    from landslide_training.train import train

    data = work / "train_data"
    data.mkdir(exist_ok=True)
    px = sizes["train_scene"]
    for split, seed in (("train", 11), ("val", 12)):
        bands, labels = synthetic_scene(px, px, seed=seed)
        img = write_geotiff(data / f"{split}.tif", bands)
        lab = write_geotiff(data / f"{split}_labels.tif", labels, dtype="uint8")
        cut_scene(img, lab, data / split, stride=64 if split == "train" else None)
    cfg = TrainConfig(
        model=sizes["train_model"],
        train_data=data / "train",
        val_data=data / "val",
        out=work / "trained",
        run_dir=work / "train_runs",
        epochs=sizes["epochs"],
        max_steps_per_epoch=sizes["steps"],
        batch_size=16 if device.startswith("cuda") else 4,
        lr=3e-3,
        patience=None,
        use_gpu=device.startswith("cuda"),
        cpus_per_worker=min(os.cpu_count() or 1, 8),
    )
    try:
        train(cfg, overwrite=True)
    finally:
        ray.shutdown()
    return work / "trained"


def precision_row(model: Path, sizes: dict[str, Any], device: str, trained_here: bool) -> dict[str, Any]:
    """bf16 autocast against fp32 on one synthetic window. On CUDA the bf16 side is the
    predictor's own arithmetic; on a CPU (``--smoke``) a CPU bf16 autocast stands in for it."""
    import torch

    from landslide_batch.config import EnsembleConfig, EnsembleMember
    from landslide_batch.infer.predictor import EnsemblePredictor
    from landslide_batch.synthetic import synthetic_scene

    predictor = EnsemblePredictor(EnsembleConfig(members=[EnsembleMember(model=model)]), device=device)
    bands, _ = synthetic_scene(sizes["window"], sizes["window"], seed=21)
    valid = np.ones(bands.shape[1:], bool)
    low: AbstractContextManager[object] = (
        predictor.autocast if predictor.device.type == "cuda" else torch.autocast("cpu", dtype=torch.bfloat16)
    )
    predictor.autocast = low
    bf16, _ = predictor.predict_window(bands, valid)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        predictor.autocast = nullcontext()
        fp32, _ = predictor.predict_window(bands, valid)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    diff = np.abs(bf16 - fp32)
    thr = predictor.threshold
    return {
        "model": str(model),
        "trained_here": trained_here,
        "window": sizes["window"],
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "fp32_std": float(fp32.std()),
        "threshold": thr,
        "mask_pixels_changed": int(((bf16 >= thr) != (fp32 >= thr)).sum()),
    }


def efficiency_row(work: Path, size: int, sizes: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """Local pipeline on a size² scene, run total, against the raw forward (both in the
    predictor's arithmetic), with U-Net-ResNet34 as in run.py."""
    from landslide_batch.models.card import init_model_folder
    from landslide_batch.plan.tiling import TileGrid

    r34 = work / "unet_resnet34"
    if not r34.exists():
        init_model_folder("Unet", "resnet34", r34, seed=0)
    predictor = bench.prepared_model(r34, common["threads"], common["device"])
    raw = bench.raw_throughput(predictor, common["batch"], seconds=3)
    del predictor
    m = bench.run_pipeline(scene(work, size), r34, work / f"out_r34_{size}", "local", **common)
    tiles = TileGrid(size, size, bench.TILE, bench.STRIDE).n_tiles
    return {
        "size": size,
        "tiles": tiles,
        "raw_tiles_per_s": raw,
        "tiles_per_s": tiles / m["timings"]["total_s"],
        "efficiency": tiles / m["timings"]["total_s"] / raw,
        "timings": m["timings"],
        "wall_s": m["wall_s"],
        "peak_rss_mb": m["peak_rss_mb"],
    }


def zoo_scene_row(work: Path, size: int, sizes: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """The zoo ensemble written by the ``zoo`` row (``work/zoo.yaml``) over a size² scene."""
    import yaml

    from landslide_batch.plan.tiling import TileGrid

    ensemble = work / "zoo.yaml"
    if not ensemble.exists():
        raise SystemExit(f"row zoo_s2 maps with the zoo row's ensemble, {ensemble}: run the zoo row first")
    m = bench.run_pipeline(scene(work, size), ensemble, work / f"out_zoo_{size}", "local", **common)
    tiles = TileGrid(size, size, bench.TILE, bench.STRIDE).n_tiles
    return {
        "size": size,
        "members": len(yaml.safe_load(ensemble.read_text())["members"]),
        "tiles": tiles,
        "minutes": m["timings"]["total_s"] / 60,
        "wall_minutes": m["wall_s"] / 60,
        "tiles_per_s": tiles / m["timings"]["total_s"],
        "timings": m["timings"],
        "peak_rss_mb": m["peak_rss_mb"],
    }


def run_rows(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    sizes = SIZES["smoke" if args.smoke else "full"]
    common = dict(batch=args.batch_size, threads=args.threads, device=args.device, block=args.block)
    rows: dict[str, Any] = {}
    for name in args.rows:
        log(f"row {name} ...")
        t0 = time.perf_counter()
        if name == "zoo":
            rows[name] = bench.zoo_rows(work, sizes["zoo"], common, members=sizes["zoo_members"])
        elif name == "efficiency":
            rows[name] = efficiency_row(work, sizes["efficiency"], sizes, common)
        elif name == "precision":
            model = args.model or train_model(work, sizes, args.device)
            rows[name] = precision_row(model, sizes, args.device, trained_here=args.model is None)
        else:
            rows[name] = zoo_scene_row(work, sizes["zoo_s2"], sizes, common)
        rows[name]["row_s"] = time.perf_counter() - t0
        log(f"row {name}: {rows[name]['row_s']:.0f} s")
    return rows


def print_table(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Print the table; -> the gated rows ``{row, value, gate, pass}``."""
    rows, gates = r["rows"], []
    lines = [
        f"device {r['device']}, {r['threads']} threads, batch {r['batch_size']}, block {r['block']}"
        + (" (SMOKE: tiny sizes)" if r["smoke"] else ""),
        "",
        "| measure | value | target | result |",
        "|---|---|---|---|",
    ]

    def gated(measure: str, value: str, target: str, ok: bool) -> None:
        gates.append({"row": measure, "value": value, "gate": target, "pass": bool(ok)})
        lines.append(f"| {measure} | {value} | {target} | {'PASS' if ok else 'FAIL'} |")

    if "zoo" in rows:
        z = rows["zoo"]
        lines += [
            f"| zoo ensemble ({z['members']} members) raw (tiles/s through all) | {z['raw_tiles_per_s']:.1f} | | |",
            f"| zoo ensemble pipeline local {z['size']}² (tiles/s, run total; / raw) | {z['tiles_per_s']:.1f} "
            f"({z['tiles_per_s'] / z['raw_tiles_per_s']:.2f}) | | |",
        ]
    if "efficiency" in rows:
        e = rows["efficiency"]
        lines.append(f"| raw model forward, U-Net-ResNet34 (tiles/s) | {e['raw_tiles_per_s']:.1f} | | |")
        lines.append(f"| pipeline local {e['size']}² (tiles/s, run total) | {e['tiles_per_s']:.1f} | | |")
        gated(
            f"efficiency local {e['size']}² (pipeline / raw)",
            f"{e['efficiency']:.2f}",
            "≥ 0.80",
            e["efficiency"] >= 0.80,
        )
    if "precision" in rows:
        p = rows["precision"]
        gated(
            f"bf16 vs fp32 probability, trained model, {p['window']}² window (max abs diff; mask pixels "
            f"changed {p['mask_pixels_changed']})",
            f"{p['max_abs_diff']:.4f}",
            "≤ 0.01",
            p["max_abs_diff"] <= 0.01,
        )
    if "zoo_s2" in rows:
        s = rows["zoo_s2"]
        lines.append(
            f"| zoo ensemble over a {s['size']}² scene (minutes, run total; process wall) "
            f"| {s['minutes']:.1f} ({s['wall_minutes']:.1f}) | | |"
        )
    print("\n".join(lines))
    return gates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and 2 zoo models (a test on a CPU)")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    ap.add_argument("--model", type=Path, default=None, help="a trained model folder for the precision row")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 on a GPU, 16 on CPU (as the pipeline)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=bench.ROOT / "benchmarks" / "results" / "gpu.json")
    args = ap.parse_args(argv)
    args.batch_size = args.batch_size or (64 if args.device.startswith("cuda") else 16)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from landslide_batch.infer.device import require_device

    require_device(args.device)  # a clear error, never a silent CPU run
    work = args.work or Path(tempfile.mkdtemp(prefix="lsb-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "device": args.device,
        "smoke": args.smoke,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "block": args.block,
        "rows": run_rows(args, work),
    }
    results["total_s"] = time.perf_counter() - t0
    results["gates"] = print_table(results)
    print(f"\ntotal {results['total_s'] / 60:.1f} min")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
