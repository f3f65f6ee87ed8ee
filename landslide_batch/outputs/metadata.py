"""What the raster products say about themselves to GDAL and QGIS.

Inside each GeoTIFF: a band description and unit, and provenance tags (the software, models and
their hashes, threshold, scenes with their acquisition dates, job hash); the mask also carries a
colour table. Beside them: the mask's category names in GDAL's PAM sidecar (``mask.tif.aux.xml``,
the only place GeoTIFF keeps them; ``gdalinfo`` lists them as Categories), and a QGIS style per
raster (``<name>.qml``, which QGIS applies when it opens ``<name>.tif``; shipped as package data
in ``landslide_batch/data/``). The sidecars do not depend on the threshold: ``vectorize`` rewrites
the mask and keeps them.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

from .manifest import REGION_JOB, job_kind

#: The mask's classes: value -> (name, colour in the GeoTIFF's table and the quicklook's legend).
MASK_CLASSES = {0: ("no landslide", (235, 235, 235)), 1: ("landslide", (220, 30, 30))}
#: Products written beside the rasters: output key -> file name (``outputs.products.OUTPUTS``).
SIDECARS = {
    "probability_style": "probability.qml",
    "uncertainty_style": "uncertainty.qml",
    "mask_style": "mask.qml",
    "mask_categories": "mask.tif.aux.xml",
}


@dataclass(frozen=True)
class Band:
    """How one single-band product describes its band."""

    description: str
    units: str | None  # None: a categorical band (the mask)
    colormap: dict[int, tuple[int, int, int]] | None = None


BANDS = {
    "probability": Band("landslide probability (weighted mean of the ensemble members)", "1"),
    "uncertainty": Band("ensemble spread: weighted standard deviation of the members' probabilities", "1"),
    "mask": Band(
        "landslide mask: 1 where probability >= threshold, 0 below, 255 nodata",
        None,
        {value: colour for value, (_, colour) in MASK_CLASSES.items()},
    ),
}


@cache
def software() -> str:
    """``landslide-batch <version>``, from the installed package's metadata."""
    try:
        return f"landslide-batch {version('landslide-batch')}"
    except PackageNotFoundError:  # a source tree that is not installed
        return "landslide-batch (version unknown: not installed)"


def provenance_tags(
    models: list[dict], scenes: list[dict], threshold: float, job_hash: str, event_date: str | None = None
) -> dict[str, str]:
    """GeoTIFF tags (GDAL metadata) naming what made a product. ``models``: ``{name, sha256}``
    each; ``scenes``: ``{source, sha256, date}`` each (see :func:`manifest_scenes`)."""
    tags = {
        "TIFFTAG_SOFTWARE": software(),
        "MODELS": json.dumps([{"name": m.get("name"), "sha256": m.get("sha256")} for m in models]),
        "THRESHOLD": repr(float(threshold)),
        "SCENES": json.dumps(scenes),
        "JOB_HASH": job_hash,
    }
    dates = sorted(d for s in scenes if (d := s.get("date")))
    if dates:
        tags["ACQUISITION_DATES"] = f"{dates[0]}/{dates[-1]}" if len(dates) > 1 else dates[0]
    if event_date:
        tags["EVENT_DATE"] = event_date
    return tags


def manifest_scenes(manifest: dict) -> list[dict]:
    """The scenes a finished job mapped, ``{source, sha256, date}`` each, from its ``run.json``:
    a region job's ``scenes`` list, or a scene job's ``inputs.scene`` (date: its acquisition,
    ISO, or None where unknown)."""
    if job_kind(manifest) == REGION_JOB:
        return [{"source": s["source"], "sha256": s["sha256"], "date": s.get("date")} for s in manifest["scenes"]]
    scene = manifest.get("inputs", {}).get("scene", {})
    return [{"source": scene.get("path"), "sha256": scene.get("sha256"), "date": scene.get("acquired")}]


def write_sidecars(final: Path, outputs: dict[str, str]) -> None:
    """The QGIS styles and the mask's category names into ``final``, as ``outputs`` names them."""
    styles = files("landslide_batch") / "data"  # package data: <product>.qml
    for key, name in outputs.items():
        if key.endswith("_style"):
            with (styles / f"{key[: -len('_style')]}.qml").open("rb") as src, open(final / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    if "mask_categories" in outputs:
        _write_categories(final / outputs["mask_categories"])


def _write_categories(dest: Path) -> None:
    """GDAL's PAM sidecar with the mask's category names (entry i names value i: 0, 1)."""
    pam = ET.Element("PAMDataset")
    names = ET.SubElement(ET.SubElement(pam, "PAMRasterBand", band="1"), "CategoryNames")
    for value in sorted(MASK_CLASSES):
        ET.SubElement(names, "Category").text = MASK_CLASSES[value][0]
    ET.indent(pam)
    ET.ElementTree(pam).write(dest, encoding="utf-8", xml_declaration=False)
