"""``landslide-batch demo``: the whole system offline on synthetic data, in a few minutes on a CPU.

1. A synthetic training and a validation scene (GeoTIFFs with known landslides) are cut
   into L4S-format patch folders.
2. A small U-Net (MobileNetV2 encoder) is trained on them with the project's own Ray Train
   code, one worker using every core.
3. A third, unseen synthetic scene is written as a UTM GeoTIFF and mapped by the real region
   pipeline (``run_job``), and the map is scored against the scene's known landslides.

Everything is synthetic: the score shows the machinery works end to end, not how well a
model trained on real Landslide4Sense data maps real landslides.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from landslide_batch.checks.output import check_out_folder
from landslide_batch.errors import ConfigError
from landslide_batch.metrics import confusion_counts, scores
from landslide_batch.synthetic import synthetic_scene, write_geotiff

from .config import TrainConfig
from .patches import cut_scene
from .train import train

PATCH = 128


def _labelled_scene(out: Path, name: str, px: int, seed: int) -> tuple[Path, Path, np.ndarray]:
    """A synthetic scene as a UTM GeoTIFF plus its known landslides as a 0/1 GeoTIFF."""
    bands, labels = synthetic_scene(px, px, seed=seed)
    return (
        write_geotiff(out / f"{name}.tif", bands),
        write_geotiff(out / f"{name}_labels.tif", labels, dtype="uint8"),
        labels,
    )


def _demo_data(out: Path, train_px: int, val_px: int) -> tuple[int, int]:
    """Training and validation patches cut from two synthetic scenes into ``out/data`` -> their counts."""
    shutil.rmtree(out / "data", ignore_errors=True)
    (out / "data").mkdir(parents=True)
    n_train = cut_scene(
        *_labelled_scene(out / "data", "train_scene", train_px, 11)[:2], out / "data" / "train", stride=PATCH // 2
    )
    n_val = cut_scene(*_labelled_scene(out / "data", "val_scene", val_px, 12)[:2], out / "data" / "val")
    return n_train, n_val


def _map_unseen_scene(out: Path, map_px: int) -> tuple[dict, dict[str, float]]:
    """A third synthetic scene mapped with the region pipeline into ``out/map`` -> (its manifest,
    pixel scores of its mask against the scene's known landslides)."""
    import rasterio

    from landslide_batch.config import job_from_dict
    from landslide_batch.pipeline import MASK_NODATA, OUTPUTS, run_job

    scene, _, labels = _labelled_scene(out, "scene", map_px, 13)  # UTM 45N, 10 m pixels
    job = job_from_dict(
        {
            "scene": str(scene),
            "out": str(out / "map"),
            "models": [str(out / "model")],
            "block": 512,
            "executor": "local",
        }
    )
    manifest = run_job(job, overwrite=True)
    with rasterio.open(out / "map" / OUTPUTS["mask"]) as ds:
        mask = ds.read(1)
    return manifest, scores(confusion_counts(mask == 1, labels, mask != MASK_NODATA))


def _print_summary(out: Path, summary: dict, epochs: int, seconds: float) -> None:
    """Where the outputs are, the map's scores, and what they do not show (synthetic data only)."""
    s, threshold = summary["map_scores"], summary["threshold"]
    print(f"""
Demo finished in {seconds:.0f} s. Outputs in {out}:
  model/           trained model folder (weights + card.json, train_log.csv)
  map/             region map: probability.tif, mask.tif, landslides.gpkg, quicklook.png, run.json
  scene.tif        the mapped scene; scene_labels.tif its known landslides
Map of the unseen scene against its known landslides (pixel-wise, threshold {threshold:.2f}):
  F1 {s["f1"]:.3f}   precision {s["precision"]:.3f}   recall {s["recall"]:.3f}   IoU {s["iou"]:.3f}   \
({summary["objects"]} landslide objects)
NOTE: the model was trained for {epochs} epochs on SYNTHETIC data only, and scored on synthetic data
drawn from the same generator. These numbers show the system works end to end; they say
nothing about accuracy on real imagery. For real maps, import the reference study's trained
models (`landslide-batch import-model --all`), or fetch Landslide4Sense (`landslide-batch
fetch-data l4s`), train (configs/train/*.yaml) and evaluate with `landslide-batch evaluate`.""")


def _quiet_local_ray() -> None:
    """Start the local Ray the training joins without forwarding its workers' logs: the demo prints
    its own steps and result, not Ray Train's raw, colour-coded reports (a worker's error still
    reaches the driver as the training's exception)."""
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)


def run_demo(
    out: Path,
    *,
    train_px: int = 640,
    val_px: int = 384,
    map_px: int = 1024,
    epochs: int = 6,
    model: str = "unet_mobilenet_v2",
) -> dict:
    """Run the demo into ``out``; returns the summary also written to ``out/demo.json``."""
    check_out_folder(Path(out))  # it replaces OUT/data: never the home folder's or a system folder's
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the demo (a new one)")
    t0 = time.perf_counter()
    print(f"[1/3] synthetic training data -> {out / 'data'}", flush=True)
    n_train, n_val = _demo_data(out, train_px, val_px)

    print(f"[2/3] training {model} on {n_train} patches ({n_val} for validation), {epochs} epochs", flush=True)
    cfg = TrainConfig(
        model=model,
        train_data=out / "data" / "train",
        val_data=out / "data" / "val",
        out=out / "model",
        run_dir=out / "train_runs",
        epochs=epochs,
        batch_size=8,
        lr=3e-3,
        patience=None,
        num_workers=1,
        cpus_per_worker=os.cpu_count() or 1,
    )
    _quiet_local_ray()
    card = train(cfg, overwrite=True)
    t_train = time.perf_counter()

    print(f"[3/3] mapping an unseen {map_px}x{map_px} px synthetic scene with the region pipeline", flush=True)
    manifest, s = _map_unseen_scene(out, map_px)
    summary = {
        "synthetic": True,
        "model": str(out / "model"),
        "map": str(out / "map"),
        "validation": card.metrics,
        "threshold": card.threshold,
        "map_scores": s,
        "objects": manifest["summary"]["objects"],
        "seconds": {"training": round(t_train - t0, 1), "mapping": round(time.perf_counter() - t_train, 1)},
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    _print_summary(out, summary, epochs, time.perf_counter() - t0)
    return summary
