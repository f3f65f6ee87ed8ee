"""Where one layer of a scene is read from: a raster band, its declared scaling, and its origin.
Sentinel-2 products, STAC items and DEM sources all describe their layers with it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LayerSource:
    """One raster band that feeds one layer."""

    path: str
    bidx: int = 1
    band: str | None = None  # product band (B05, SCL, ...) when known
    scale: float | None = None  # declared DN -> value scale (STAC raster:bands, raster:scale)
    offset: float | None = None  # declared additive offset after scaling
    scaling_from: str = ""  # which declaration gave scale and offset
    origin: str = ""  # how it was chosen, for the record
    tiles: tuple[str, ...] = ()  # a DEM given as several tiles: all of them (``path`` is the first)

    def describe(self) -> dict:
        d: dict = {"path": self.path, "band_index": self.bidx, "from": self.origin}
        if self.band:
            d["band"] = self.band
        if len(self.tiles) > 1:
            d["tiles"] = list(self.tiles)
        return d
