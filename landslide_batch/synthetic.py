"""Synthetic Landslide4Sense-like scenes with known landslides, for the demo, tests and benchmarks.

Hills (a smooth random DEM) covered by vegetation, with landslide scars: elongated bare-soil
patches on steep slopes (bright red, low near-infrared, so low NDVI). Reflectances are in
0..1, slope in degrees, DEM in metres; the 14 layers follow ``bands.L4S_BANDS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from .bands import BAND_INDEX, N_BANDS

PIXEL_M = 10.0
# Typical reflectance (B1..B12) of vegetation and of fresh landslide soil.
_VEG = np.array([0.03, 0.04, 0.07, 0.04, 0.10, 0.25, 0.30, 0.32, 0.33, 0.005, 0.16, 0.08])
_SOIL = np.array([0.08, 0.10, 0.14, 0.18, 0.21, 0.23, 0.24, 0.25, 0.26, 0.01, 0.32, 0.26])


def make_dem(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((height, width))
    dem = ndimage.gaussian_filter(noise, sigma=max(height, width) / 12, mode="wrap")
    dem = (dem - dem.min()) / (np.ptp(dem) + 1e-9)
    return (400 + 1200 * dem).astype(np.float32)


def slope_degrees(dem: np.ndarray, pixel_m: float = PIXEL_M) -> np.ndarray:
    gy, gx = np.gradient(dem.astype(np.float64), pixel_m)
    return np.degrees(np.arctan(np.hypot(gx, gy))).astype(np.float32)


def synthetic_scene(height: int, width: int, seed: int = 0, density: float = 1.0):
    """-> (bands float32 (14, H, W), labels uint8 (H, W))."""
    rng = np.random.default_rng(seed)
    dem = make_dem(height, width, rng)
    slope = slope_degrees(dem)
    labels = np.zeros((height, width), bool)
    yy, xx = np.mgrid[0:height, 0:width]
    steep = np.argwhere(slope > np.percentile(slope, 70))
    n = int(density * height * width / 6000) + 1
    for cy, cx in steep[rng.choice(len(steep), size=min(n, len(steep)), replace=False)]:
        a, b = rng.uniform(6, 22), rng.uniform(3, 8)
        ang = rng.uniform(0, np.pi)
        y0, y1 = max(0, cy - 25), min(height, cy + 26)
        x0, x1 = max(0, cx - 25), min(width, cx + 26)
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = dy * np.cos(ang) + dx * np.sin(ang)
        v = -dy * np.sin(ang) + dx * np.cos(ang)
        labels[y0:y1, x0:x1] |= (u / a) ** 2 + (v / b) ** 2 <= 1
    vigour = ndimage.gaussian_filter(rng.standard_normal((height, width)), 6) * 3
    frac = labels.astype(np.float32)
    bands = np.empty((N_BANDS, height, width), np.float32)
    for i in range(12):
        veg = _VEG[i] * (1 + 0.15 * vigour)
        bands[i] = veg * (1 - frac) + _SOIL[i] * frac + rng.normal(0, 0.01, (height, width))
    bands[BAND_INDEX["slope"]] = slope
    bands[BAND_INDEX["DEM"]] = dem
    return bands, labels.astype(np.uint8)


def write_geotiff(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32645",
    origin: tuple[float, float] = (500000.0, 3100000.0),
    pixel: float = PIXEL_M,
    nodata: float | None = None,
    dtype: str | None = None,
) -> Path:
    """Write ``(C, H, W)`` or ``(H, W)`` to a tiled GeoTIFF north-up at ``origin`` (upper-left)."""
    import rasterio
    from rasterio.transform import from_origin

    data = data[None] if data.ndim == 2 else data
    path = Path(path)
    profile = dict(
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=dtype or data.dtype.name,
        transform=from_origin(*origin, pixel, pixel),
        nodata=nodata,
        tiled=data.shape[1] >= 256 and data.shape[2] >= 256,
        blockxsize=256,
        blockysize=256,
    )
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data.astype(profile["dtype"]))
    return path


def write_l4s_patch(
    image_path: str | Path, bands: np.ndarray, mask_path: str | Path | None = None, labels: np.ndarray | None = None
) -> None:
    """Write an L4S-format pair: ``img`` (H, W, 14) float and, optionally, ``mask`` (H, W)."""
    import h5py

    with h5py.File(image_path, "w") as f:
        f.create_dataset("img", data=np.moveaxis(bands, 0, -1).astype(np.float32))
    if mask_path is not None and labels is not None:
        with h5py.File(mask_path, "w") as f:
            f.create_dataset("mask", data=labels.astype(np.uint8))


def write_l2a_metadata(path: Path, offset: int = -1000, baseline: str = "05.11") -> None:
    """A Sentinel-2 L2A product's ``MTD_MSIL2A.xml`` with what the ingest reads of it: the start
    time, processing baseline, quantification values and the BOA add offset of each band."""
    offsets = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{offset}</BOA_ADD_OFFSET>' for i in range(13))
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">'
        "<n1:General_Info><Product_Info><PRODUCT_START_TIME>2025-01-01T05:00:00.024Z</PRODUCT_START_TIME>"
        f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE><PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE></Product_Info>"
        "<Product_Image_Characteristics><QUANTIFICATION_VALUES_LIST>"
        '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>'
        '<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>'
        f"<BOA_ADD_OFFSET_VALUES_LIST>{offsets}</BOA_ADD_OFFSET_VALUES_LIST>"
        "</Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>"
    )
