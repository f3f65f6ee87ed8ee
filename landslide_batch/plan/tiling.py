"""The tile grid and its blocks: pure integer geometry, no I/O.

Tiles of ``tile`` px at ``stride`` px steps start ``margin`` px before the scene origin, so
border pixels are not seen only at a tile's edge (at 50 % overlap the margin is one stride,
and the first tile has pixel 0 at its centre). The margin is a whole number of strides, so
tile origins fall on block edges (blocks are multiples of the stride): only
``tile / stride - 1`` tiles straddle each block edge. Pixels outside the scene are mirrored
from inside (see ``Scene.read_reflected``).

A block is a chunk-aligned rectangle of *output* pixels (its core). It predicts every tile
that overlaps its core, so a pixel always blends the same set of tiles whatever the block
size: the map does not depend on how the scene was cut.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    stride: int

    @property
    def margin(self) -> int:
        return self.stride * (self.tile // (2 * self.stride))

    def _count(self, n: int) -> int:
        reach = n + self.margin - self.tile  # pixels left after the first tile
        return 1 if reach <= 0 else math.ceil(reach / self.stride) + 1

    @property
    def ny(self) -> int:
        return self._count(self.height)

    @property
    def nx(self) -> int:
        return self._count(self.width)

    @property
    def n_tiles(self) -> int:
        return self.ny * self.nx

    def origin(self, i: int) -> int:
        """Pixel coordinate of the first row/column of tile ``i`` along an axis."""
        return -self.margin + i * self.stride

    def tiles_over(self, a0: int, a1: int, n_tiles: int) -> tuple[int, int]:
        """Half-open range of tile indices whose extent overlaps pixels ``[a0, a1)``."""
        lo = max(0, (a0 + self.margin - self.tile) // self.stride + 1)
        hi = min(n_tiles, -(-(a1 + self.margin) // self.stride))
        return lo, hi


@dataclass(frozen=True)
class Block:
    """Core pixels ``[y0, y1) x [x0, x1)`` and the tiles ``[ty0, ty1) x [tx0, tx1)`` over them."""

    by: int
    bx: int
    y0: int
    y1: int
    x0: int
    x1: int
    ty0: int
    ty1: int
    tx0: int
    tx1: int

    @property
    def key(self) -> str:
        return f"{self.by}_{self.bx}"

    @property
    def n_tiles(self) -> int:
        return (self.ty1 - self.ty0) * (self.tx1 - self.tx0)

    def window(self, grid: TileGrid) -> tuple[int, int, int, int]:
        """Input window (may reach outside the scene) covering all of this block's tiles."""
        return (
            grid.origin(self.ty0),
            grid.origin(self.ty1 - 1) + grid.tile,
            grid.origin(self.tx0),
            grid.origin(self.tx1 - 1) + grid.tile,
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_blocks(grid: TileGrid, block: int) -> list[Block]:
    """Blocks of ``block`` x ``block`` output pixels (smaller at the scene's right/bottom edge)."""
    blocks = []
    for by, y0 in enumerate(range(0, grid.height, block)):
        y1 = min(y0 + block, grid.height)
        ty = grid.tiles_over(y0, y1, grid.ny)
        for bx, x0 in enumerate(range(0, grid.width, block)):
            x1 = min(x0 + block, grid.width)
            tx = grid.tiles_over(x0, x1, grid.nx)
            blocks.append(Block(by, bx, y0, y1, x0, x1, *ty, *tx))
    return blocks


def tile_uses(grid: TileGrid, blocks: list[Block]) -> np.ndarray:
    """``(ny, nx)`` count of the given blocks that predict each tile; tiles counted more than
    once straddle block edges, and their predictions are worth keeping for the next user."""
    uses = np.zeros((grid.ny, grid.nx), np.int16)
    for b in blocks:
        uses[b.ty0 : b.ty1, b.tx0 : b.tx1] += 1
    return uses
