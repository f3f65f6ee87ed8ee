"""A scale bar drawn on the run map: a line of a round length on the ground (1, 2 or 5 x 10^k m)
with its label, placed in the map's lower left. Drawn in geographic coordinates, it zooms with
the map and stays true (deck.gl has no scale control of its own in the version Streamlit ships)."""

from __future__ import annotations

import math

import pydeck as pdk

#: Metres per degree of longitude at the equator (WGS 84 semi-major axis x pi / 180).
EQUATOR_M_PER_DEG = 6_378_137 * math.pi / 180
COLOUR = [0, 0, 0, 255]


def round_length(metres: float) -> float:
    """The largest 1, 2 or 5 x 10^k metres not above ``metres`` (> 0)."""
    power = 10 ** math.floor(math.log10(metres))
    return max(step * power for step in (1, 2, 5) if step * power <= metres)


def label(metres: float) -> str:
    return f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"


def scale_bar(bounds: tuple[float, float, float, float], share: float = 0.25) -> tuple[list[pdk.Layer], float]:
    """-> (layers, its length in metres): a bar about ``share`` of the width of ``bounds``
    (west, south, east, north in degrees), 5 % in from their lower left corner."""
    west, south, east, north = bounds
    lat = south + 0.05 * (north - south)
    m_per_deg = EQUATOR_M_PER_DEG * math.cos(math.radians(lat))
    length = round_length(share * (east - west) * m_per_deg)
    x0 = west + 0.05 * (east - west)
    x1 = x0 + length / m_per_deg
    tick = 0.015 * (north - south)
    paths = [[[x0, lat], [x1, lat]], [[x0, lat - tick], [x0, lat + tick]], [[x1, lat - tick], [x1, lat + tick]]]
    layers = [
        pdk.Layer(
            "PathLayer",
            id="scale-bar",
            data=[{"path": p} for p in paths],
            get_path="path",
            get_color=COLOUR,
            width_min_pixels=3,
        ),
        pdk.Layer(
            "TextLayer",
            id="scale-label",
            data=[{"position": [(x0 + x1) / 2, lat + tick], "text": label(length)}],
            get_position="position",
            get_text="text",
            get_color=COLOUR,
            get_size=14,
            get_alignment_baseline="'bottom'",
            background=True,  # legible over any colour of the map
            get_background_color=[255, 255, 255, 200],
        ),
    ]
    return layers, length
