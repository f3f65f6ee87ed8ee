"""Segmentation losses on logits ``(N, 1, H, W)`` against 0/1 masks of the same shape.

Landslide pixels are rare (a few percent of L4S), which is why Dice, weighted BCE + Dice
and focal loss are offered besides plain BCE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import TrainConfig

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)


def dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the whole batch: patches without landslides do not each demand a perfect 0."""
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + smooth) / (p.sum() + target.sum() + smooth)


def focal(logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE scaled by ``(1 - p_t) ** gamma`` so easy pixels count little."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def make_loss(cfg: TrainConfig) -> Loss:
    if cfg.loss == "bce":
        return lambda lg, t: bce(lg, t, cfg.pos_weight)
    if cfg.loss == "dice":
        return dice
    if cfg.loss == "focal":
        return lambda lg, t: focal(lg, t, cfg.focal_alpha, cfg.focal_gamma)
    w = cfg.bce_weight
    return lambda lg, t: w * bce(lg, t, cfg.pos_weight) + (1 - w) * dice(lg, t)
