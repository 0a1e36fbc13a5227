"""A fully convolutional inpainting U-Net with a fast-Fourier-convolution bottleneck.

stem (5x5) -> ``levels`` stride-2 3x3 convs -> ``ffc_blocks`` FFC residual blocks (LaMa's global
context: every bottleneck pixel sees the whole image) -> per level: 1x1 conv + bilinear x2, the
encoder features of that level (U-Net skip), a fuse 1x1 conv, a dense block and a 1x1
transition -> 3x3 conv to RGB, tanh.

Upsampling is bilinear (no transposed convolutions: no checkerboard texture). Every conv pads
by reflection, so the network fills any height and width divisible by ``2 ** levels``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facefill.nn.blocks import DenseBlock, PlainBlock
from facefill.nn.ffc import FFCResBlock


def conv_norm_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    # a 1x1 conv pads nothing, but with padding_mode="reflect" torch still copies its input through F.pad
    padding_mode = "reflect" if kernel > 1 else "zeros"
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, padding_mode=padding_mode, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class UpLevel(nn.Module):
    """One decoder level: 1x1 conv and bilinear x2, the skip concatenated, fused by a 1x1 conv,
    then a dense (or plain) block of ``layers`` 3x3 convs and a 1x1 transition to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int, layers: int, growth: int, dense: bool):
        super().__init__()
        self.reduce = nn.Conv2d(in_ch, out_ch, 1)
        self.fuse = conv_norm_relu(out_ch + skip_ch, out_ch, 1)
        block = (DenseBlock if dense else PlainBlock)(out_ch, layers, growth)
        self.block = nn.Sequential(block, conv_norm_relu(block.out_channels, out_ch, 1)) if layers else nn.Identity()

    def forward(self, x, skip=None):
        x = F.interpolate(self.reduce(x), scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.block(self.fuse(x))


class FourierUNet(nn.Module):
    """(masked image in [-1, 1], mask) -> RGB in [-1, 1]. Switches: ``global_ratio`` = 0 makes the
    bottleneck plain residual blocks (no Fourier path), ``skips`` the U-Net connections,
    ``dense`` the decoder's dense connectivity (False: plain conv stacks of the same depth).
    ``growth`` is the dense blocks' growth rate at full resolution; it scales with each level's width."""

    def __init__(self, in_ch: int = 4, out_ch: int = 3, base: int = 32, max_ch: int = 256, levels: int = 3,
                 ffc_blocks: int = 4, global_ratio: float = 0.75, skips: bool = True, dense: bool = True,
                 dense_layers: int = 2, growth: int = 8):
        super().__init__()
        self.levels, self.skips = levels, skips
        widths = [min(base * 2 ** i, max_ch) for i in range(levels + 1)]
        self.stem = conv_norm_relu(in_ch, widths[0], 5)
        self.down = nn.ModuleList(conv_norm_relu(widths[i], widths[i + 1], 3, 2) for i in range(levels))
        self.bottleneck = nn.Sequential(*[FFCResBlock(widths[-1], widths[-1], global_ratio) for _ in range(ffc_blocks)])
        self.up = nn.ModuleList(
            UpLevel(widths[i + 1], widths[i], widths[i] if skips else 0, dense_layers,
                    growth * widths[i] // widths[0], dense)
            for i in reversed(range(levels)))
        self.head = nn.Sequential(nn.Conv2d(widths[0], out_ch, 3, padding=1, padding_mode="reflect"), nn.Tanh())

    @property
    def multiple(self) -> int:
        return 2 ** self.levels

    def forward(self, x):
        if x.shape[-1] % self.multiple or x.shape[-2] % self.multiple:
            raise ValueError(f"sides must be divisible by {self.multiple}, got {tuple(x.shape[-2:])}")
        x = self.stem(x)
        features = [x]
        for down in self.down:
            x = down(x)
            features.append(x)
        x = self.bottleneck(x)
        for up, skip in zip(self.up, reversed(features[:-1])):
            x = up(x, skip if self.skips else None)
        return self.head(x)


class CoarseToFine(nn.Module):
    """One or two FourierUNets: the second (refinement) stage sees the first stage's output
    composited with the known pixels, plus the mask (the two-stage GAN's cascade).
    Input: cat(masked image in [-1, 1], mask)."""

    def __init__(self, coarse: FourierUNet, refine: FourierUNet | None = None):
        super().__init__()
        self.coarse = coarse
        self.refine = refine

    @property
    def multiple(self) -> int:
        return max(stage.multiple for stage in self.stages())

    def stages(self) -> list[FourierUNet]:
        return [self.coarse] + ([self.refine] if self.refine is not None else [])

    def forward_stages(self, x) -> list[torch.Tensor]:
        """Every stage's raw output, first to last."""
        known, mask = x[:, :3], x[:, 3:]
        outputs = [self.coarse(x)]
        if self.refine is not None:
            composite = mask * outputs[0] + (1 - mask) * known
            outputs.append(self.refine(torch.cat([composite, mask], 1)))
        return outputs

    def forward(self, x):
        return self.forward_stages(x)[-1]


def pad_to_multiple(tensor: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right so both sides are divisible by ``multiple``."""
    height, width = tensor.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return tensor
    return F.pad(tensor, (0, pad_w, 0, pad_h), mode="replicate")
