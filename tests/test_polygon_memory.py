"""Polygons kept while a map is vectorised window by window: objects that lie inside one window
and are smaller than the minimum are whole objects that are never written, so the collector
does not keep them (its memory grew with every speck of a noisy map). Edge pieces are kept
whatever their size: they may merge into a large object. Checked against scipy's labelling of
the whole mask at once."""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage

from landslide_batch.ingest.scene import SceneInfo
from landslide_batch.outputs.polygons import ObjectCollector

SIDE, WINDOW, MIN_PIXELS = 96, 32, 5


def noisy_map() -> tuple[np.ndarray, np.ndarray]:
    """-> (probability, mask): a speckled map (many small objects, some cut by window edges) plus
    a 1 x 6 bar split 3 + 3 by the window edge at x = 32: two pieces below the minimum that
    make one object above it."""
    rng = np.random.default_rng(3)
    prob = ndimage.gaussian_filter(rng.random((SIDE, SIDE)), 0.8).astype(np.float32)
    prob = (prob - prob.min()) / np.ptp(prob)
    mask = prob >= 0.62
    mask[10:13, 26:38] = False  # room for the bar, apart from the speckle
    mask[11, 29:35] = True
    prob[11, 29:35] = 0.9
    return prob, mask


def collect(prob: np.ndarray, mask: np.ndarray, min_pixels: int) -> ObjectCollector:
    info = SceneInfo(SIDE, SIDE, ("p",), None, (10.0, 0.0, 500000.0, 0.0, -10.0, 3100000.0), WINDOW)
    collector = ObjectCollector(info, min_pixels=min_pixels)
    for y0 in range(0, SIDE, WINDOW):
        for x0 in range(0, SIDE, WINDOW):
            w = (slice(y0, y0 + WINDOW), slice(x0, x0 + WINDOW))
            collector.add_window(y0, x0, mask[w], prob[w], None)
    return collector


def written(collector: ObjectCollector) -> list[tuple]:
    """(pixels, probability sum, normalised polygon) of each object written, sorted."""
    table = collector.table()
    table = table.take(table.pixels >= MIN_PIXELS)
    wkt = shapely.to_wkt(shapely.normalize(table.geom))
    return sorted(zip(table.pixels.tolist(), np.round(table.prob_sum, 3).tolist(), wkt.tolist()))


def test_small_inner_objects_are_not_kept_and_the_written_objects_do_not_change():
    prob, mask = noisy_map()
    assert prob.std() >= 0.05
    everything, bounded = collect(prob, mask, 0), collect(prob, mask, MIN_PIXELS)
    # The noisy map has many small whole objects: the bounded collector holds far fewer pieces.
    assert bounded.kept < 0.7 * everything.kept

    objects = written(bounded)
    assert objects == written(everything)

    labels, n = ndimage.label(mask)  # the whole mask at once, no windows
    sizes = ndimage.sum_labels(np.ones_like(prob), labels, np.arange(1, n + 1))
    assert sorted(p for p, _, _ in objects) == sorted(int(s) for s in sizes if s >= MIN_PIXELS)
    assert 6 in [p for p, _, _ in objects]  # the bar: two 3-pixel pieces, merged
