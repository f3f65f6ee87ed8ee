"""Progress and ETA of a region job over all its scenes: blocks done / total and km² per hour."""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import timedelta

from ..plan.tiling import Block

log = logging.getLogger(__name__)


class RegionProgress:
    """Counts a region's blocks as they finish and logs where the whole region stands.

    ``scenes``: (height, width) in pixels of each scene; ``block``: block side in pixels;
    ``pixel_m``: pixel size in metres. A scene's blocks that were resumed or had no valid pixel
    count as done when the scene finishes; the rate (km²/h) counts only blocks computed. Scenes
    are counted apart (on Ray the next scene starts while the last blocks of one finish), from
    any thread: the figures and their log lines move forward together."""

    def __init__(self, scenes: list[tuple[int, int]], block: int, pixel_m: float):
        self.km2_per_px = pixel_m * pixel_m / 1e6
        self.scene_blocks = [math.ceil(h / block) * math.ceil(w / block) for h, w in scenes]
        self.scene_km2 = [h * w * self.km2_per_px for h, w in scenes]
        self.total_blocks, self.total_km2 = sum(self.scene_blocks), sum(self.scene_km2)
        self.finished = [False] * len(scenes)
        self.blocks = [0] * len(scenes)  # blocks computed per scene
        self.km2 = [0.0] * len(scenes)  # area computed per scene
        self.computed_km2 = 0.0  # area computed over the region so far
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()

    def block_done(self, scene: int, block: Block) -> None:
        """``block`` of scene number ``scene`` (0-based) has been computed and written."""
        area = (block.y1 - block.y0) * (block.x1 - block.x0) * self.km2_per_px
        with self.lock:
            self.blocks[scene] += 1
            self.km2[scene] += area
            self.computed_km2 += area
            log.info("region: %s", self.describe())

    def scene_done(self, scene: int) -> None:
        """Scene number ``scene`` is finished, all its blocks included."""
        with self.lock:
            self.finished[scene] = True
            log.info("region: %s", self.describe())

    def figures(self) -> dict:
        """-> blocks done / total, km² done / total, km²/h so far, ETA in seconds (None before a rate)."""
        done_blocks = sum(total if done else n for total, n, done in zip(self.scene_blocks, self.blocks, self.finished))
        done_km2 = sum(total if done else km2 for total, km2, done in zip(self.scene_km2, self.km2, self.finished))
        hours = (time.perf_counter() - self.t0) / 3600
        rate = self.computed_km2 / hours if hours and self.computed_km2 else None
        eta = (self.total_km2 - done_km2) / rate * 3600 if rate else None
        return {
            "blocks_done": done_blocks,
            "blocks_total": self.total_blocks,
            "km2_done": done_km2,
            "km2_total": self.total_km2,
            "km2_per_h": rate,
            "eta_s": eta,
        }

    def describe(self) -> str:
        f = self.figures()
        rate = f"{f['km2_per_h']:.1f} km²/h" if f["km2_per_h"] else "rate not known yet"
        eta = f"ETA {timedelta(seconds=round(f['eta_s']))}" if f["eta_s"] is not None else "ETA not known yet"
        return (
            f"{f['blocks_done']}/{f['blocks_total']} blocks, {f['km2_done']:.2f} of {f['km2_total']:.2f} km² "
            f"({sum(self.finished)} scene(s) finished), {rate}, {eta}"
        )
