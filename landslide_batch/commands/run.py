"""``landslide-batch run``: map a region from a job YAML and/or flags."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Literal, get_args, get_origin

from ..config import JobConfig, job_from_dict, load_job, validate_model
from ..errors import ConfigError
from ..ingest.inputs import SceneInputs


def num_actors(value: str) -> int | str:
    """``--num-actors``: a whole number or ``auto`` (argparse names this function in its error)."""
    return value if value == "auto" else int(value)


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
    "--max-pixels": ("max_pixels", int, "largest grid (height x width px) the job may have (default 4e9)"),
    "--executor": ("executor", str, "local or ray (default local)"),
    "--batch-size": ("batch_size", int, "tiles per forward pass (default 16 on CPU, 64 on a GPU)"),
    "--device": ("device", str, "auto, cpu or cuda[:N] (default auto)"),
    "--threads": ("threads", int, "torch CPU threads: a local job's, each Ray CPU actor's (default CPUs / actors)"),
    "--threshold": ("threshold", float, "mask threshold (default: the models' tuned thresholds)"),
    "--min-area-m2": ("min_area_m2", float, "smallest landslide polygon kept, in m² (default 0)"),
    "--format": (
        "polygon_format",
        str,
        "polygons as gpkg (GeoPackage, default), parquet (GeoParquet) or fgb (FlatGeobuf)",
    ),
    "--event-date": (
        "event_date",
        str,
        "region job: the event's date (YYYY-MM-DD); pre-event scenes are dated before it, the others on or after",
    ),
    "--ray-address": (None, str, "Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
    "--num-actors": (
        None,
        num_actors,
        "predictor actors on Ray: a number, or auto: as many as the work, up to --max-actors "
        "(default: one per GPU, else 1)",
    ),
    "--max-actors": (None, int, "the most actors --num-actors auto asks for (default 8)"),
}


def literal_choices(field: str | None) -> tuple[str, ...] | None:
    """The values a ``JobConfig`` field accepts when it is a ``Literal`` (argparse lists them in
    the help and in the error for another value); None for any other field."""
    annotation = JobConfig.model_fields[field].annotation if field else None
    return get_args(annotation) if get_origin(annotation) is Literal else None


def device(value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (refused by argparse otherwise, naming them)."""
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from auto, cpu, cuda, cuda:N)")


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="map landslides over a scene (a scene job) or an area of several scenes (a region job)",
        description="Run a scene job (one --scene) or a region job (several, with --aoi): "
        "ingest -> tiles -> ensemble -> blended maps. "
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
    p.add_argument(
        "--pre-scene",
        dest="pre_scenes",
        action="append",
        type=str,
        metavar="SCENE",
        help="region job: a pre-event scene (forms as --scene; repeat it): mapped once by the same "
        "ensemble, it makes the map change-aware (new_probability.tif, polygons with status)",
    )
    for flag, (field, typ, text) in FLAGS.items():
        dest = flag[2:].replace("-", "_")
        if flag == "--device":
            p.add_argument(flag, type=device, metavar="{auto,cpu,cuda,cuda:N}", help=text, dest=dest)
        else:
            p.add_argument(flag, type=typ, choices=literal_choices(field), help=text, dest=dest)
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
    p.add_argument(
        "--dem",
        action="append",
        type=str,
        metavar="DEM",
        help="DEM (metres; sets inputs.dem): a file or URI, a glob of tiles ('cop30/*.tif'), or a STAC "
        "ItemCollection of DEM tiles; repeat it for a list of tiles. Mosaicked per window, any CRS",
    )
    p.add_argument(
        "--allow-partial-dem",
        action="store_true",
        default=None,
        help="map a scene that the DEM (or SCL) covers only in part: the rest is no data, with a warning "
        "and the uncovered share in run.json (refused otherwise)",
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
    out["pre_scenes"] = args.pre_scenes
    if args.models:
        out.update(models=args.models, ensemble=None)
    elif args.ensemble:
        out["models"] = []
    given = (("address", args.ray_address), ("num_actors", args.num_actors), ("max_actors", args.max_actors))
    ray = {k: v for k, v in given if v is not None}
    return {k: v for k, v in out.items() if v is not None or k == "ensemble" and args.models} | (
        {"ray": ray} if ray else {}
    )


def _with_dem(cfg: JobConfig, dem: list[str] | None, allow_partial: bool | None) -> JobConfig:
    """``cfg`` with ``--dem`` (paths relative to the cwd) and ``--allow-partial-dem`` in its ``inputs``."""
    if not dem and not allow_partial:
        return cfg
    inputs = (cfg.inputs or SceneInputs()).model_dump()
    if dem:
        paths = [d if "://" in d else str(Path(d).expanduser().absolute()) for d in dem]
        inputs["dem"] = paths[0] if len(paths) == 1 else paths
    if allow_partial:
        inputs["allow_partial_dem"] = True
    return validate_model(JobConfig, {**cfg.model_dump(), "inputs": inputs}, "command line --dem / --allow-partial-dem")


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
    if cfg.threads and cfg.executor == "local":  # the models run in this process, whose owner sets its threads
        import torch

        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    manifest = run_job(_with_dem(cfg, args.dem, args.allow_partial_dem), overwrite=args.overwrite)
    s = manifest["summary"]
    print(
        f"map written to {cfg.out} in {time.perf_counter() - t0:.1f} s: {s['objects']} landslide objects"
        + f", {describe_mapped(s)}"
        + f" ({manifest['blocks']['computed']} block(s) computed, {manifest['blocks']['resumed']} resumed)"
    )
    print(f"files: {', '.join(['run.json', *manifest['outputs'].values()])}")
    for msg in manifest.get("warnings", []):
        print(f"warning: {msg}")
    return 0
