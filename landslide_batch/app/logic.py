"""What the web app computes, kept free of Streamlit so it is tested like any library code.

Uploads arrive as (file name, bytes); everything that can go wrong with them raises
``InputError`` with a message the page shows as it is. Inference goes through the one
``EnsemblePredictor`` (an ensemble of one member per model), never a copy of it.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.transform import Affine

from ..bands import L4S_BANDS, N_BANDS, RGB_BANDS, derive_features
from ..config import EnsembleConfig, EnsembleMember
from ..errors import InputError, ModelError
from ..infer.predictor import EnsemblePredictor
from ..models.card import CARD_FILE, WEIGHTS_FILE, ModelCard, read_card
from . import MAX_UPLOAD_ENV, MAX_UPLOAD_MB, MODELS_ENV, RUNS_ENV

RUN_FILE = "run.json"
#: A region job's defaults (128 px tiles, 50 % overlap), so a patch maps as it would in a region.
TILE, STRIDE = 128, 64
#: Larger rasters belong to ``landslide-batch run``; this bounds the app's memory and wait.
MAX_SIDE = 1024
H5_SUFFIXES = (".h5", ".hdf5")
TIF_SUFFIXES = (".tif", ".tiff")


def default_models_dir() -> Path:
    return Path(os.environ.get(MODELS_ENV, "models"))


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_ENV, "."))


def max_upload_mb() -> int:
    return int(os.environ.get(MAX_UPLOAD_ENV, MAX_UPLOAD_MB))


def check_upload_size(name: str, size: int, limit_mb: int | None = None) -> None:
    """Refuse an upload over the cap the server was started with (``--max-upload-mb``)."""
    limit_mb = max_upload_mb() if limit_mb is None else limit_mb
    if size > limit_mb * 1_000_000:
        raise InputError(
            f"{name}: {size / 1e6:.1f} MB is over the upload limit of {limit_mb} MB; "
            "map larger inputs with `landslide-batch run`"
        )


# ---------------------------------------------------------------------------- models


@dataclass
class ModelEntry:
    path: Path
    card: ModelCard
    #: Modification times of card and weights: a changed folder must not hit a stale cache.
    stamp: tuple[int, int]

    @property
    def label(self) -> str:
        return self.path.name if self.path.name == self.card.name else f"{self.path.name} ({self.card.name})"


def find_models(root: Path) -> tuple[list[ModelEntry], list[str]]:
    """Model folders (a ``card.json`` inside) in ``root`` and up to two levels below.

    -> (models, problems): a folder with an unreadable card is reported, not fatal, so one
    broken folder does not hide the others.
    """
    models, problems = [], []
    cards = [root / CARD_FILE, *root.glob(f"*/{CARD_FILE}"), *root.glob(f"*/*/{CARD_FILE}")]
    for card_path in sorted(p for p in cards if p.is_file()):
        folder = card_path.parent
        try:
            card = read_card(folder)
        except ModelError as exc:
            problems.append(str(exc))
            continue
        weights = folder / WEIGHTS_FILE
        stamp = (card_path.stat().st_mtime_ns, weights.stat().st_mtime_ns if weights.exists() else 0)
        models.append(ModelEntry(folder, card, stamp))
    return models, problems


def load_predictor(model: Path, tta: bool = False) -> EnsemblePredictor:
    """One model as a one-member ensemble: the same inference path as a region job."""
    return EnsemblePredictor(
        EnsembleConfig(members=[EnsembleMember(model=model)]),
        tile=TILE,
        stride=STRIDE,
        blend="gaussian",
        device="auto",
        tta=tta,
    )


# ---------------------------------------------------------------------------- uploads


@dataclass
class Patch:
    name: str
    bands: np.ndarray  # float32 (14, H, W), NaN where invalid
    valid: np.ndarray  # bool (H, W): every band finite and not nodata
    crs: CRS | None = None  # set only for a georeferenced GeoTIFF
    transform: Affine | None = None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


@contextmanager
def _as_file(name: str, data: bytes) -> Iterator[Path]:
    """The upload as a real file (HDF5 readers want a path), under its own base name."""
    with tempfile.TemporaryDirectory(prefix="landslide-app-") as tmp:
        path = Path(tmp) / (Path(name).name or "upload")
        path.write_bytes(data)
        yield path


def _suffix(name: str, allowed: tuple[str, ...], what: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in allowed:
        raise InputError(
            f"{name}: expected {what} ({', '.join(allowed)}), found {suffix or 'a file without extension'}"
        )
    return suffix


def load_patch(name: str, data: bytes) -> Patch:
    """An uploaded L4S ``image_N.h5`` or small 14-band GeoTIFF -> validated ``Patch``."""
    from ..ingest.h5patch import read_l4s_h5

    if _suffix(name, H5_SUFFIXES + TIF_SUFFIXES, "an L4S .h5 patch or a 14-band GeoTIFF") in H5_SUFFIXES:
        with _as_file(name, data) as path:
            try:
                bands = read_l4s_h5(path)
            except InputError as exc:  # name the upload, not the temporary copy
                raise InputError(str(exc).replace(str(path), name)) from None
        return _checked(name, bands, nodata=None)
    try:
        with MemoryFile(data) as mem, mem.open() as ds:
            if ds.count != N_BANDS:
                raise InputError(
                    f"{name}: expected {N_BANDS} bands in Landslide4Sense order "
                    f"({', '.join(L4S_BANDS)}), found {ds.count}"
                )
            if ds.height > MAX_SIDE or ds.width > MAX_SIDE:
                raise InputError(
                    f"{name}: {ds.height} x {ds.width} px is too large for the app "
                    f"(at most {MAX_SIDE} x {MAX_SIDE}); map it with `landslide-batch run`"
                )
            if not {np.dtype(d).kind for d in ds.dtypes} <= {"u", "i", "f"}:
                raise InputError(f"{name}: expected integer or float bands, found {sorted(set(ds.dtypes))}")
            bands = ds.read().astype(np.float32)
            geo = ds.crs is not None and not ds.transform.is_identity
            patch = _checked(name, bands, nodata=ds.nodata)
            if geo:
                patch.crs, patch.transform = ds.crs, ds.transform
            return patch
    except RasterioError as exc:
        raise InputError(f"{name}: cannot read as a GeoTIFF (corrupt, truncated or another format): {exc}") from None


def _checked(name: str, bands: np.ndarray, nodata: float | None) -> Patch:
    """Same validity rule as the scene store: every band finite and not ``nodata``."""
    valid = np.isfinite(bands).all(axis=0)
    if nodata is not None and not math.isnan(nodata):
        valid &= ~(bands == np.float32(nodata)).any(axis=0)
    if not valid.any():
        raise InputError(f"{name}: no valid pixel: every pixel is NaN, infinite or nodata in at least one band")
    return Patch(name, np.where(valid[None], bands, np.float32(np.nan)), valid)


def load_mask(name: str, data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """An uploaded ground truth (L4S ``mask_N.h5``, dataset ``mask``, or a 1-band GeoTIFF) -> bool (H, W)."""
    if _suffix(name, H5_SUFFIXES + TIF_SUFFIXES, "an L4S mask .h5 or a 1-band GeoTIFF") in H5_SUFFIXES:
        from ..ingest.h5patch import read_l4s_mask

        with _as_file(name, data) as path:
            try:
                arr = read_l4s_mask(path)
            except InputError as exc:
                raise InputError(str(exc).replace(str(path), name)) from None
    else:
        try:
            with MemoryFile(data) as mem, mem.open() as ds:
                if ds.count != 1:
                    raise InputError(f"{name}: a mask GeoTIFF should have 1 band, found {ds.count}")
                arr = ds.read(1)
        except RasterioError as exc:
            raise InputError(f"{name}: cannot read as a GeoTIFF: {exc}") from None
    arr = arr.squeeze()
    if arr.shape != tuple(shape):
        raise InputError(f"{name}: mask has shape {arr.shape} but the patch is {shape[0]} x {shape[1]}")
    return arr > 0


# ---------------------------------------------------------------------------- inference


@dataclass
class Prediction:
    model: ModelEntry
    probability: np.ndarray  # float32 (H, W), NaN where the input is invalid
    threshold: float

    @property
    def mask(self) -> np.ndarray:
        """bool (H, W); invalid pixels are never landslide."""
        return np.nan_to_num(self.probability, nan=-1.0) >= self.threshold


def padded_size(n: int, tile: int = TILE, stride: int = STRIDE) -> int:
    """Smallest ``tile + k * stride >= n``: the window sizes the predictor covers exactly."""
    return tile + max(0, -(-(n - tile) // stride)) * stride


def predict(predictor: EnsemblePredictor, model: ModelEntry, patch: Patch) -> Prediction:
    """Reflect-pad the patch up to a size the tile grid covers, predict, crop back."""
    h, w = patch.valid.shape
    pad = (
        (0, padded_size(h, predictor.tile, predictor.stride) - h),
        (0, padded_size(w, predictor.tile, predictor.stride) - w),
    )
    prob, _ = predictor.predict_window(
        np.pad(patch.bands, ((0, 0), *pad), mode="reflect"), np.pad(patch.valid, pad, mode="reflect")
    )
    prob = np.where(patch.valid, prob[:h, :w], np.float32(np.nan)).astype(np.float32)
    return Prediction(model, prob, predictor.threshold)


# ---------------------------------------------------------------------------- pictures and files


def rgb_composite(patch: Patch) -> np.ndarray:
    """uint8 (H, W, 3) true colour (B4, B3, B2), each band stretched 2-98 % over valid pixels."""
    rgb = np.moveaxis(derive_features(patch.bands, RGB_BANDS), 0, -1)
    lo, hi = np.percentile(rgb[patch.valid], [2, 98], axis=0)
    out = np.clip((rgb - lo) / np.maximum(hi - lo, 1e-12), 0, 1)
    out[~patch.valid] = 0
    return (out * 255).round().astype(np.uint8)


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Landslide pixels tinted red over the RGB composite."""
    out = rgb.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.array([255.0, 0.0, 0.0])
    return out.round().astype(np.uint8)


def probability_image(prob: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) viridis picture of a probability map; invalid pixels grey."""
    from matplotlib import colormaps

    rgb = colormaps["viridis"](np.nan_to_num(prob, nan=0.0), bytes=True)[..., :3]
    rgb[np.isnan(prob)] = 128
    return rgb


def enlarge(img: np.ndarray, target: int = 384) -> np.ndarray:
    """Nearest-neighbour upscaling, so the browser does not blur a 128 px patch into mush."""
    k = max(1, target // max(img.shape[:2]))
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def geotiff_bytes(arr: np.ndarray, patch: Patch, nodata: float | None = None) -> bytes:
    """A single-band GeoTIFF on the uploaded patch's grid."""
    if not patch.georeferenced:
        raise InputError(f"{patch.name} has no georeferencing; a GeoTIFF of it would have no location")
    with MemoryFile() as mem:
        with mem.open(
            driver="GTiff",
            height=arr.shape[0],
            width=arr.shape[1],
            count=1,
            dtype=arr.dtype.name,
            crs=patch.crs,
            transform=patch.transform,
            nodata=nodata,
            compress="deflate",
        ) as ds:
            ds.write(arr, 1)
        return mem.read()


# ---------------------------------------------------------------------------- region runs


@dataclass
class RunFile:
    label: str
    path: Path

    @property
    def size_label(self) -> str:
        size, units = float(self.path.stat().st_size), ["B", "KB", "MB", "GB"]
        while size >= 1000 and len(units) > 1:
            size, units = size / 1000, units[1:]
        return f"{size:.0f} B" if units[0] == "B" else f"{size:.1f} {units[0]}"


def find_runs(root: Path) -> list[Path]:
    """Job output folders (holding ``run.json``): ``root`` itself and its sub-folders."""
    return sorted(p.parent for p in [root / RUN_FILE, *root.glob(f"*/{RUN_FILE}")] if p.is_file())


def run_label(root: Path, folder: Path) -> str:
    """A run as the page names it: its path under the runs folder, never the server's full path."""
    rel = folder.relative_to(root).as_posix()
    return root.resolve().name if rel == "." else rel


def read_run(folder: Path) -> dict[str, Any]:
    path = folder / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the run manifest: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: run manifest is not valid JSON ({exc})") from None
    if not isinstance(run, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(run).__name__}")
    return run


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3f}{unit}" if abs(value) < 100 else f"{value:,.1f}{unit}"
    return f"{value}{unit}"


def run_headline(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The four numbers a map's reader wants first."""
    s = run.get("summary") or {}
    return [
        ("Landslide area", _fmt(s.get("landslide_area_km2"), " km²")),
        ("Objects", _fmt(s.get("objects"))),
        ("Area mapped", _fmt(s.get("area_mapped_km2"), " km²")),
        ("Threshold", _fmt(s.get("threshold"))),
    ]


def run_details(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, value) rows: provenance, work done and time taken."""
    scene = (run.get("inputs") or {}).get("scene") or {}
    t, tiles, blocks = run.get("timings") or {}, run.get("tiles") or {}, run.get("blocks") or {}
    return [
        ("Status", _fmt(run.get("status"))),
        ("Job hash", _fmt(run.get("job_hash"))),
        ("Started", _fmt(run.get("started"))),
        ("Finished", _fmt(run.get("finished"))),
        ("Scene", _fmt(scene.get("path"))),
        ("Scene sha256", _fmt(scene.get("sha256"))),
        ("Tiles", f"grid {_fmt(tiles.get('grid'))}, forward passes {_fmt(tiles.get('forward_passes'))}"),
        (
            "Blocks",
            ", ".join(
                f"{k.replace('_', ' ')} {_fmt(blocks.get(k))}"
                for k in ("total", "computed", "skipped_nodata", "resumed")
            ),
        ),
        (
            "Timings",
            ", ".join(f"{k[:-2]} {_fmt(t.get(k), ' s')}" for k in ("ingest_s", "infer_s", "finish_s", "total_s")),
        ),
    ]


def run_models(run: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {
            "name": _fmt(m.get("name")),
            "arch": _fmt(m.get("arch")),
            "encoder": _fmt(m.get("encoder")),
            "weight": _fmt(m.get("weight")),
            "trained": "yes" if m.get("trained") else "UNTRAINED",
            "path": _fmt(m.get("path")),
        }
        for m in run.get("models") or []
    ]


def run_files(folder: Path, run: dict[str, Any]) -> tuple[list[RunFile], list[RunFile]]:
    """-> (files to download, folders such as the Zarr store that cannot be one download).

    Only paths inside ``folder`` are offered, whatever the manifest says.
    """
    root = folder.resolve()
    files, folders = [RunFile("manifest", folder / RUN_FILE)], []
    for label, rel in (run.get("outputs") or {}).items():
        path = (folder / str(rel)).resolve()
        if not path.is_relative_to(root) or not path.exists():
            continue
        (folders if path.is_dir() else files).append(RunFile(label, path))
    return files, folders
