"""Work a job asks for, estimated from its settings and grid before anything runs, and refused
above documented limits (docs/reliability.md, "Limits") with the figure and the way out.

Three figures grow without bound from innocent-looking settings: the grid's pixel count (a
continent-sized AOI), the plan's tile count and the memory one block needs (both from the tile
stride: ``--overlap 0.99`` leaves a 1 px stride, ~16 000 forward passes per pixel). Pure
arithmetic on integers: no I/O.
"""

from __future__ import annotations

from ..bands import N_BANDS
from ..errors import ConfigError
from .tiling import TileGrid

#: Default ``max_pixels`` (``--max-pixels``): 4e9 px is a 632 km square at 10 m.
MAX_PIXELS = 4_000_000_000
#: Tiles of one plan (forward passes per member): 20 million take days on a GPU.
MAX_TILES = 20_000_000
#: Host memory one block's tiles may take (see :func:`block_bytes`).
MAX_BLOCK_BYTES = 16 * 1024**3
#: float32 copies of a block's tiles held at once: its features (at most every layer), each
#: member's probabilities, the blending weights placed on the grid, the spare of a sum.
_TILE_COPIES = N_BANDS + 3


def block_tiles(tile: int, stride: int, block: int) -> int:
    """Tiles over one block of ``block`` x ``block`` px inside the scene (the worst case)."""
    grid = TileGrid(3 * block, 3 * block, tile, stride)
    lo, hi = grid.tiles_over(block, 2 * block, grid.ny)
    return (hi - lo) ** 2


def block_bytes(tile: int, stride: int, block: int, members: int = 1) -> int:
    """About the host memory the predictor needs for one block: every tile of it, in float32,
    ``_TILE_COPIES`` + ``members`` times."""
    return block_tiles(tile, stride, block) * tile * tile * 4 * (_TILE_COPIES + members)


def check_work(
    height: int, width: int, *, tile: int, stride: int, block: int, members: int = 1, max_pixels: int = MAX_PIXELS
) -> None:
    """ConfigError when a ``height`` x ``width`` px job with these settings is above a limit."""
    pixels = height * width
    if pixels > max_pixels:
        raise ConfigError(
            f"the grid is {height} x {width} = {pixels:.3g} px, above max_pixels {max_pixels:.3g}: a smaller "
            "AOI, a coarser resolution, or --max-pixels (job key max_pixels) to allow it"
        )
    tiles = TileGrid(height, width, tile, stride).n_tiles
    passes = (tile / stride) ** 2
    way_out = f"a larger stride (less --overlap; now {tile} px tiles every {stride} px, {passes:.3g} passes per pixel)"
    if tiles > MAX_TILES:
        raise ConfigError(f"the plan needs {tiles:.3g} tiles, above the limit of {MAX_TILES:.3g}: {way_out}")
    need = block_bytes(tile, stride, min(block, max(height, width)), members)
    if need > MAX_BLOCK_BYTES:
        raise ConfigError(
            f"one block needs about {need / 1e9:.3g} GB of memory for its tiles, above the limit of "
            f"{MAX_BLOCK_BYTES / 1e9:.3g} GB: {way_out}, or a smaller --block (now {block})"
        )
