"""Sanity of a finished map: a result no real event gives is reported, not silently handed over."""

from __future__ import annotations

#: Landslide share of the mapped area above which a map is implausible: real events cover a few
#: percent of a scene; a map mostly "landslide" usually means wrong units, a wrong model or a
#: threshold far too low.
MAX_PLAUSIBLE_FRACTION = 0.30


def result_warnings(summary: dict) -> list[str]:
    """Warnings for a map's summary (``valid_pixels``, ``landslide_pixels``, areas, ``threshold``)."""
    valid, slides = summary["valid_pixels"], summary["landslide_pixels"]
    area, slide_area = summary.get("area_mapped_km2"), summary.get("landslide_area_km2")
    fraction = slide_area / area if area else slides / valid if valid else 0.0
    if fraction <= MAX_PLAUSIBLE_FRACTION:
        return []
    extent = f" ({slide_area:.3f} of {area:.3f} km²)" if area else f" ({slides} of {valid} pixels)"
    return [
        (
            f"implausible result: {fraction:.0%} of the mapped area is classified as landslide{extent}, above "
            f"{MAX_PLAUSIBLE_FRACTION:.0%}. Real events cover far less; check the scene's units against the models' "
            f"(docs/inputs.md, 'Units'), the models, and the threshold ({summary['threshold']:.3g})"
        )
    ]
