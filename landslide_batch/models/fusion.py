"""Fold BatchNorm into the convolution that feeds it, for inference.

An eval-mode ``BatchNorm2d`` right after a ``Conv2d`` is an affine map per channel, so it can
be folded into the convolution's weights and bias: one pass over the data instead of two.
Which BatchNorm follows which convolution is read from one forward pass with per-module hooks
(the output tensor of a convolution is the very input tensor of the BatchNorm). Hooks live on
this model's modules only: unlike ``torch.fx`` tracing, nothing process-wide is patched, so
other models may run in other threads meanwhile.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import nn

log = logging.getLogger(__name__)


def conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str]]:
    """Names of (Conv2d, BatchNorm2d) pairs where the BatchNorm's input is the convolution's
    output, each module used once in the forward pass of ``sample``."""
    # id of a conv output -> (conv name, the tensor): holding the tensor keeps its id from being
    # reused by a later tensor, which would pair a BatchNorm with a convolution that never fed it.
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def on_conv(name):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            produced[id(output)] = (name, output)

        return hook

    def on_bn(name):
        def hook(_module, inputs, _output):
            calls[name] = calls.get(name, 0) + 1
            source = produced.get(id(inputs[0]))
            if source is not None:
                pairs.append((source[0], name))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(on_conv(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_hook(on_bn(name)))
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    # A module called twice (weight sharing) or a conv feeding two BatchNorms cannot be folded.
    feeds = Counter(c for c, _ in pairs)
    return [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1 and feeds[c] == 1]


def fold_batchnorm(model: nn.Module, sample: torch.Tensor) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into it, in place
    (the BatchNorm becomes ``nn.Identity``). -> number of folded pairs."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (running statistics)")
    modules = dict(model.named_modules())
    folded = 0
    for conv_name, bn_name in conv_bn_pairs(model, sample):
        conv, bn = modules[conv_name], modules[bn_name]
        if bn.running_mean is None or bn.num_features != conv.out_channels:
            continue  # batch statistics at inference, or not a per-channel map of this conv
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.affine:
                scale = scale * bn.weight
            shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias = nn.Parameter(bias * scale + shift)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, nn.Identity())
        folded += 1
    log.debug("folded %d BatchNorm layer(s) of %s into their convolutions", folded, type(model).__name__)
    return folded
