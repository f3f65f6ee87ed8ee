"""The ensemble predictor: a window of raw bands in, blended probability and spread out.

One implementation serves the pipeline (one instance per actor / process), the web app
and evaluation. The whole window goes to the model's device once; tiles are cut from it
as views, batched, and their predictions blended there, so only the final maps travel back.

Tiles that straddle block edges belong to several blocks. Given their global index and which
later blocks of the same stripe use them (``TileReuse``, planned by ``infer.stripes``), the
predictor keeps their predictions in host memory until the last user has blended them, so a
block does not recompute what its neighbour already did.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import numpy as np
import torch

from ..bands import derive_features
from ..config import EnsembleConfig
from ..models.ensemble import Ensemble, resolve_device
from ..models.fusion import fold_batchnorm
from .blending import blend_window

log = logging.getLogger(__name__)


#: Host memory that one predictor's kept tiles may take (a 128 px tile of one member: 64 KiB).
KEPT_LIMIT_BYTES = 2 << 30


class TileReuse:
    """Tile predictions that later blocks of one stripe still need, kept in host memory (a GPU
    holds only the block at work), at most ``limit_bytes``: beyond, a tile is not kept and its
    later users predict it again (counted in the forward passes). Keys are ``(member, ty, tx)``.

    Per block: ``begin`` (its position in the stripe, which tiles to keep until when, which to
    share with other stripes, the tiles other stripes sent), predict, ``end``: tiles whose last
    user was this block are released, so after a stripe's last block nothing is kept."""

    def __init__(self, limit_bytes: int = KEPT_LIMIT_BYTES):
        self.limit_bytes = limit_bytes
        self.kept: dict[tuple[int, int, int], tuple[torch.Tensor, int]] = {}  # -> (probabilities, last user)
        self.nbytes = 0
        self.dropped = 0  # tiles not kept for lack of room
        self.seq = -1
        self._keep: dict[tuple[int, int], int] = {}
        self._share: frozenset[tuple[int, int]] = frozenset()
        self._imported: dict[tuple[int, int, int], torch.Tensor] = {}
        self._outbox: dict[tuple[int, int, int], torch.Tensor] = {}

    def begin(self, seq: int, keep: dict, share=(), imports: dict | None = None) -> None:
        """Start block ``seq``: ``keep`` tile -> last user's seq; ``imports`` tile -> (members, t, t)
        array or None (a tile without a valid pixel, which no block predicts)."""
        self.seq, self._keep, self._share, self._outbox = seq, keep, frozenset(share), {}
        self._imported = {}
        for tile, probs in (imports or {}).items():
            for m, p in enumerate(() if probs is None else probs):
                t = torch.tensor(p)  # a copy: Ray hands arrays over read-only
                self._imported[(m, *tile)] = t
                self._store((m, *tile), t)

    def get(self, m: int, ty: int, tx: int, device: torch.device) -> torch.Tensor | None:
        found = self._imported.get((m, ty, tx))
        if found is None:
            kept = self.kept.get((m, ty, tx))
            found = None if kept is None else kept[0]
        return None if found is None else found.to(device, non_blocking=True)

    def add(self, m: int, tiles: list[tuple[int, int]], probs: torch.Tensor) -> None:
        """Predictions ``probs (n, t, t)`` of ``tiles`` by member ``m``: keep and share those asked for."""
        wanted = [i for i, t in enumerate(tiles) if t in self._keep or t in self._share]
        if not wanted:
            return
        host = probs[wanted].float().cpu()  # one transfer per batch
        for i, p in zip(wanted, host.unbind(0)):
            key = (m, *tiles[i])
            p = p.clone()  # not a view pinning the batch
            if tiles[i] in self._share:
                self._outbox[key] = p
            self._store(key, p)

    def _store(self, key: tuple[int, int, int], p: torch.Tensor) -> None:
        until = self._keep.get(key[1:], -1)
        if until <= self.seq or key in self.kept:
            return
        size = p.numel() * p.element_size()
        if self.nbytes + size > self.limit_bytes:
            self.dropped += 1
            return
        self.kept[key] = (p, until)
        self.nbytes += size

    def end(self) -> dict[tuple[int, int], np.ndarray | None]:
        """Finish the block: release the tiles it was the last user of; -> the shared tiles it
        predicted, tile -> (members, t, t) array (None: not predicted, it has no valid pixel)."""
        for key in [k for k, (_, until) in self.kept.items() if until <= self.seq]:
            p, _ = self.kept.pop(key)
            self.nbytes -= p.numel() * p.element_size()
        shared = {}
        for tile in self._share:
            members = []
            while (len(members), *tile) in self._outbox:
                members.append(self._outbox[(len(members), *tile)].numpy())
            shared[tile] = np.stack(members) if members else None
        self._imported, self._outbox = {}, {}
        return shared


class EnsemblePredictor:
    def __init__(
        self,
        ensemble: EnsembleConfig,
        *,
        tile: int = 128,
        stride: int = 64,
        blend: str = "gaussian",
        batch_size: int | None = None,
        device: str = "auto",
        threads: int | None = None,
        model_files: tuple | None = None,
        tta: bool = False,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(resolve_device(device))
        self.ensemble = Ensemble(ensemble, str(self.device), model_files)
        # A GPU needs large batches to be kept busy; on CPU, larger batches than 16 gain nothing.
        self.tile, self.stride = tile, stride
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 16)
        self.weights = torch.from_numpy(blend_window(blend, tile)).to(self.device)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        for member in self.ensemble.members:
            member.model = _inference_ready(member.model, member.card.in_channels, tile)
        self.forward_passes = 0  # tiles pushed through each member, summed over calls
        self.tta = tta  # test-time augmentation: each tile also flipped and rotated, probabilities averaged

    @property
    def threshold(self) -> float:
        return self.ensemble.threshold

    @torch.inference_mode()
    def predict_window(
        self,
        bands: np.ndarray,
        valid: np.ndarray,
        *,
        first_tile: tuple[int, int] = (0, 0),
        reuse: TileReuse | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
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
            den[r * s : r * s + t, c * s : c * s + t] += self.weights
        maps = []
        oy, ox = first_tile
        for m, member in enumerate(self.ensemble.members):
            probs: dict[tuple[int, int], torch.Tensor] = {}
            todo = []
            for r, c in zip(rows, cols):
                kept = reuse.get(m, oy + r, ox + c, self.device) if reuse else None
                if kept is None:
                    todo.append((r, c))
                else:
                    probs[r, c] = kept
            strips = _StripFeatures(x, member, t, s)
            for chunk in _balanced_batches(todo, self.batch_size):
                # A lone tile runs twice in one batch: for a batch of one, oneDNN picks kernels whose
                # last bits differ, and a tile's prediction would depend on what its block had left.
                tiles = [strips.tile(r, c) for r, c in chunk]
                batch = torch.stack(tiles * 2 if len(tiles) == 1 else tiles).contiguous(
                    memory_format=torch.channels_last
                )
                with self.autocast:
                    prob = (
                        dihedral_mean(member.model, batch)
                        if self.tta
                        else torch.sigmoid(member.model(batch)[:, 0].float())
                    )[: len(chunk)]
                for p, (r, c) in zip(prob, chunk):
                    probs[r, c] = p
                if reuse:
                    reuse.add(m, [(oy + r, ox + c) for r, c in chunk], prob)
            self.forward_passes += len(todo)
            num = torch.zeros((h, w), dtype=torch.float32, device=self.device)
            for r, c in zip(rows, cols):  # always in grid order: the sums do not depend on reuse
                num[r * s : r * s + t, c * s : c * s + t] += probs[r, c] * self.weights
            maps.append(num / den)
        weights = torch.tensor([m.weight for m in self.ensemble.members], device=self.device)[:, None, None]
        stack = torch.stack(maps)
        mean = (weights * stack).sum(0) / weights.sum()
        spread = ((weights * (stack - mean) ** 2).sum(0) / weights.sum()).sqrt()
        return mean.cpu().numpy(), spread.cpu().numpy()


def dihedral_mean(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean probability ``(N, H, W)`` over the 8 flips and 90-degree rotations of square tiles: each
    view's prediction is turned back onto the tile before averaging. One forward pass per view,
    the views of a batch stacked into one call on the model's device."""
    views = [torch.rot90(v, k, (-2, -1)) for v in (batch, batch.flip(-1)) for k in range(4)]
    logits = model(torch.cat(views).contiguous(memory_format=torch.channels_last))[:, 0].float()
    probs = torch.sigmoid(logits).chunk(len(views))
    back = [torch.rot90(p, -k, (-2, -1)) for p, k in zip(probs, [0, 1, 2, 3] * 2)]
    return (sum(back[:4]) + sum(b.flip(-1) for b in back[4:])) / len(views)


def _balanced_batches(items: list, size: int) -> list[list]:
    """``items`` in as few batches of at most ``size`` as possible, of sizes differing by at most
    one: no near-empty last batch (a batch of 1 costs far more than a 16th of a batch of 16), and
    few distinct batch shapes, each of which costs oneDNN / cuDNN a cached set of kernels in memory."""
    n = -(-len(items) // size)
    if n == 0:
        return []
    cuts = [len(items) * i // n for i in range(n + 1)]
    return [items[a:b] for a, b in zip(cuts, cuts[1:])]


def _inference_ready(model: torch.nn.Module, in_channels: int, tile: int) -> torch.nn.Module:
    """Fold BatchNorm into the preceding convolutions and use channels_last: both speed up
    convolutions on CPU and GPU."""
    sample = torch.zeros((1, in_channels, tile, tile), device=next(model.parameters()).device)
    fold_batchnorm(model.eval(), sample)
    return model.to(memory_format=torch.channels_last)


class _StripFeatures:
    """Normalised features of one tile row at a time: memory stays O(tile x window width)
    instead of a second full copy of the window per member."""

    def __init__(self, bands: torch.Tensor, member, tile: int, stride: int):
        self.bands, self.member, self.size, self.stride = bands, member, tile, stride
        self.row, self.feats = -1, None

    def tile(self, r: int, c: int) -> torch.Tensor:
        if r != self.row:
            strip = self.bands[:, r * self.stride : r * self.stride + self.size]
            feats = derive_features(strip, self.member.card.features)
            self.feats = ((feats - self.member.mean) / self.member.std).nan_to_num_(self.member.card.nan_fill)
            self.row = r
        return self.feats[:, :, c * self.stride : c * self.stride + self.size]
