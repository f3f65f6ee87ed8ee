"""The ensemble predictor: a window of raw bands in, blended probability and spread out.

One implementation serves the pipeline (one instance per actor / process), the web app
and evaluation. The whole window goes to the model's device once; tiles are cut from it
as views, batched, and their predictions blended there, so only the final maps travel back.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..bands import derive_features
from ..config import EnsembleConfig
from ..models.ensemble import Ensemble, resolve_device
from .blending import blend_window


class EnsemblePredictor:
    def __init__(self, ensemble: EnsembleConfig, *, tile: int = 128, stride: int = 64,
                 blend: str = "gaussian", batch_size: int = 16, device: str = "auto",
                 threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(resolve_device(device))
        self.ensemble = Ensemble(ensemble, str(self.device))
        self.tile, self.stride, self.batch_size = tile, stride, batch_size
        self.weights = torch.from_numpy(blend_window(blend, tile)).to(self.device)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                         if self.device.type == "cuda" else nullcontext())
        self.forward_passes = 0  # tiles pushed through each member, summed over calls

    @property
    def threshold(self) -> float:
        return self.ensemble.threshold

    @torch.inference_mode()
    def predict_window(self, bands: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``bands (14, H, W)`` raw values (NaN where invalid), ``valid (H, W)`` ->
        (probability, spread), float32 ``(H, W)``; NaN where no tile ran (no valid pixel near).

        ``H`` and ``W`` must be ``tile + k * stride``: the window is covered exactly by tiles.
        """
        t, s = self.tile, self.stride
        h, w = valid.shape
        if (h - t) % s or (w - t) % s or h < t or w < t:
            raise ValueError(f"window {h}x{w} is not covered exactly by {t}px tiles at stride {s}")
        x = torch.from_numpy(np.ascontiguousarray(bands, dtype=np.float32)).to(self.device, non_blocking=True)
        v = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool)).to(self.device)
        # Tiles with no valid pixel are skipped: they could only colour invalid pixels.
        run = v.unfold(0, t, s).unfold(1, t, s).flatten(-2).any(-1)
        iy, ix = torch.nonzero(run, as_tuple=True)
        den = torch.zeros((h, w), dtype=torch.float32, device=self.device)
        for y, xx in zip((iy * s).tolist(), (ix * s).tolist()):
            den[y:y + t, xx:xx + t] += self.weights
        maps = []
        for member in self.ensemble.members:
            feats = ((derive_features(x, member.card.features) - member.mean) / member.std).nan_to_num_(0.0)
            views = feats.unfold(1, t, s).unfold(2, t, s)  # (F, ny, nx, T, T), no copy
            num = torch.zeros((h, w), dtype=torch.float32, device=self.device)
            for b in range(0, len(iy), self.batch_size):
                by, bx = iy[b:b + self.batch_size], ix[b:b + self.batch_size]
                batch = views[:, by, bx].permute(1, 0, 2, 3).contiguous()
                with self.autocast:
                    prob = torch.sigmoid(member.model(batch)[:, 0].float())
                for p, y, xx in zip(prob * self.weights, (by * s).tolist(), (bx * s).tolist()):
                    num[y:y + t, xx:xx + t] += p
            self.forward_passes += len(iy)
            maps.append(num / den)
        weights = torch.tensor([m.weight for m in self.ensemble.members], device=self.device)[:, None, None]
        stack = torch.stack(maps)
        mean = (weights * stack).sum(0) / weights.sum()
        spread = ((weights * (stack - mean) ** 2).sum(0) / weights.sum()).sqrt()
        return mean.cpu().numpy(), spread.cpu().numpy()
