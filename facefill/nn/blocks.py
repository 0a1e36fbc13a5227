"""Building blocks: dense blocks (Huang et al.), DCGAN-style discriminators, channel-wise FC."""
from __future__ import annotations

import itertools

import torch
import torch.nn.utils.fusion
from torch import nn


def conv_bn_act(in_ch, out_ch, kernel=3, stride=1, padding=None, act="relu", norm=True, transpose=False):
    """Conv (or transposed conv) -> BatchNorm -> activation."""
    padding = (kernel - 1) // 2 if padding is None else padding
    conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
    layers = [conv_cls(in_ch, out_ch, kernel, stride, padding, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(activation(act))
    return nn.Sequential(*layers)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """In place, for inference: every BatchNorm2d that directly follows a Conv2d in a Sequential is
    folded into that convolution (its running statistics and affine become the conv's weight and
    bias) and replaced by an Identity. The output is unchanged up to float rounding."""
    for child in module.children():
        if isinstance(child, nn.Sequential):
            for index in range(len(child) - 1):
                conv, norm = child[index], child[index + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                    child[index] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), norm.eval())
                    child[index + 1] = nn.Identity()
        fold_batch_norms(child)
    return module


@torch.no_grad()
def recalibrate_batch_norms(modules, forward, batches) -> int:
    """Re-estimate the running statistics of every BatchNorm in ``modules`` as the plain average
    over ``batches`` ("precise BN"), each batch passed to ``forward``; the other layers stay as
    they are. Averaged (EMA) weights need this: the statistics an EMA copies from the live
    networks belong to the live weights, not to the average. Returns how many layers it set."""
    norms = [layer for module in modules for layer in module.modules()
             if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats]
    batches = iter(batches)
    first = next(batches, None)
    if not norms or first is None:
        return 0
    saved = [(layer, layer.momentum, layer.training) for layer in norms]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
        layer.train()
    for batch in itertools.chain([first], batches):
        forward(batch)
    for layer, momentum, training in saved:
        layer.momentum = momentum
        layer.train(training)
    return len(norms)


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "lrelu": nn.LeakyReLU(0.2, inplace=True),
            "elu": nn.ELU(inplace=True), "none": nn.Identity()}[name]


class DenseLayer(nn.Sequential):
    """BN-ReLU-Conv3x3 producing ``growth`` new channels."""

    def __init__(self, in_ch: int, growth: int):
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True),
                         nn.Conv2d(in_ch, growth, 3, padding=1, bias=False))


class DenseBlock(nn.Module):
    """Each layer's input is the concatenation of the block input and every earlier layer's output."""

    def __init__(self, in_ch: int, layers: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_ch + i * growth, growth) for i in range(layers))
        self.out_channels = in_ch + layers * growth

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class PlainBlock(nn.Sequential):
    """The no-dense ablation: the same depth of BN-ReLU-Conv layers without concatenation."""

    def __init__(self, in_ch: int, layers: int, growth: int):
        out_ch = in_ch + layers * growth
        modules, ch = [], in_ch
        for _ in range(layers):
            modules += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True), nn.Conv2d(ch, out_ch, 3, padding=1, bias=False)]
            ch = out_ch
        super().__init__(*modules)
        self.out_channels = out_ch


class DCGANDiscriminator(nn.Module):
    """``depth`` stride-2 4x4 convs with BatchNorm (not on the first) and LeakyReLU, then one FC output."""

    def __init__(self, size: int, in_ch: int = 3, base: int = 64, depth: int = 5, max_ch: int = 512):
        super().__init__()
        layers, ch = [], in_ch
        for i in range(depth):
            out_ch = min(base * 2 ** i, max_ch)
            layers.append(nn.Conv2d(ch, out_ch, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch = out_ch
        self.features = nn.Sequential(*layers)
        side = max(size // 2 ** depth, 1)
        self.fc = nn.Linear(ch * side * side, 1)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class ChannelwiseFC(nn.Module):
    """Context encoder's bottleneck: a fully connected layer per channel over spatial positions,
    then a 1x1 conv to mix channels (Pathak et al. 2016)."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        positions = side * side
        self.weight = nn.Parameter(torch.randn(channels, positions, positions) / positions ** 0.5)
        self.bias = nn.Parameter(torch.zeros(channels, positions))
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        batch, channels, height, width = x.shape
        flat = x.flatten(2)  # B x C x P
        mixed = torch.einsum("bcp,cpq->bcq", flat, self.weight) + self.bias
        return self.mix(mixed.view(batch, channels, height, width))
