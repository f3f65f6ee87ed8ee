"""Augmentation: the 8 symmetries of the square (flips and 90-degree rotations).

Landslides have no preferred orientation in a north-up patch beyond what slope and DEM
encode, and these transforms move every band (slope and DEM included) consistently,
so they add variety without inventing pixel values.
"""

from __future__ import annotations

import torch


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry ``k`` in 0..7 of the last two (square) axes: ``k % 4`` quarter turns, then a flip if ``k >= 4``."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def random_dihedral(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random symmetry for each sample's image ``x[i]`` and mask ``y[i]`` (batches ``(N, C, S, S)``)."""
    ks = torch.randint(0, 8, (x.shape[0],), generator=generator).tolist()
    return (torch.stack([dihedral(a, k) for a, k in zip(x, ks)]), torch.stack([dihedral(b, k) for b, k in zip(y, ks)]))
