"""Time to map: from a scene's publication in its catalog to the polygons that first use it.

Each scene in ``run.json`` gets ``catalog_created`` / ``catalog_published`` (its STAC item's
``created`` / ``published`` properties, when given), ``polygons_published`` (when the region's
polygons first included it: this pass's ``finished``, or what the previous ``run.json`` says for
a scene mapped before, matched by content) and ``time_to_map_s`` (from ``published``, else ``created``, to
``polygons_published``; null without either). ``time_to_map.median_s`` is over the scenes with one.
"""

from __future__ import annotations

from datetime import datetime
from statistics import median


def _seconds(start: str, end: str) -> float:
    def parse(t: str) -> datetime:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def stamp_time_to_map(scenes: list[dict], previous: dict | None, finished: str) -> dict:
    """Add the fields above to each scene record (in place); -> ``{"scenes", "median_s"}``."""
    # by content (a STAC item's hash), not id: a later pass may list the same item in another file
    before = {s["sha256"]: s.get("polygons_published") for s in (previous or {}).get("scenes", [])}
    times = []
    for s in scenes:
        s["polygons_published"] = before.get(s["sha256"]) or finished
        start = s.get("catalog_published") or s.get("catalog_created")
        s["time_to_map_s"] = round(_seconds(start, s["polygons_published"]), 3) if start else None
        if s["time_to_map_s"] is not None:
            times.append(s["time_to_map_s"])
    return {"scenes": len(times), "median_s": median(times) if times else None}
