"""Networks of the reference study that are not a bare smp model.

The study (github.com/HarshShinde0/Deepslide) wraps its MiT-B1 U-Net behind a 1x1
convolution that maps the 14 bands onto the 3 channels MiT encoders accept, and its
SegFormer is Hugging Face's ``SegformerForSemanticSegmentation`` (B2) with a 14-channel
patch embedding. Attribute names follow the study's modules, so their state dicts match
the study's checkpoints key for key once the Lightning module's ``model.`` is stripped.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError

#: SegFormer-B2 hyper-parameters (nvidia/segformer-b2-finetuned-ade-512-512, the study's base).
SEGFORMER_B2 = {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768}


class ConvStemUnet(nn.Module):
    """``conv`` (1x1, in_channels -> 3) then an smp U-Net on 3 channels: the study's MiT-B1 model."""

    def __init__(self, encoder: str, in_channels: int, classes: int = 1):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.conv = nn.Conv2d(in_channels, 3, kernel_size=1)
        self.model = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.conv(x))


class SegformerB2(nn.Module):
    """Hugging Face SegFormer-B2 with ``in_channels`` inputs, built from its config (nothing is
    downloaded); logits are upsampled bilinearly from 1/4 to the input size, as the study's
    training step does."""

    def __init__(self, in_channels: int, classes: int = 1):
        super().__init__()
        try:
            from transformers import SegformerConfig, SegformerForSemanticSegmentation
        except ImportError:
            raise ModelError(
                "the study's SegFormer needs the 'transformers' package, which is not installed "
                "(pip install transformers)"
            ) from None
        config = SegformerConfig(num_channels=in_channels, num_labels=classes, **SEGFORMER_B2)
        self.model = SegformerForSemanticSegmentation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values=x).logits
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
