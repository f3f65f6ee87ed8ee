"""``landslide-batch compare``: score a finished job's map against a landslide inventory (no model)."""

from __future__ import annotations


def register(sub) -> None:
    from ..outputs.compare import DEFAULT_MIN_IOU

    p = sub.add_parser(
        "compare",
        help="score a finished job's map against an inventory (no inference)",
        description="Object-level precision, recall and F1 (objects matched by overlap) and "
        "pixel-level precision, recall, F1 and IoU over observed pixels, over all objects and per "
        "size class, of the job's polygons against an inventory of landslide outlines "
        "(GeoPackage, GeoParquet, Shapefile or GeoJSON, any CRS). Writes compare.json, "
        "compare.md and compare.gpkg (layers 'missed' and 'false'). Rules: docs/compare.md.",
    )
    p.add_argument("out", metavar="OUT", help="output folder of a finished job")
    p.add_argument("--inventory", required=True, metavar="FILE", help="landslide outlines to score against")
    p.add_argument(
        "--min-iou",
        type=float,
        default=DEFAULT_MIN_IOU,
        metavar="T",
        help=f"smallest intersection over union for two objects to match (default {DEFAULT_MIN_IOU})",
    )
    p.add_argument("--report", metavar="DIR", help="folder for the report (default OUT/compare)")
    p.set_defaults(func=_compare)


def _compare(args) -> int:
    from ..outputs.compare_job import compare_job  # geospatial stack only: no torch, no Ray

    result = compare_job(args.out, args.inventory, args.min_iou, args.report)
    o, p = result["objects"]["all"], result["pixels"]["all"]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    print(
        f"{args.out} against {args.inventory}: objects precision {fmt(o['precision'])} recall "
        f"{fmt(o['recall'])} F1 {fmt(o['f1'])}; pixels precision {fmt(p['precision'])} recall "
        f"{fmt(p['recall'])} F1 {fmt(p['f1'])} IoU {fmt(p['iou'])}"
    )
    return 0
