"""The ensemble predictor: a window of raw bands in, blended probability and spread out.

One implementation serves the pipeline (one instance per actor / process), the web app
and evaluation. The whole window goes to the model's device once; tiles are cut from it
as views, batched, and their predictions blended there, so only the final maps travel back.

Tiles that straddle block edges belong to several blocks. Given their global index and how
many blocks use them (``TileReuse``), the predictor keeps their predictions until the last
user has blended them, so a block does not recompute what its neighbour already did.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ..bands import derive_features
from ..config import EnsembleConfig
from ..models.ensemble import Ensemble, resolve_device
from .blending import blend_window

log = logging.getLogger(__name__)

# torch.fx traces by patching torch.nn.Module.__call__ for the whole process: a model called in
# another thread meanwhile is taken for a part of the traced one (NameError). Tracing and the
# predictors' forward passes take turns on this lock (uncontended, it costs nothing per batch).
# It matters wherever predictors live side by side in one process: the app's sessions, tests, a
# job whose models still load in the background after it failed.
_FX_LOCK = threading.Lock()


@dataclass
class TileReuse:
    """How many blocks use each tile (``plan.tiling.tile_uses``) and the kept predictions:
    ``(member, ty, tx) -> [tile probabilities, remaining uses]``."""

    uses: np.ndarray
    kept: dict = field(default_factory=dict)


class EnsemblePredictor:
    def __init__(self, ensemble: EnsembleConfig, *, tile: int = 128, stride: int = 64,
                 blend: str = "gaussian", batch_size: int | None = None, device: str = "auto",
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(resolve_device(device))
        self.ensemble = Ensemble(ensemble, str(self.device))
        # A GPU needs large batches to be kept busy; on CPU, larger batches than 16 gain nothing.
        self.tile, self.stride = tile, stride
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 16)
        self.weights = torch.from_numpy(blend_window(blend, tile)).to(self.device)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())
        for member in self.ensemble.members:
            member.model = _inference_ready(member.model)
        self.forward_passes = 0  # tiles pushed through each member, summed over calls

    @property
    def threshold(self) -> float:
        return self.ensemble.threshold

    @torch.inference_mode()
    def predict_window(self, bands: np.ndarray, valid: np.ndarray, *, first_tile: tuple[int, int] = (0, 0),
                       reuse: TileReuse | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``bands (14, H, W)`` raw values (NaN where invalid), ``valid (H, W)`` ->
        (probability, spread), float32 ``(H, W)``; NaN where no tile ran (no valid pixel near).

        ``H`` and ``W`` must be ``tile + k * stride``: the window is covered exactly by tiles.
        ``first_tile`` is the global grid index of the window's first tile, used with ``reuse``.
        """
        t, s = self.tile, self.stride
        h, w = valid.shape
        if (h - t) % s or (w - t) % s or h < t or w < t:
            raise ValueError(f"window {h}x{w} is not covered exactly by {t}px tiles at stride {s}")
        x = torch.from_numpy(np.ascontiguousarray(bands, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True)
        v = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)).to(self.device)
        # Tiles with no valid pixel are skipped: they could only colour invalid pixels.
        run = v.unfold(0, t, s).unfold(1, t, s).flatten(-2).any(-1)
        iy, ix = torch.nonzero(run, as_tuple=True)
        rows, cols = iy.tolist(), ix.tolist()
        den = torch.zeros((h, w), dtype=torch.float32, device=self.device)
        for r, c in zip(rows, cols):
            den[r * s:r * s + t, c * s:c * s + t] += self.weights
        maps = []
        oy, ox = first_tile
        for m, member in enumerate(self.ensemble.members):
            probs: dict[tuple[int, int], torch.Tensor] = {}
            todo = []
            for r, c in zip(rows, cols):
                kept = reuse.kept.get((m, oy + r, ox + c)) if reuse else None
                if kept is None:
                    todo.append((r, c))
                else:
                    probs[r, c] = kept[0]
                    kept[1] -= 1
                    if kept[1] == 0:
                        del reuse.kept[(m, oy + r, ox + c)]
            strips = _StripFeatures(x, member, t, s)
            for chunk in _balanced_batches(todo, self.batch_size):
                batch = torch.stack([strips.tile(r, c) for r, c in chunk]).contiguous(
                    memory_format=torch.channels_last)
                with self.autocast, _FX_LOCK:
                    prob = torch.sigmoid(member.model(batch)[:, 0].float())
                for p, (r, c) in zip(prob, chunk):
                    probs[r, c] = p
                    if reuse and (left := int(reuse.uses[oy + r, ox + c]) - 1) > 0:
                        reuse.kept[(m, oy + r, ox + c)] = [p.clone(), left]  # not a view pinning its batch
            self.forward_passes += len(todo)
            num = torch.zeros((h, w), dtype=torch.float32, device=self.device)
            for r, c in zip(rows, cols):  # always in grid order: the sums do not depend on reuse
                num[r * s:r * s + t, c * s:c * s + t] += probs[r, c] * self.weights
            maps.append(num / den)
        weights = torch.tensor([m.weight for m in self.ensemble.members], device=self.device)[:, None, None]
        stack = torch.stack(maps)
        mean = (weights * stack).sum(0) / weights.sum()
        spread = ((weights * (stack - mean) ** 2).sum(0) / weights.sum()).sqrt()
        return mean.cpu().numpy(), spread.cpu().numpy()


def _balanced_batches(items: list, size: int) -> list[list]:
    """``items`` in as few batches of at most ``size`` as possible, of sizes differing by at most
    one: no near-empty last batch (a batch of 1 costs far more than a 16th of a batch of 16), and
    few distinct batch shapes, each of which costs oneDNN / cuDNN a cached set of kernels in memory."""
    n = -(-len(items) // size)
    if n == 0:
        return []
    cuts = [len(items) * i // n for i in range(n + 1)]
    return [items[a:b] for a, b in zip(cuts, cuts[1:])]


def _inference_ready(model: torch.nn.Module) -> torch.nn.Module:
    """Fold BatchNorm into the preceding convolutions (torch.fx) and use channels_last: both
    speed up convolutions on CPU and GPU. A model fx cannot trace keeps its BatchNorm."""
    from torch.fx.experimental.optimization import fuse

    try:
        with _FX_LOCK:
            model = fuse(model.eval())
    except Exception as exc:  # fx tracing fails on data-dependent control flow; fusion is optional
        log.debug("BatchNorm folding skipped for %s: %s", type(model).__name__, exc)
    return model.to(memory_format=torch.channels_last)


class _StripFeatures:
    """Normalised features of one tile row at a time: memory stays O(tile x window width)
    instead of a second full copy of the window per member."""

    def __init__(self, bands: torch.Tensor, member, tile: int, stride: int):
        self.bands, self.member, self.size, self.stride = bands, member, tile, stride
        self.row, self.feats = -1, None

    def tile(self, r: int, c: int) -> torch.Tensor:
        if r != self.row:
            strip = self.bands[:, r * self.stride:r * self.stride + self.size]
            feats = derive_features(strip, self.member.card.features)
            self.feats = ((feats - self.member.mean) / self.member.std).nan_to_num_(0.0)
            self.row = r
        return self.feats[:, :, c * self.stride:c * self.stride + self.size]
