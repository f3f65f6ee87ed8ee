"""Landslide4Sense-style patch folders: pairing, validation, normalisation statistics, torch dataset.

A split is a folder with ``img/image_N.h5`` + ``mask/mask_N.h5`` (or ``images/`` +
``masks/``), pairs matched by ``N``; a local folder or an fsspec URI (``s3://bucket/l4s/train``,
configured by the standard variables such as ``AWS_ENDPOINT_URL``), listed and read through
fsspec either way. Features come from ``bands.derive_features`` (the one
implementation inference uses too). A split is scanned once, streaming, before training:
that validates every file, so a bad patch fails with its path before any worker starts,
and yields the per-feature mean/std that go into the model card.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import torch

from landslide_batch.bands import derive_features
from landslide_batch.errors import InputError
from landslide_batch.ingest.h5patch import read_l4s_h5, read_l4s_mask
from landslide_batch.models.card import Normalization
from landslide_batch.storage import is_uri, location

LAYOUTS = (("img", "mask"), ("images", "masks"))


#: A patch file: a local path, or a URI on object storage.
PatchFile = Path | str


@dataclass(frozen=True)
class Pair:
    number: int
    image: PatchFile
    mask: PatchFile


def _name(file: PatchFile) -> str:
    """``split-subfolder/file`` of a patch file: what the split's hash covers, wherever it lives."""
    return "/".join(str(file).rstrip("/").split("/")[-2:])


def _numbered(fs: fsspec.AbstractFileSystem, folder: str, prefix: str, root: str) -> dict[int, PatchFile]:
    """``prefix_N.h5`` files of ``folder`` (a path on ``fs``) by ``N``: URIs if ``root`` is one, else paths."""
    pattern = re.compile(rf"{prefix}_(\d+)\.h5")
    found: dict[int, PatchFile] = {}
    for path in sorted(fs.glob(f"{folder}/*.h5")):
        file = fs.unstrip_protocol(path) if is_uri(root) else Path(path)
        if not (m := pattern.fullmatch(path.rsplit("/", 1)[-1])):
            raise InputError(
                f"{file}: unexpected file name; files in {root}/{folder.rsplit('/', 1)[-1]} must be named {prefix}_N.h5"
            )
        found[int(m.group(1))] = file
    return found


def _listing(paths: Sequence[PatchFile], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(str(p) for p in paths[:limit]) + more


def find_pairs(root: str | Path) -> list[Pair]:
    """Image/mask pairs of an L4S split folder or URI, sorted by number; InputError on any mismatch."""
    root = str(root).rstrip("/")
    fs, base = location(root).fs, location(root).fs_path
    if not fs.isdir(base):
        raise InputError(f"data folder {root} does not exist")
    layout = next(((i, m) for i, m in LAYOUTS if fs.isdir(f"{base}/{i}")), None)
    if layout is None:
        found = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False))
        raise InputError(
            f"{root}: expected Landslide4Sense subfolders img/ + mask/ (or images/ + masks/), found {found}"
        )
    images = _numbered(fs, f"{base}/{layout[0]}", "image", root)
    masks = _numbered(fs, f"{base}/{layout[1]}", "mask", root) if fs.isdir(f"{base}/{layout[1]}") else {}
    if not images:
        raise InputError(f"{root}/{layout[0]}: no image_N.h5 files")
    if missing := sorted(set(images) - set(masks)):
        raise InputError(
            f"{root}: no mask for {len(missing)} image(s): "
            f"{_listing([images[n] for n in missing])} (expected {layout[1]}/mask_N.h5)"
        )
    if orphans := sorted(set(masks) - set(images)):
        raise InputError(f"{root}: {len(orphans)} mask(s) without an image: {_listing([masks[n] for n in orphans])}")
    return [Pair(n, images[n], masks[n]) for n in sorted(images)]


def fetch_pair(pair: Pair) -> tuple[bytes, bytes]:
    """The image and mask files' bytes (a patch is ~1 MB: one request each on object storage)."""
    return _fetch(pair.image), _fetch(pair.mask)


def _fetch(file: PatchFile) -> bytes:
    return location(file).read_bytes()


def parse_pair(pair: Pair, image_file: bytes, mask_file: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The fetched files of ``pair`` -> (raw bands float32 (14, H, W), may hold NaN; mask uint8 (H, W))."""
    bands = read_l4s_h5(io.BytesIO(image_file), name=str(pair.image))
    mask = read_l4s_mask(io.BytesIO(mask_file), name=str(pair.mask))
    if mask.shape != bands.shape[1:]:
        raise InputError(
            f"{pair.mask}: mask is {mask.shape[0]}x{mask.shape[1]} but image {pair.image} "
            f"is {bands.shape[1]}x{bands.shape[2]}"
        )
    return bands, mask


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """-> (raw bands float32 (14, H, W), may hold NaN; mask uint8 (H, W))."""
    return parse_pair(pair, *fetch_pair(pair))


def load_pair(pair: Pair, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> (raw features float32 (F, H, W), may hold NaN; mask uint8 (H, W))."""
    bands, mask = read_pair(pair)
    return derive_features(bands, features).astype(np.float32), mask


def normalize(feats: np.ndarray, norm: Normalization) -> np.ndarray:
    """``(x - mean) / std`` per feature; NaN -> 0, i.e. the feature's mean (as the predictor does)."""
    mean = np.asarray(norm.mean, np.float32)[:, None, None]
    std = np.asarray(norm.std, np.float32)[:, None, None]
    return np.nan_to_num((feats - mean) / std, nan=0.0)


@dataclass(frozen=True)
class SplitSummary:
    normalization: Normalization
    size: int  # patches are size x size
    patches: int
    pixels: int
    positives: int
    sha256: str  # over file names and contents: which data a model was trained on (local or remote alike)


def scan_split(pairs: Sequence[Pair], features: Sequence[str]) -> SplitSummary:
    """Read every pair once (validating it) and compute per-feature mean/std ignoring NaN.

    Streaming: per-patch moments are merged with Chan et al.'s parallel variance update,
    so memory is one patch whatever the split size, and large DEM values lose no precision.
    """
    nf = len(features)
    n = np.zeros(nf)
    mean = np.zeros(nf)
    m2 = np.zeros(nf)
    size = pixels = positives = 0
    digest = hashlib.sha256()
    for pair in pairs:
        files = fetch_pair(pair)
        bands, y = parse_pair(pair, *files)
        x = derive_features(bands, features).astype(np.float32)
        if x.shape[1] != x.shape[2] or (size and x.shape[1] != size):
            raise InputError(
                f"{pair.image}: patch is {x.shape[1]}x{x.shape[2]}; every patch of a split must be "
                f"square and the same size ({size or x.shape[1]} px, from the first patch)"
            )
        size = x.shape[1]
        pixels += y.size
        positives += int(y.sum())
        for file, data in zip((pair.image, pair.mask), files, strict=True):
            digest.update(f"{_name(file)}:{hashlib.sha256(data).hexdigest()}\n".encode())
        flat = x.reshape(nf, -1).astype(np.float64)
        nb = np.isfinite(flat).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mb = np.where(nb > 0, np.nansum(flat, 1) / nb, 0.0)
            m2b = np.nansum((flat - mb[:, None]) ** 2, 1)
            tot = n + nb
            delta = mb - mean
            mean = np.where(tot > 0, mean + delta * nb / tot, 0.0)
            m2 = np.where(tot > 0, m2 + m2b + delta**2 * n * nb / tot, 0.0)
        n = tot
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.sqrt(np.where(n > 0, m2 / n, 0.0))
    # A constant (or all-NaN) feature carries no information; std 1 keeps it finite.
    std = np.where(std > 1e-12, std, 1.0)
    return SplitSummary(
        Normalization(mean=mean.tolist(), std=std.tolist()), size, len(pairs), pixels, positives, digest.hexdigest()
    )


class PatchDataset(torch.utils.data.Dataset):
    """Normalised features ``(F, S, S)`` and mask ``(1, S, S)`` float32 tensors per patch."""

    def __init__(self, pairs: Sequence[Pair], features: Sequence[str], norm: Normalization):
        self.pairs, self.features, self.norm = list(pairs), list(features), norm

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = load_pair(self.pairs[i], self.features)
        return torch.from_numpy(normalize(x, self.norm)), torch.from_numpy(y[None].astype(np.float32))
