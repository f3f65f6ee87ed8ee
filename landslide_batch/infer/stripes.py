"""Blocks in stripes, one stripe per predictor: neighbours' edge tiles stay with one predictor.

A tile straddling a block edge is predicted by the first block of its stripe that needs it and
kept (``TileReuse``) for the stripe's later blocks. A tile shared by two stripes is predicted
once, by the later stripe (the one with the higher index, which reaches it at its start), and
sent to the earlier stripe (which needs it at its end) through the driver. A stripe only ever
waits for stripes after it, so the last one never waits and there is no cycle.

Pure integer bookkeeping over the tile grid, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..plan.tiling import Block, TileGrid

Tile = tuple[int, int]


@dataclass(frozen=True)
class BlockTask:
    """What a block's predictor does beyond predicting the block.

    ``keep``: tiles of this block that later blocks of its stripe use -> the last one's position;
    ``share``: tiles it predicts first for other stripes (sent back with its result);
    ``needs``: tiles other stripes predict for it (the driver hands them over)."""

    stripe: int
    seq: int
    last: bool
    keep: dict[Tile, int]
    share: tuple[Tile, ...]
    needs: tuple[Tile, ...]


def split_stripes(blocks: list[Block], n: int) -> list[list[Block]]:
    """``blocks`` in at most ``n`` stripes of whole block rows (block columns when the blocks are
    wider than tall), about equal in block count; each stripe in row-major (column-major) order."""
    by_rows = len({b.by for b in blocks}) >= len({b.bx for b in blocks})

    def major(b: Block) -> tuple[int, int]:
        return (b.by, b.bx) if by_rows else (b.bx, b.by)

    lines: dict[int, list[Block]] = {}
    for b in sorted(blocks, key=major):
        lines.setdefault(major(b)[0], []).append(b)
    groups = min(n, len(lines))
    stripes: list[list[Block]] = []
    current: list[Block] = []
    done = 0
    for i, line in enumerate(lines.values()):
        current += line
        done += len(line)
        lines_left, stripes_left = len(lines) - i - 1, groups - len(stripes) - 1
        if stripes_left == 0:
            continue
        if done >= len(blocks) * (len(stripes) + 1) / groups or lines_left == stripes_left:
            stripes.append(current)
            current = []
    return stripes + [current] if current else stripes


def plan_tasks(stripes: list[list[Block]], grid: TileGrid) -> list[list[BlockTask]]:
    """One ``BlockTask`` per block of each stripe, in the stripes' order."""
    owner = np.full((grid.ny, grid.nx), -1, np.int32)  # highest stripe using each tile
    users = np.zeros((grid.ny, grid.nx), np.int16)  # stripes using each tile
    spans = []
    for s, blocks in enumerate(stripes):
        first = np.full((grid.ny, grid.nx), -1, np.int32)
        last = first.copy()
        for k, b in enumerate(blocks):
            last[b.ty0 : b.ty1, b.tx0 : b.tx1] = k
            view = first[b.ty0 : b.ty1, b.tx0 : b.tx1]
            view[view < 0] = k
        used = first >= 0
        owner[used] = s
        users += used
        spans.append((first, last))
    plans = []
    for s, (blocks, (first, last)) in enumerate(zip(stripes, spans)):
        tasks = []
        for k, b in enumerate(blocks):
            w = (slice(b.ty0, b.ty1), slice(b.tx0, b.tx1))
            later = last[w] > k
            here = first[w] == k
            own = owner[w] == s
            tasks.append(
                BlockTask(
                    stripe=s,
                    seq=k,
                    last=k == len(blocks) - 1,
                    keep={t: int(last[t]) for t in _tiles(later, b)},
                    share=_tiles(here & own & (users[w] > 1), b),
                    needs=_tiles(here & ~own, b),
                )
            )
        plans.append(tasks)
    return plans


def _tiles(mask: np.ndarray, b: Block) -> tuple[Tile, ...]:
    iy, ix = np.nonzero(mask)
    return tuple((int(y) + b.ty0, int(x) + b.tx0) for y, x in zip(iy, ix))
