"""The ensemble predictor: a window of raw bands in, blended probability and spread out.

One implementation serves the pipeline (one instance per actor / process), the web app
and evaluation. The whole window goes to the model's device once; only the final maps travel
back. Per member, the work around the model is done for all tiles of the block at once, so
the number of torch operators a block costs (each one a kernel launch on a GPU) does not grow
with its tiles: features are derived and normalised over the window, every tile is cut by one
gather into a channels_last batch, the model runs over slices of it, and the predictions are
blended by one ``fold`` (weights x predictions; the weight sum likewise, once per block).

Tiles that straddle block edges belong to several blocks. Given their global index and which
later blocks of the same stripe use them (``TileReuse``, planned by ``infer.stripes``), the
predictor keeps their predictions in host memory until the last user has blended them, so a
block does not recompute what its neighbour already did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, TypedDict, TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ..bands import derive_features
from ..config import EnsembleConfig
from ..models.card import ModelFiles
from ..models.ensemble import Ensemble, Member, resolve_device
from ..models.fusion import fold_batchnorm
from .blending import blend_window

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11+: only for the checker

log = logging.getLogger(__name__)

Tile = tuple[int, int]  # (row, column) in a tile grid
TileKey = tuple[int, int, int]  # (member, row, column)
FloatArray = npt.NDArray[np.float32]
T = TypeVar("T")

#: Tiles per forward pass by default: a GPU needs large batches to be kept busy; on CPU, larger
#: batches than 16 gain nothing.
GPU_BATCH, CPU_BATCH = 64, 16

#: Host memory that one predictor's kept tiles may take (a 128 px tile of one member: 64 KiB).
KEPT_LIMIT_BYTES = 2 << 30


class TileReuse:
    """Tile predictions that later blocks of one stripe still need, kept in host memory (a GPU
    holds only the block at work), at most ``limit_bytes``: beyond, a tile is not kept and its
    later users predict it again (counted in the forward passes). Keys are ``(member, ty, tx)``.

    Per block: ``begin`` (its position in the stripe, which tiles to keep until when, which to
    share with other stripes, the tiles other stripes sent), predict, ``end``: tiles whose last
    user was this block are released, so after a stripe's last block nothing is kept.
    A block's tiles move between device and host in one transfer each way (``gather``, ``add``)."""

    def __init__(self, limit_bytes: int = KEPT_LIMIT_BYTES):
        self.limit_bytes = limit_bytes
        self.kept: dict[TileKey, tuple[torch.Tensor, int]] = {}  # -> (probabilities, last user)
        self.nbytes = 0
        self.dropped = 0  # tiles not kept for lack of room
        self.seq = -1
        self._keep: Mapping[Tile, int] = {}
        self._share: frozenset[Tile] = frozenset()
        self._imported: dict[TileKey, torch.Tensor] = {}
        self._outbox: dict[TileKey, torch.Tensor] = {}

    def begin(
        self,
        seq: int,
        keep: Mapping[Tile, int],
        share: Iterable[Tile] = (),
        imports: Mapping[Tile, FloatArray | None] | None = None,
    ) -> None:
        """Start block ``seq``: ``keep`` tile -> last user's seq; ``imports`` tile -> (members, t, t)
        array or None (a tile without a valid pixel, which no block predicts)."""
        self.seq, self._keep, self._share, self._outbox = seq, keep, frozenset(share), {}
        self._imported = {}
        for tile, probs in (imports or {}).items():
            for m, p in enumerate(() if probs is None else probs):
                t = torch.from_numpy(np.array(p, np.float32))  # a copy: Ray hands arrays over read-only
                self._imported[(m, *tile)] = t
                self._store((m, *tile), t)

    def gather(self, m: int, tiles: Sequence[Tile], device: torch.device) -> tuple[list[int], torch.Tensor | None]:
        """Which of ``tiles`` member ``m``'s predictions are held for (positions in ``tiles``) and
        those predictions ``(k, t, t)`` on ``device``, stacked on the host and sent at once."""
        held = [(i, p) for i, tile in enumerate(tiles) if (p := self._held((m, *tile))) is not None]
        if not held:
            return [], None
        return [i for i, _ in held], torch.stack([p for _, p in held]).to(device, non_blocking=True)

    def add(self, m: int, tiles: Sequence[Tile], probs: torch.Tensor) -> None:
        """Predictions ``probs (n, t, t)`` of ``tiles`` by member ``m``: keep and share those asked for."""
        wanted = [i for i, t in enumerate(tiles) if t in self._keep or t in self._share]
        if not wanted:
            return
        host = probs[wanted].cpu().numpy()  # one transfer per block
        for i, p in zip(wanted, host):
            key = (m, *tiles[i])
            kept = torch.from_numpy(p.copy())  # not a view pinning the block's array
            if tiles[i] in self._share:
                self._outbox[key] = kept
            self._store(key, kept)

    def _held(self, key: TileKey) -> torch.Tensor | None:
        found = self._imported.get(key)
        if found is None:
            kept = self.kept.get(key)
            found = None if kept is None else kept[0]
        return found

    def _store(self, key: TileKey, p: torch.Tensor) -> None:
        until = self._keep.get((key[1], key[2]), -1)
        if until <= self.seq or key in self.kept:
            return
        size = p.numel() * p.element_size()
        if self.nbytes + size > self.limit_bytes:
            self.dropped += 1
            return
        self.kept[key] = (p, until)
        self.nbytes += size

    def end(self) -> dict[Tile, FloatArray | None]:
        """Finish the block: release the tiles it was the last user of; -> the shared tiles it
        predicted, tile -> (members, t, t) array (None: not predicted, it has no valid pixel)."""
        for key in [k for k, (_, until) in self.kept.items() if until <= self.seq]:
            p, _ = self.kept.pop(key)
            self.nbytes -= p.numel() * p.element_size()
        shared: dict[Tile, FloatArray | None] = {}
        for tile in self._share:
            members: list[torch.Tensor] = []
            while (len(members), *tile) in self._outbox:
                members.append(self._outbox[(len(members), *tile)])
            shared[tile] = torch.stack(members).numpy() if members else None
        self._imported, self._outbox = {}, {}
        return shared


class WindowPlace(TypedDict, total=False):
    """Where a window lies in a scene's tile grid, for ``TileReuse`` (both optional)."""

    first_tile: Tile  # global grid index of the window's first tile; default (0, 0)
    reuse: TileReuse | None  # the stripe's kept tiles; default none


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
        model_files: tuple[ModelFiles, ...] | None = None,
        tta: bool = False,
    ):
        # torch's CPU threads are the process's, left to its owner (the CLI, a Ray actor, a notebook).
        self.device = torch.device(resolve_device(device))
        self.ensemble = Ensemble(ensemble, str(self.device), model_files)
        self.tile, self.stride = tile, stride
        self.batch_size = batch_size or (GPU_BATCH if self.device.type == "cuda" else CPU_BATCH)
        self.weights = torch.from_numpy(blend_window(blend, tile)).to(self.device)
        self.autocast: AbstractContextManager[object] = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        )
        for member in self.ensemble.members:
            member.model = _inference_ready(member.model, member.card.in_channels, tile)
        self.forward_passes = 0  # tiles pushed through each member, summed over calls
        # Seconds inside the members' forward passes, on CPU (where a forward is synchronous; on a
        # GPU timing it would need a sync that stalls the queue): a job's pure model time.
        self.forward_s = 0.0
        self.tta = tta  # test-time augmentation: each tile also flipped and rotated, probabilities averaged

    @property
    def threshold(self) -> float:
        return self.ensemble.threshold

    def predict_window(
        self, bands: npt.NDArray[np.floating], valid: npt.NDArray[np.bool_], **place: Unpack[WindowPlace]
    ) -> tuple[FloatArray, FloatArray]:
        """``bands (14, H, W)`` raw values (NaN where invalid), ``valid (H, W)`` ->
        (probability, spread), float32 ``(H, W)``; NaN where no tile ran (no valid pixel near).

        ``H`` and ``W`` must be ``tile + k * stride``: the window is covered exactly by tiles.
        ``place``: where the window lies in the grid, for tile reuse (:class:`WindowPlace`).
        """
        prob, spread, _ = self.predict_maps(bands, valid, **place)
        return prob, spread

    @torch.inference_mode()
    def predict_maps(
        self,
        bands: npt.NDArray[np.floating],
        valid: npt.NDArray[np.bool_],
        *,
        first_tile: Tile = (0, 0),
        reuse: TileReuse | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``predict_window``'s maps and the members' agreement: the share of the members (weighted
        as in the mean) whose own blended probability is at or above their own card's threshold."""
        t, s = self.tile, self.stride
        h, w = valid.shape
        if (h - t) % s or (w - t) % s or h < t or w < t:
            raise ValueError(f"window {h}x{w} is not covered exactly by {t}px tiles at stride {s}")
        x = self._to_device(bands)
        grid = _RunTiles(_tiles_with_valid_pixels(valid, t, s), first_tile, self.device)
        den = self._blend(torch.ones((), device=self.device).expand(grid.n_run, t, t), grid, (h, w))
        maps = [
            self._blend(self._member_probs(m, member, x, grid, reuse), grid, (h, w)) / den
            for m, member in enumerate(self.ensemble.members)
        ]
        weights = torch.tensor([m.weight for m in self.ensemble.members], device=self.device)[:, None, None]
        stack = torch.stack(maps)
        mean = (weights * stack).sum(0) / weights.sum()
        spread = ((weights * (stack - mean) ** 2).sum(0) / weights.sum()).sqrt()
        thresholds = torch.tensor([m.card.threshold for m in self.ensemble.members], device=self.device)
        above = (stack >= thresholds[:, None, None]).float()
        agreement = torch.where(mean.isnan(), mean, (weights * above).sum(0) / weights.sum())
        return mean.cpu().numpy(), spread.cpu().numpy(), agreement.cpu().numpy()

    def _to_device(self, bands: npt.NDArray[np.floating]) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(bands, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def _member_probs(
        self, m: int, member: Member, x: torch.Tensor, grid: _RunTiles, reuse: TileReuse | None
    ) -> torch.Tensor:
        """Member ``m``'s probabilities ``(n_run, t, t)`` of the tiles to run, in grid order: those
        ``reuse`` holds, the others predicted (and handed to ``reuse``)."""
        held_at, held = reuse.gather(m, grid.global_tiles, self.device) if reuse else ([], None)
        skip = set(held_at)
        todo = [i for i in range(grid.n_run) if i not in skip]
        self.forward_passes += len(todo)
        if held is None:
            probs = fresh = self._predict_tiles(member, x, grid.flat_index)
        else:
            probs = torch.empty((grid.n_run, self.tile, self.tile), device=self.device)
            probs.index_copy_(0, torch.tensor(held_at, device=self.device), held)
            if not todo:
                return probs
            at = torch.tensor(todo, device=self.device)
            fresh = self._predict_tiles(member, x, grid.flat_index[at])
            probs.index_copy_(0, at, fresh)
        if reuse and todo:
            reuse.add(m, [grid.global_tiles[i] for i in todo], fresh)
        return probs

    def _predict_tiles(self, member: Member, x: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(n, t, t)`` of the tiles at ``flat_index`` (row-major grid positions)."""
        n = len(flat_index)
        if n == 0:
            return torch.empty((0, self.tile, self.tile), device=self.device)
        batch = _normalised_tiles(member, x, flat_index, self.tile, self.stride)
        if n == 1:
            # A lone tile runs twice in one batch: for a batch of one, oneDNN picks kernels whose
            # last bits differ, and a tile's prediction would depend on what its block had left.
            batch = torch.cat([batch, batch])
        spans = [len(b) for b in _balanced_batches(list(range(len(batch))), self.batch_size)]
        t0 = time.perf_counter()
        with self.autocast:
            if self.tta:
                probs = torch.cat([dihedral_mean(member.model, b) for b in batch.split_with_sizes(spans)])[:n]
            else:
                logits = torch.cat([member.model(b) for b in batch.split_with_sizes(spans)])
                probs = torch.sigmoid(logits[:n, 0].float())
        if self.device.type == "cpu":
            self.forward_s += time.perf_counter() - t0
        return probs

    def _blend(self, tiles: torch.Tensor, grid: _RunTiles, shape: Tile) -> torch.Tensor:
        """Sum of ``tiles (n_run, t, t)`` (in grid order) x the blending window, each at its place
        in the window ``shape``: one ``fold`` over the whole grid (tiles not run add zeros), which
        sums in a fixed order: a pixel's sum does not depend on which tiles came from ``reuse``."""
        t = self.tile
        placed = torch.zeros((grid.n_grid, t, t), device=self.device)
        placed.index_copy_(0, grid.flat_index, tiles * self.weights)
        cols = placed.view(grid.n_grid, t * t).t().unsqueeze(0)
        return F.fold(cols, shape, kernel_size=t, stride=self.stride)[0, 0]


class _RunTiles:
    """The tiles of a window to run (those with a valid pixel), in row-major grid order."""

    def __init__(self, run: npt.NDArray[np.bool_], first_tile: Tile, device: torch.device):
        flat = np.flatnonzero(run)
        rows, cols = np.divmod(flat, run.shape[1])
        self.n_grid, self.n_run = run.size, len(flat)
        self.flat_index = torch.from_numpy(flat).to(device)
        self.global_tiles: list[Tile] = [
            (first_tile[0] + r, first_tile[1] + c) for r, c in zip(rows.tolist(), cols.tolist())
        ]


def _tiles_with_valid_pixels(valid: npt.NDArray[np.bool_], tile: int, stride: int) -> npt.NDArray[np.bool_]:
    """``(ny, nx)``: which tiles hold a valid pixel. Tiles without one are skipped: they could only
    colour invalid pixels."""
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(valid, bool), (tile, tile))[::stride, ::stride]
    return np.asarray(windows.any(axis=(-2, -1)))


def _normalised_tiles(
    member: Member, x: torch.Tensor, flat_index: torch.Tensor, tile: int, stride: int
) -> torch.Tensor:
    """The member's normalised features of the tiles at ``flat_index``, ``(n, F, t, t)`` in
    channels_last layout: derived and normalised over the window, then all tiles cut by one
    gather from a strided view of the window's tile grid."""
    _, h, w = x.shape
    feats = derive_features(x, member.card.features)
    n_feat, nx = feats.shape[0], (w - tile) // stride + 1
    hwc = torch.empty((h, w, n_feat), device=x.device)  # pixels outer, features inner: channels_last
    chw = hwc.permute(2, 0, 1)
    torch.sub(feats, member.mean, out=chw)
    chw.div_(member.std).nan_to_num_(member.card.nan_fill)
    del feats
    ny = (h - tile) // stride + 1
    grid = hwc.as_strided((ny, nx, tile, tile, n_feat), (stride * w * n_feat, stride * n_feat, w * n_feat, n_feat, 1))
    return grid[flat_index // nx, flat_index % nx].permute(0, 3, 1, 2)


def dihedral_mean(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean probability ``(N, H, W)`` over the 8 flips and 90-degree rotations of square tiles: each
    view's prediction is turned back onto the tile before averaging. One forward pass per view,
    the views of a batch stacked into one call on the model's device."""
    views = [torch.rot90(v, k, (-2, -1)) for v in (batch, batch.flip(-1)) for k in range(4)]
    logits = model(torch.cat(views).contiguous(memory_format=torch.channels_last))[:, 0].float()
    probs = torch.sigmoid(logits).chunk(len(views))
    back = [torch.rot90(p, -k, (-2, -1)) for p, k in zip(probs, [0, 1, 2, 3] * 2)]
    turned = back[0] + back[1] + back[2] + back[3]
    flipped = back[4].flip(-1) + back[5].flip(-1) + back[6].flip(-1) + back[7].flip(-1)
    return (turned + flipped) / len(views)


def _balanced_batches(items: list[T], size: int) -> list[list[T]]:
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
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]
