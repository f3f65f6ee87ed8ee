"""``landslide-batch run``: map a region from a job YAML and/or flags."""

from __future__ import annotations

from pathlib import Path

from ..config import job_from_dict, load_job
from ..errors import ConfigError

FLAGS = {  # flag -> (JobConfig field, type, help)
    "--aoi": (
        "aoi",
        str,
        "region job: the area of interest (GeoJSON / vector file, any CRS); with --scene "
        "repeated, the scenes are merged onto one map covering it",
    ),
    "--crs": ("crs", str, "region job: CRS of the region map (default: the UTM zone of the AOI's centroid)"),
    "--ensemble": ("ensemble", str, "ensemble YAML (members: model folders + weights; a path or URI)"),
    "--out": ("out", str, "output folder (a path or an s3://, gs://, az:// prefix)"),
    "--tile": ("tile", int, "tile size in pixels (default 128)"),
    "--overlap": ("overlap", float, "tile overlap fraction (default 0.5)"),
    "--blend": ("blend", str, "mean, cosine or gaussian (default gaussian)"),
    "--block": ("block", int, "block size in pixels: the unit of work and resume (default 1024)"),
    "--executor": ("executor", str, "local or ray (default local)"),
    "--batch-size": ("batch_size", int, "tiles per forward pass (default 16 on CPU, 64 on a GPU)"),
    "--device": ("device", str, "auto, cpu or cuda[:N] (default auto)"),
    "--threads": ("threads", int, "torch CPU threads per predictor (Ray CPU actors: default a node's CPUs / actors)"),
    "--threshold": ("threshold", float, "mask threshold (default: the models' tuned thresholds)"),
    "--format": (
        "polygon_format",
        str,
        "polygons as gpkg (GeoPackage, default), parquet (GeoParquet) or fgb (FlatGeobuf)",
    ),
    "--ray-address": (None, str, "Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
    "--num-actors": (None, int, "predictor actors on Ray (default: one per GPU, else 1)"),
}


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="map landslides over a scene (a region job)",
        description="Run a region job: ingest -> tiles -> ensemble -> blended maps. "
        "Flags override the job YAML; without a YAML, --scene, --out and "
        "--model/--ensemble are required. Re-running resumes.",
    )
    p.add_argument("job", nargs="?", type=Path, help="job YAML (see configs/job_example.yaml)")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        type=str,
        metavar="DIR",
        help="model folder, a path or URI (repeat for an equally weighted ensemble)",
    )
    p.add_argument(
        "--scene",
        action="append",
        type=str,
        metavar="SCENE",
        help="scene: 14-band GeoTIFF, L4S .h5 patch, Zarr store, STAC item or ItemCollection (a path "
        "or s3://, gs://, az://, https:// URI); repeat it, with --aoi, for a region job",
    )
    for flag, (_, typ, text) in FLAGS.items():
        p.add_argument(flag, type=typ, help=text, dest=flag[2:].replace("-", "_"))
    p.add_argument(
        "--tta",
        action="store_true",
        default=None,
        help="test-time augmentation: average each tile over its 8 flips/rotations (8x the work)",
    )
    p.add_argument(
        "--accept-units-mismatch",
        action="store_true",
        default=None,
        help="map a scene whose values are off by orders of magnitude from the models' training data "
        "(refused otherwise; recorded as a warning in run.json)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a finished result of a different job")
    p.set_defaults(func=_run)


def _overrides(args) -> dict:
    out = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in FLAGS.items() if field}
    out["tta"] = args.tta
    if args.scene and (len(args.scene) > 1 or args.aoi):
        out["scenes"] = args.scene  # a region job
    elif args.scene:
        out["scene"] = args.scene[0]
    out["accept_units_mismatch"] = args.accept_units_mismatch
    if args.models:
        out.update(models=args.models, ensemble=None)
    elif args.ensemble:
        out["models"] = []
    ray = {k: v for k, v in (("address", args.ray_address), ("num_actors", args.num_actors)) if v is not None}
    return {k: v for k, v in out.items() if v is not None or k == "ensemble" and args.models} | (
        {"ray": ray} if ray else {}
    )


def _run(args) -> int:
    from ..outputs.summary import describe_mapped
    from ..pipeline import run_job

    overrides = _overrides(args)
    if args.job is not None:
        cfg = load_job(args.job, overrides)
    else:
        if not ("scene" in overrides or "scenes" in overrides) or "out" not in overrides:
            raise ConfigError("without a job YAML, give at least --scene, --out and --model or --ensemble")
        cfg = job_from_dict(overrides, Path.cwd(), "command line")
    manifest = run_job(cfg, overwrite=args.overwrite)
    s = manifest["summary"]
    print(
        f"map written to {cfg.out}: {s['objects']} landslide objects"
        + f", {describe_mapped(s)}"
        + f" ({manifest['blocks']['computed']} block(s) computed, {manifest['blocks']['resumed']} resumed)"
    )
    for msg in manifest.get("warnings", []):
        print(f"warning: {msg}")
    return 0
