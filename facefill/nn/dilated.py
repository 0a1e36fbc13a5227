"""GLCIC's networks (Iizuka et al., "Globally and Locally Consistent Image Completion", 2017):
the dilated completion network and the global + local context discriminator."""
from __future__ import annotations

import math

import torch
from torch import nn

from facefill.nn.blocks import conv_bn_act

DILATIONS = (2, 4, 8, 16)


def _dilated(channels: int, rate: int) -> nn.Sequential:
    """3x3 conv with dilation ``rate`` (padding keeps the side), BN, ReLU."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class DilatedCompletionNet(nn.Module):
    """Table 1 of the paper: 5x5 conv, two stride-2 downsamplings (1/4 resolution), dilated 3x3
    convs with rates 2, 4, 8, 16, two transposed-conv upsamplings, tanh output at full resolution.
    ``base`` = 64 gives the paper's widths (64, 128, 256); BatchNorm + ReLU after every conv."""

    def __init__(self, in_ch: int = 4, base: int = 64, out_ch: int = 3):
        super().__init__()
        c1, c2, c3 = base, base * 2, base * 4
        self.encoder = nn.Sequential(
            conv_bn_act(in_ch, c1, 5),
            conv_bn_act(c1, c2, 3, 2), conv_bn_act(c2, c2, 3),
            conv_bn_act(c2, c3, 3, 2), conv_bn_act(c3, c3, 3), conv_bn_act(c3, c3, 3))
        self.middle = nn.Sequential(*[_dilated(c3, rate) for rate in DILATIONS])
        self.decoder = nn.Sequential(
            conv_bn_act(c3, c3, 3), conv_bn_act(c3, c3, 3),
            conv_bn_act(c3, c2, 4, 2, 1, transpose=True), conv_bn_act(c2, c2, 3),
            conv_bn_act(c2, c1, 4, 2, 1, transpose=True), conv_bn_act(c1, max(c1 // 2, 1), 3),
            nn.Conv2d(max(c1 // 2, 1), out_ch, 3, padding=1), nn.Tanh())

    def forward(self, x):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"the completion network needs sides divisible by 4, got {tuple(x.shape[-2:])}")
        return self.decoder(self.middle(self.encoder(x)))


def hole_crop_boxes(mask: torch.Tensor, side: int) -> torch.Tensor:
    """Per image, the (top, left) of a ``side`` x ``side`` window centred on the bounding box of
    the hole (mask Bx1xHxW, 1 = hole), shifted to lie inside the image; an empty mask gives the
    centred window. Returns a Bx2 long tensor."""
    height, width = mask.shape[-2:]
    hole = mask[:, 0] > 0.5
    boxes = []
    for extent, axis_any in ((height, hole.any(2)), (width, hole.any(1))):
        index = torch.arange(extent, device=mask.device)
        present = axis_any.any(1)
        first = torch.where(axis_any, index, extent).amin(1)
        last = torch.where(axis_any, index, -1).amax(1)
        centre = torch.where(present, (first + last + 1).float() / 2, torch.full_like(first, extent) / 2.0)
        start = torch.round(centre - side / 2).long().clamp(0, max(extent - side, 0))
        boxes.append(start)
    return torch.stack(boxes, 1)


def local_crop(images: torch.Tensor, mask: torch.Tensor, side: int) -> torch.Tensor:
    """The ``side`` x ``side`` patch of each image around its hole (see :func:`hole_crop_boxes`),
    gathered on the device: the boxes never travel to the host (no synchronisation)."""
    height, width = images.shape[-2:]
    if side > min(height, width):
        raise ValueError(f"a local crop of {side} px does not fit in {height}x{width} images")
    boxes = hole_crop_boxes(mask, side)
    offsets = torch.arange(side, device=images.device)
    rows = (boxes[:, 0, None] + offsets).view(-1, 1, side, 1)
    cols = (boxes[:, 1, None] + offsets).view(-1, 1, 1, side)
    batch = torch.arange(len(images), device=images.device).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
    return images[batch, channels, rows, cols]                            # B, C, side, side


class _ContextBranch(nn.Sequential):
    """5x5 stride-2 convs (BN + ReLU) down to 4x4 (or 1x1 for tiny inputs), then FC to ``features``."""

    def __init__(self, size: int, base: int, features: int, in_ch: int = 3, max_ch: int = 512):
        depth = max(1, int(math.log2(max(size, 1))) - 2)
        layers, ch = [], in_ch
        for i in range(depth):
            out_ch = min(base * 2 ** i, max_ch)
            layers.append(conv_bn_act(ch, out_ch, 5, 2, 2))
            ch = out_ch
        side = max(1, math.ceil(size / 2 ** depth))
        super().__init__(*layers, nn.Flatten(), nn.Linear(ch * side * side, features), nn.ReLU(inplace=True))


class GLDiscriminator(nn.Module):
    """Global branch on the whole image, local branch on a ``size // 2`` crop centred on the hole;
    their 1024-d features concatenated into one real/fake logit (Iizuka et al., Table 2)."""

    def __init__(self, size: int, base: int = 64, features: int = 1024):
        super().__init__()
        self.size = size
        self.local_side = max(size // 2, 1)
        self.global_branch = _ContextBranch(size, base, features)
        self.local_branch = _ContextBranch(self.local_side, base, features)
        self.head = nn.Linear(2 * features, 1)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        local = local_crop(images, mask, self.local_side)
        return self.head(torch.cat([self.global_branch(images), self.local_branch(local)], 1))
