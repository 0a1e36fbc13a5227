"""Multi-scale patch discriminator (pix2pixHD): the same PatchGAN at the image's resolution and at
successive halvings. Each output logit judges one patch, so the finest scale judges local texture
and the coarsest (whose patches cover most of a 128 px face) the global layout. Its intermediate
features serve the generator's feature-matching loss. No normalisation layers: R1 regularises it."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """``depth`` stride-2 4x4 convs (LeakyReLU), one stride-1 3x3 conv, then a 3x3 conv to one
    logit per patch (an image of side S gives S / 2**depth logits a side). Returns (logits Bx1xhxw, [features of every hidden layer])."""

    def __init__(self, in_ch: int = 3, base: int = 32, depth: int = 3, max_ch: int = 256):
        super().__init__()
        layers, ch = [], in_ch
        for i in range(depth + 1):
            out_ch = min(base * 2 ** i, max_ch)
            conv = nn.Conv2d(ch, out_ch, 4, 2, 1) if i < depth else nn.Conv2d(ch, out_ch, 3, 1, 1)
            layers.append(nn.Sequential(conv, nn.LeakyReLU(0.2, inplace=True)))
            ch = out_ch
        self.hidden = nn.ModuleList(layers)
        self.logits = nn.Conv2d(ch, 1, 3, 1, 1)

    def forward(self, x):
        features = []
        for layer in self.hidden:
            x = layer(x)
            features.append(x)
        return self.logits(x), features


class MultiScaleDiscriminator(nn.Module):
    """``scales`` PatchDiscriminators, the k-th on the image average-pooled k times.
    Returns ([logits per scale], [features of every scale's hidden layers, concatenated lists])."""

    def __init__(self, in_ch: int = 3, base: int = 32, depth: int = 3, scales: int = 2):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(in_ch, base, depth) for _ in range(scales))

    def forward(self, x):
        all_logits, all_features = [], []
        for index, discriminator in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, 2)
            logits, features = discriminator(x)
            all_logits.append(logits)
            all_features.extend(features)
        return all_logits, all_features
