"""``fetch-data``: download a public dataset into the layout ``train`` / ``evaluate`` read."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def register(sub) -> None:
    p = sub.add_parser(
        "fetch-data",
        help="download Landslide4Sense from its public record (verified, resumable)",
        description="Download the dataset's archives (URLs and checksums from a sources file), "
        "verify them and unpack them into OUT/train, OUT/val, OUT/test (img/ + mask/ "
        "where masks were released). Re-running resumes an interrupted download.",
    )
    p.add_argument("dataset", help="l4s (Landslide4Sense)")
    p.add_argument("--out", type=Path, required=True, help="folder for the splits (and downloads/)")
    p.add_argument("--base-url", help="a mirror holding the same file names")
    p.add_argument("--sources", type=Path, help="sources YAML (default: the one shipped, data/l4s_sources.yaml)")
    p.add_argument(
        "--split",
        dest="splits",
        action="append",
        choices=("train", "val", "test"),
        help="only this split (repeat); default: all",
    )
    p.add_argument("--overwrite", action="store_true", help="fetch splits again that are already there")
    p.set_defaults(func=_fetch)


def _fetch(args) -> int:
    from ..fetch_data import SPLITS, fetch_l4s, load_sources

    if args.dataset.lower() != "l4s":
        raise ConfigError(f"unknown dataset {args.dataset!r}; expected l4s (Landslide4Sense)")
    manifest = fetch_l4s(
        args.out,
        sources=load_sources(args.sources),
        base_url=args.base_url,
        splits=tuple(args.splits or SPLITS),
        overwrite=args.overwrite,
    )
    for f in manifest["files"]:
        print(
            f"{f['split']}: {f['images']} images, {f['masks']} masks from {f['name']}"
            + ("" if f["verified"] else f" (UNVERIFIED: no checksum in the sources file; md5 {f['md5']})")
        )
    print(f"wrote {args.out}")
    return 0
