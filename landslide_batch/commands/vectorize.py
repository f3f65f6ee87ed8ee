"""``landslide-batch vectorize``: a finished job's mask and polygons again, with a new threshold,
minimum area or polygon format, from its probability map (no model, no inference)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "vectorize",
        help="re-threshold and re-polygonise a finished scene job or region job (no inference)",
        description="Rebuild mask.tif and the landslide polygons of a finished scene job or region job from its "
        "probability.zarr, window by window, as the job does. Settings not given keep "
        "those of the folder's current products. run.json records each re-derivation.",
    )
    p.add_argument(
        "out",
        metavar="OUT",
        help="output folder of a finished scene job or region job: a path or an s3://, gs://, az:// prefix",
    )
    p.add_argument("--threshold", type=float, help="mask threshold in [0, 1]")
    p.add_argument("--min-area-m2", type=float, help="smallest landslide polygon kept, in m²")
    p.add_argument(
        "--format",
        dest="polygon_format",
        metavar="{gpkg,parquet,fgb}",
        help="polygons as GeoPackage, GeoParquet or FlatGeobuf",
    )
    p.set_defaults(func=_vectorize)


def _vectorize(args) -> int:
    from ..outputs.vectorize import Derivation, vectorize  # geospatial stack only: no torch, no Ray
    from ..region.event import rederive_event  # an event map's mask and polygons follow new_probability

    settings = Derivation(args.threshold, args.min_area_m2, args.polygon_format)
    manifest = vectorize(args.out, settings, rederive_event)
    s = manifest["summary"]
    print(
        f"{args.out}: {manifest['outputs']['mask']} and {manifest['outputs']['polygons']} rebuilt at threshold "
        f"{s['threshold']}, min area {s['min_area_m2']} m²: {s['objects']} landslide objects"
    )
    return 0
