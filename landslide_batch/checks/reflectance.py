"""The reflectance guard: refuse a scene whose reflectance is off by an offset.

Sentinel-2 L2A digital numbers of processing baseline 04.00 on carry +1000 (``BOA_ADD_OFFSET``
-1000, ``raster:bands`` offset -0.1). Applied twice (a catalog that harmonised its DNs and still
declares the offset), every reflectance is 0.1 too low; missed, 0.1 too high. The units guard
(``checks/units.py``) looks for orders of magnitude and passes both, and the models then map with
confidence and are wrong. Ingest keeps, per optical layer, a histogram of the valid land pixels
(SCL water left out: it is legitimately dark); from it:

- an offset applied twice: in ``MIN_BANDS`` or more land bands, over ``NEGATIVE_SHARE`` of the
  pixels are negative (corrected L2A land has well under 1 %);
- an offset missed: the dark object (the darkest 0.1 %) of every land band is above ``DARK``
  (shadows and dark vegetation sit near 0.01-0.05 in the visible bands).

Only scenes whose digital numbers the ingest converted (``reflectance: l2a``) are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnitsMismatchError
from .units import FLAG

#: Bands of land surfaces well above zero reflectance (B1, B9 and B10 are atmospheric bands).
LAND_BANDS = ("B2", "B3", "B4", "B5", "B8", "B11", "B12")
NEGATIVE_SHARE = 0.05
MIN_BANDS = 3
DARK = 0.1
MIN_PIXELS = 1000  # fewer valid land pixels than this: no evidence either way


@dataclass(frozen=True)
class ReflectanceVerdict:
    """Per land band: the scaling decision and the statistics it was judged on; the likely cause."""

    bands: dict[str, dict]
    cause: str | None

    def record(self, refused: bool) -> dict:
        return {"bands": self.bands, "likely_cause": self.cause, "mismatch": refused}


def judge(ingest: dict | None) -> ReflectanceVerdict | None:
    """The verdict on a scene's ingest record (``attrs["ingest"]``); None when it has nothing to judge."""
    if not ingest or ingest.get("reflectance") != "l2a":
        return None
    stats, layers = ingest.get("stats_physical_units", {}), ingest.get("layers", {})
    bands = {
        b: {
            "scaling": layers.get(b, {}).get("scaling"),
            "negative_share": stats[b]["negative_share"],
            "dark_object_p0_1": stats[b]["p0_1"],
            "p1": stats[b]["p1"],
            "pixels": stats[b]["n"],
        }
        for b in LAND_BANDS
        if b in stats and stats[b].get("p0_1") is not None and stats[b]["n"] >= MIN_PIXELS
    }
    if not bands:
        return None
    negative = {b: s["negative_share"] for b, s in bands.items() if s["negative_share"] > NEGATIVE_SHARE}
    cause = None
    if len(negative) >= MIN_BANDS:
        listed = ", ".join(f"{b} {v:.0%}" for b, v in negative.items())
        cause = (
            f"reflectance negative on a large share of valid land pixels ({listed}): the +1000 DN offset "
            "was likely subtracted twice (digital numbers already harmonised, e.g. Earth Search "
            "earthsearch:boa_offset_applied: true, read with an offset of -0.1 / -1000); "
            f"scaling used for B2: {bands.get('B2', next(iter(bands.values())))['scaling']}. "
            "Set inputs.reflectance.boa_add_offset: 0 if the files are harmonised"
        )
    elif all(s["dark_object_p0_1"] > DARK for s in bands.values()):
        listed = ", ".join(f"{b} {s['dark_object_p0_1']:.3f}" for b, s in bands.items())
        cause = (
            f"no dark pixels: the darkest 0.1 % of every land band is above {DARK:g} ({listed}); the "
            "baseline >= 04.00 offset (BOA_ADD_OFFSET -1000, raster:bands offset -0.1) was likely not "
            f"applied; scaling used for B2: {bands.get('B2', next(iter(bands.values())))['scaling']}. Set "
            "inputs.reflectance.processing_baseline or boa_add_offset: -1000"
        )
    return ReflectanceVerdict(bands, cause)


def reflectance_guard(scene, accept: bool, source: str) -> tuple[dict | None, list[str]]:
    """Judge ``scene`` (an ``ingest.Scene``) before inference: -> (its record for ``run.json``: the
    scaling decisions and the verdict, warnings); UnitsMismatchError (exit 2) when its reflectance
    is off, unless ``accept``."""
    ingest = scene.attrs.get("ingest")
    record = decisions(ingest)
    verdict = judge(ingest)
    if verdict is None or verdict.cause is None:
        return ((record or {}) | verdict.record(False) if verdict else record), []
    if not accept:
        raise UnitsMismatchError(
            f"scene {source}: {verdict.cause}. The models would map it with confidence and be wrong; "
            f"to map it anyway, {FLAG}"
        )
    return (record or {}) | verdict.record(True), [
        f"reflectance off by an offset, mapped anyway ({FLAG}): {verdict.cause}"
    ]


def decisions(ingest: dict | None) -> dict | None:
    """How each optical layer's values became reflectance, and from what (``run.json``); None for
    a scene not assembled from band files."""
    ingest = ingest or {}
    layers = ingest.get("layers", {})
    scaling = {name: info["scaling"] for name, info in layers.items() if "scaling" in info}
    if not scaling:
        return None
    return {
        "mode": ingest.get("reflectance"),
        "processing_baseline": ingest.get("processing_baseline"),
        "baseline_from": ingest.get("baseline_from"),
        "scaling": scaling,
    }
