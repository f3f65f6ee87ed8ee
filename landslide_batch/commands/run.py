"""``landslide-batch run``: map a region from a job YAML and/or flags."""

from __future__ import annotations

from pathlib import Path

from ..config import job_from_dict, load_job
from ..errors import ConfigError

FLAGS = {  # flag -> (JobConfig field, type, help)
    "--scene": ("scene", Path, "scene: 14-band GeoTIFF, L4S .h5 patch or Zarr store"),
    "--ensemble": ("ensemble", Path, "ensemble YAML (members: model folders + weights)"),
    "--out": ("out", Path, "output folder"),
    "--tile": ("tile", int, "tile size in pixels (default 128)"),
    "--overlap": ("overlap", float, "tile overlap fraction (default 0.5)"),
    "--blend": ("blend", str, "mean, cosine or gaussian (default gaussian)"),
    "--block": ("block", int, "block size in pixels: the unit of work and resume (default 1024)"),
    "--executor": ("executor", str, "local or ray (default local)"),
    "--batch-size": ("batch_size", int, "tiles per forward pass (default 16 on CPU, 64 on a GPU)"),
    "--device": ("device", str, "auto, cpu or cuda[:N] (default auto)"),
    "--threads": ("threads", int, "torch CPU threads per predictor (Ray CPU actors: default a node's CPUs / actors)"),
    "--threshold": ("threshold", float, "mask threshold (default: the models' tuned thresholds)"),
    "--ray-address": (None, str, "Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
    "--num-actors": (None, int, "predictor actors on Ray (default: one per GPU, else 1)"),
}


def register(sub) -> None:
    p = sub.add_parser("run", help="map landslides over a scene (a region job)",
                       description="Run a region job: ingest -> tiles -> ensemble -> blended maps. "
                                   "Flags override the job YAML; without a YAML, --scene, --out and "
                                   "--model/--ensemble are required. Re-running resumes.")
    p.add_argument("job", nargs="?", type=Path, help="job YAML (see configs/job_example.yaml)")
    p.add_argument("--model", dest="models", action="append", type=Path, metavar="DIR",
                   help="model folder (repeat for an equally weighted ensemble)")
    for flag, (_, typ, text) in FLAGS.items():
        p.add_argument(flag, type=typ, help=text, dest=flag[2:].replace("-", "_"))
    p.add_argument("--overwrite", action="store_true", help="replace a finished result of a different job")
    p.set_defaults(func=_run)


def _overrides(args) -> dict:
    out = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in FLAGS.items() if field}
    if args.models:
        out.update(models=args.models, ensemble=None)
    elif args.ensemble:
        out["models"] = []
    ray = {k: v for k, v in (("address", args.ray_address), ("num_actors", args.num_actors)) if v is not None}
    return {k: v for k, v in out.items() if v is not None or k == "ensemble" and args.models} | (
        {"ray": ray} if ray else {})


def _run(args) -> int:
    from ..pipeline import run_job

    overrides = _overrides(args)
    if args.job is not None:
        cfg = load_job(args.job, overrides)
    else:
        if "scene" not in overrides or "out" not in overrides:
            raise ConfigError("without a job YAML, give at least --scene, --out and --model or --ensemble")
        cfg = job_from_dict(overrides, Path.cwd(), "command line")
    manifest = run_job(cfg, overwrite=args.overwrite)
    s = manifest["summary"]
    print(f"map written to {cfg.out}: {s['objects']} landslide objects"
          + (f", {s['landslide_area_km2']:.3f} km² of {s['area_mapped_km2']:.3f} km² mapped"
             if s.get("area_mapped_km2") is not None else "")
          + f" ({manifest['blocks']['computed']} block(s) computed, {manifest['blocks']['resumed']} resumed)")
    return 0
