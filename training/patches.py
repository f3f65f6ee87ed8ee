"""Cut a labelled scene into an L4S-format split (``img/image_N.h5`` + ``mask/mask_N.h5``).

The scene goes through the pipeline's own ingest (GeoTIFF stack, band-file folder, STAC
item, Zarr or scene store), so training patches see exactly the band layout and validity
rules a region job sees. Labels are a single-band 0/1 raster on the scene's pixel grid.
Invalid scene pixels become NaN in the patch (training maps NaN to the feature mean).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from landslide_batch.errors import InputError
from landslide_batch.synthetic import write_l4s_patch


def cut_scene(
    scene: str | Path,
    labels: str | Path,
    folder: str | Path,
    *,
    size: int = 128,
    stride: int | None = None,
    min_valid: float = 0.5,
) -> int:
    """Scene + label raster -> L4S split of ``size`` px patches every ``stride`` (default ``size``) px.

    Patches with < ``min_valid`` valid pixels or with any label nodata are skipped (an L4S
    mask has no "unknown" value). Returns the patch count.
    """
    import rasterio
    import rasterio.errors
    from rasterio.windows import Window

    from landslide_batch.ingest import ingest

    folder, stride = Path(folder), stride or size
    if (folder / "img").exists() and any((folder / "img").iterdir()):
        raise InputError(f"{folder / 'img'} is not empty; cut into a new folder")
    try:
        labelled = rasterio.open(labels)
    except rasterio.errors.RasterioIOError as exc:  # before any folder is made
        raise InputError(f"{labels}: cannot open the label raster ({exc})") from None
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "mask").mkdir(parents=True, exist_ok=True)
    n = 0
    with tempfile.TemporaryDirectory(dir=folder) as tmp, labelled as lab:
        sc = ingest(scene, Path(tmp) / "scene.zarr")
        h, w = sc.shape
        if (lab.height, lab.width) != (h, w) or lab.count != 1:
            raise InputError(
                f"{labels}: labels must be one band of {h}x{w} px like the scene {scene}, found "
                f"{lab.count} band(s) of {lab.height}x{lab.width}"
            )
        if sc.info.crs is not None and not np.allclose(tuple(lab.transform)[:6], sc.info.transform[:6]):
            raise InputError(
                f"{labels}: label raster is not on the scene's pixel grid "
                f"(transform {tuple(lab.transform)[:6]} vs {sc.info.transform[:6]})"
            )
        for y in range(0, h - size + 1, stride):
            for x in range(0, w - size + 1, stride):
                bands, valid = sc.read(y, y + size, x, x + size)
                lbl = lab.read(1, window=Window(x, y, size, size), masked=True)
                if valid.mean() < min_valid or np.ma.is_masked(lbl):
                    continue
                values = np.asarray(lbl)
                if (bad := np.setdiff1d(np.unique(values), [0, 1])).size:
                    raise InputError(
                        f"{labels}: label values must be 0 or 1, found {bad[:5].tolist()} "
                        f"in the window at row {y}, column {x}"
                    )
                bands = np.where(valid, bands, np.nan).astype(np.float32)
                n += 1
                write_l4s_patch(folder / "img" / f"image_{n}.h5", bands, folder / "mask" / f"mask_{n}.h5", values)
    return n
