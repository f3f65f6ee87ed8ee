"""How much was mapped, in words: km² on a georeferenced grid, pixels otherwise.

Landslide4Sense patches carry no georeference; their grid is ~10 m (Sentinel-2's 10 m bands,
the others resampled onto it), so for them an area on that assumed grid is stated beside
the pixel counts, and said to be assumed.
"""

from __future__ import annotations

#: Pixel size of the Landslide4Sense grid, assumed for patches without georeference.
L4S_PIXEL_M = 10.0


def assumed_pixel_m(source_kind: str | None, pixel_area_m2: float | None) -> float | None:
    """The pixel size to assume: the L4S grid's for an L4S patch without georeference, else none."""
    return L4S_PIXEL_M if pixel_area_m2 is None and source_kind == "l4s-h5" else None


def describe_mapped(summary: dict) -> str:
    """One line for logs and the ``run`` command from a run summary (``outputs.products.write_products``)."""
    slide, valid = summary["landslide_pixels"], summary["valid_pixels"]
    if summary.get("area_mapped_km2") is not None:
        return (
            f"{summary['landslide_area_km2']:.3f} km² of {summary['area_mapped_km2']:.3f} km² mapped "
            f"({slide} of {valid} pixels)"
        )
    text = f"{slide} of {valid} pixels mapped as landslide (no georeference"
    if (px := summary.get("assumed_pixel_m")) is not None:
        km2 = px * px / 1e6
        text += f"; on the {px:g} m Landslide4Sense grid, assumed: {slide * km2:.4f} km² of {valid * km2:.4f} km²"
    return text + ")"
