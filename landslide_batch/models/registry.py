"""One registry mapping model names to segmentation_models_pytorch constructors.

Names follow the reference study's zoo. Each entry knows its smp architecture, encoder and
default input features; ``build_model`` makes an untrained network (``encoder_weights=None``:
nothing is ever downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bands import resolve_features
from ..errors import ConfigError
from ._torchvision_compat import ensure_torchvision


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # smp class name: Unet, DeepLabV3Plus, ...
    encoder: str | None  # smp encoder name; None for the plain U-Net
    features: str = "l4s14"  # feature-set name (landslide_batch.bands.FEATURE_SETS)


_UNET_ENCODERS = (
    "resnet34",
    "vgg16",
    "efficientnet-b0",
    "resnext50_32x4d",
    "se_resnet50",
    "densenet121",
    "se_resnext50_32x4d",
    "inceptionv4",
    "inceptionresnetv2",
    "mobilenet_v2",
    "mit_b1",
)

MODEL_ZOO: dict[str, ModelSpec] = {
    **{f"unet_{enc.replace('-', '_')}": ModelSpec("Unet", enc) for enc in _UNET_ENCODERS},
    "deeplabv3plus_resnet50": ModelSpec("DeepLabV3Plus", "resnet50"),
    "unet_plain": ModelSpec("PlainUnet", None, "rgb_ndvi_slope_dem"),
}

ARCHS = ("Unet", "DeepLabV3Plus", "PlainUnet", "ConvStemUnet", "SegformerB2")


def spec_for(arch: str, encoder: str | None) -> ModelSpec:
    """The zoo entry for ``arch`` + ``encoder``, or an ad-hoc spec for another smp encoder."""
    canonical = _canonical_arch(arch)
    for spec in MODEL_ZOO.values():
        if spec.arch == canonical and spec.encoder == encoder:
            return spec
    return ModelSpec(canonical, encoder)


def _canonical_arch(arch: str) -> str:
    key = arch.replace("_", "").replace("-", "").lower()
    aliases = {
        "unet": "Unet",
        "deeplabv3plus": "DeepLabV3Plus",
        "deeplabv3+": "DeepLabV3Plus",
        "plainunet": "PlainUnet",
        "convstemunet": "ConvStemUnet",
        "segformerb2": "SegformerB2",
    }
    if key not in aliases:
        raise ConfigError(f"unknown architecture {arch!r}; expected one of {list(ARCHS)}")
    return aliases[key]


def build_model(arch: str, encoder: str | None, in_channels: int, classes: int = 1):
    """An untrained torch module mapping ``(N, in_channels, H, W)`` to ``(N, classes, H, W)`` logits."""
    arch = _canonical_arch(arch)
    if arch == "PlainUnet":
        from .plain_unet import PlainUNet

        return PlainUNet(in_channels, classes)
    if arch == "SegformerB2":  # the study's networks (models/study_nets.py)
        from .study_nets import SegformerB2

        return SegformerB2(in_channels, classes)
    ensure_torchvision()
    import segmentation_models_pytorch as smp

    if encoder is None or encoder not in smp.encoders.get_encoder_names():
        raise ConfigError(f"unknown smp encoder {encoder!r} for {arch}")
    if arch == "ConvStemUnet":
        from .study_nets import ConvStemUnet

        return ConvStemUnet(encoder, in_channels, classes)
    cls = getattr(smp, arch)
    return cls(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)


def build_zoo_model(name: str):
    """Build a zoo model by name with its default feature set; returns (module, spec, features)."""
    if name not in MODEL_ZOO:
        raise ConfigError(f"unknown model {name!r}; the zoo has {sorted(MODEL_ZOO)}")
    spec = MODEL_ZOO[name]
    features = resolve_features(spec.features)
    return build_model(spec.arch, spec.encoder, len(features)), spec, features
