"""``SceneInputs``: how to assemble a 14-layer scene from real-world inputs (the job's ``inputs:``).

A fresh Sentinel-2 acquisition arrives as separate band files at 10, 20 and 60 m (a SAFE /
L2A folder, a folder of GeoTIFFs, or a STAC item's assets) plus a DEM. These settings say
which file gives each of the 14 Landslide4Sense layers, how digital numbers become
reflectance, what to mask (SCL classes, nodata, an AOI) and what to do about B10, which
L2A products do not carry. See ``docs/inputs.md``.

Paths here are job paths: :meth:`SceneInputs.rebase` makes relative ones relative to the
job YAML, like ``scene`` and ``out``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..schema import StrictModel

#: The 12 Sentinel-2 layers of an L4S scene (L4S layer names, see ``bands.L4S_BANDS``).
S2_LAYERS: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12")

#: Default SCL classes masked out: 0 no data, 1 saturated/defective, 3 cloud shadow,
#: 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow or ice. Snow
#: hides the ground as cloud does: a pixel under it is not seen (a region's ``observed.tif``
#: counts it as not clear, and the merge takes a clear pass there), not a pixel without landslide.
DEFAULT_SCL_MASK: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)

#: Per-layer divisors of the Landslide4Sense .h5 patches, as stated by the dataset's authors
#: (github.com/iarai/Landslide4Sense-2022 issues #2 and #4): "the 14 bands are simply divided
#: by a mean vector". Sentinel-2 layers: reflectance x 10000 / divisor; slope: degrees /
#: divisor; DEM: metres / divisor. ``units: l4s`` writes scenes in that convention.
L4S_IMG_MEAN: tuple[float, ...] = (
    1111.81236406,
    824.63171476,
    663.41636217,
    445.17289745,
    645.8582926,
    1547.73508126,
    1960.44401001,
    1941.32229668,
    674.07572865,
    9.04787384,
    1113.98338755,
    519.90397929,
    20.29228266,
    772.83144788,
)

_LAYER_RE = re.compile(r"^B0?([1-9]|1[0-2])$", re.IGNORECASE)
_PATH_SUFFIXES = {".tif", ".tiff", ".jp2", ".vrt", ".img", ".json", ".geojson", ".gpkg", ".shp", ".hgt", ".nc"}


def layer_name(key: str) -> str:
    """``"B01"``, ``"b1"``, ``"B1"`` -> ``"B1"`` (an L4S layer name); raises ValueError otherwise."""
    m = _LAYER_RE.match(str(key).strip())
    if not m:
        raise ValueError(f"{key!r} is not a Sentinel-2 layer of the L4S stack; expected one of {list(S2_LAYERS)}")
    return f"B{int(m.group(1))}"


def looks_like_path(value: str) -> bool:
    """A value naming a file (has a separator or a raster/vector suffix), not a band or asset key."""
    s = str(value)
    return "/" in s or "\\" in s or Path(s).suffix.lower() in _PATH_SUFFIXES or "://" in s


class ReflectanceScaling(StrictModel):
    """Digital numbers -> surface reflectance (0..1, the unit the 12 Sentinel-2 layers are stored in).

    ``l2a``: ``reflectance = (DN + boa_add_offset) / quantification``; DN 0 is no data.
    ``none``: the files already hold reflectance. ``auto``: ``l2a`` for integer files,
    ``none`` for float files. The offset comes from, in order: ``boa_add_offset`` here,
    ``processing_baseline`` here, the STAC asset's ``raster:bands`` scale/offset, the
    product's ``MTD_MSIL2A.xml`` (``BOA_ADD_OFFSET``), the baseline in the product name
    (``_N0511_``), the acquisition date (on/after 2022-01-25 means baseline >= 04.00).
    """

    mode: Literal["auto", "l2a", "none"] = "auto"
    boa_add_offset: float | None = None
    quantification: float = Field(10000.0, gt=0)
    processing_baseline: str | None = None
    #: Reflectance outside this range on more than ``max_outside_fraction`` of the valid
    #: pixels of a band records a warning (a scaling mistake is the usual cause).
    expected_range: tuple[float, float] = (-0.05, 1.2)
    max_outside_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("processing_baseline")
    @classmethod
    def _baseline(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{1,2}\.\d{2}", v.strip()):
            raise ValueError(f"processing_baseline should look like '05.11', found {v!r}")
        return v.strip() if v else v

    @model_validator(mode="after")
    def _check(self) -> ReflectanceScaling:
        lo, hi = self.expected_range
        if not lo < hi:
            raise ValueError(f"expected_range must be (low, high) with low < high, found {self.expected_range}")
        return self


class SceneInputs(StrictModel):
    """Where the 14 layers come from and how they are prepared (``inputs:`` of a job)."""

    #: L4S layer (B1..B12) -> what gives it: a product band (``B8A``, ``B08``), a STAC asset
    #: key (``nir08``) or a file path. Layers not listed take the default of the same
    #: number (layer B8 <- band B08; B8A is unused unless mapped here).
    bands: dict[str, str] = Field(default_factory=dict)
    #: Layer whose file defines the output grid (CRS, 10 m pixels, extent).
    reference: str = "B2"
    #: DEM (metres) and slope (degrees): a file path, or a STAC asset key. Without ``slope``,
    #: slope is computed from the DEM. Without ``dem``, a DEM file in the scene folder
    #: (``*dem*``, ``*dtm*``, ``*elevation*``) or a ``dem`` asset is looked for. ``dem`` may also
    #: be DEM tiles (as Copernicus GLO-30 is published): a list of files, a glob, or a STAC
    #: ItemCollection / item JSON of them, mosaicked window by window (``dem_sources.py``).
    dem: str | list[str] | None = None
    slope: str | None = None
    #: A DEM or SCL that leaves part of the valid scene uncovered is an error naming the
    #: uncovered share; with this, a warning (and the share in the ingest record), those pixels nodata.
    allow_partial_dem: bool = False
    #: Scene classification: path or asset key; None: the product's ``SCL`` (20 m) if any.
    scl: str | None = None
    use_scl: bool = True
    scl_mask: list[int] = Field(default_factory=lambda: list(DEFAULT_SCL_MASK))
    #: Raw nodata value of the Sentinel-2 band files (default: the file's own, else 0 for L2A DNs).
    nodata: float | None = None
    #: Area of interest: a vector file (GeoJSON, or any format geopandas reads) or a bbox
    #: ``[minx, miny, maxx, maxy]``; ``aoi_crs`` is their CRS (default: the file's, else EPSG:4326).
    aoi: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    aoi_crs: str | None = None
    reflectance: ReflectanceScaling = Field(default_factory=ReflectanceScaling)
    #: What fills layer B10 (cirrus) when the inputs lack it (every L2A product): ``zero``
    #: (reflectance 0), ``constant`` (``b10_value``), ``model_mean`` (the models' training
    #: mean of B10, so normalised inputs are 0), ``error`` (refuse). Filled pixels stay valid;
    #: a warning is always recorded.
    b10: Literal["zero", "constant", "model_mean", "error"] = "zero"
    b10_value: float = 0.0
    #: Units of the stored layers. ``physical``: reflectance 0..1, slope in degrees, DEM in
    #: metres (as ``synthetic.py`` and plain GeoTIFF stacks). ``l4s``: the convention of the
    #: L4S .h5 patches (physical value, reflectance as DN x 10000, divided by ``L4S_IMG_MEAN``),
    #: which models trained on L4S patches expect. ``auto``: the units the job's models were
    #: trained in (their cards' ``input_units``; the pipeline decides before ingest), ``physical``
    #: when they do not say. ``b10_value`` is in the resulting units.
    units: Literal["auto", "physical", "l4s"] = "auto"
    #: Resampling of reflectance, DEM and slope onto the reference grid (SCL: always nearest).
    resampling: Literal["bilinear", "cubic", "cubic_spline", "lanczos", "average", "nearest"] = "bilinear"

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in v.items():
            name = layer_name(key)
            if name in out:
                raise ValueError(f"layer {name} is mapped twice (keys {key!r} and another spelling)")
            if not str(value).strip():
                raise ValueError(f"layer {name}: empty source")
            out[name] = str(value).strip()
        return out

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str) -> str:
        return layer_name(v)

    @field_validator("scl_mask")
    @classmethod
    def _scl_mask(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 0 <= c <= 11]
        if bad:
            raise ValueError(f"SCL classes are 0..11, found {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> SceneInputs:
        if self.aoi is not None and self.bbox is not None:
            raise ValueError("give either 'aoi' (a vector file) or 'bbox', not both")
        if isinstance(self.dem, list) and not self.dem:
            raise ValueError("dem: an empty list; give DEM files (tiles), a glob, or a STAC ItemCollection")
        if self.bbox is not None:
            minx, miny, maxx, maxy = self.bbox
            if not (minx < maxx and miny < maxy):
                raise ValueError(f"bbox must be [minx, miny, maxx, maxy] with min < max, found {list(self.bbox)}")
        if self.reference == "B10":
            raise ValueError("reference cannot be B10 (L2A products lack it); use a 10 m band: B2, B3, B4 or B8")
        return self

    def rebase(self, base: str | Path) -> SceneInputs:
        """Copy with relative file paths (dem, slope, scl, aoi, file values in ``bands``) made relative to ``base``."""
        base = Path(base)

        def fix(v: str | None) -> str | None:
            if v is None or not looks_like_path(v) or "://" in v or Path(v).expanduser().is_absolute():
                return v
            return str(base / Path(v).expanduser())

        return self.model_copy(
            update={
                "dem": [v for v in map(fix, self.dem) if v] if isinstance(self.dem, list) else fix(self.dem),
                "slope": fix(self.slope),
                "scl": fix(self.scl),
                "aoi": fix(self.aoi),
                "bands": {k: fix(v) for k, v in self.bands.items()},
            }
        )
