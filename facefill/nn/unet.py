"""The encoder-decoder of the dense-GAN paper (Meng et al.): dense blocks at every level,
U-Net skips between matching resolutions; switches for the paper's ablations."""
from __future__ import annotations

import torch
from torch import nn

from facefill.nn.blocks import DenseBlock, PlainBlock, conv_bn_act


class Transition(nn.Sequential):
    """Encoder downsampling after a dense block: BN-ReLU-Conv1x1 then 2x2 average pooling."""

    def __init__(self, in_ch, out_ch):
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True),
                         nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2))


def check_dense_unet_size(size: int, method: str, levels: int = 4) -> None:
    """The stem and ``levels`` transitions halve the side ``levels + 1`` times: refuse other sizes
    with one line instead of a pooling error deep in the network."""
    multiple = 2 ** (levels + 1)
    if not isinstance(size, int) or size < multiple or size % multiple:
        raise ValueError(f"{method} needs a size divisible by {multiple} (its U-Net halves it "
                         f"{levels + 1} times), got {size}")


class DenseUNet(nn.Module):
    """stem (4x4 stride-2 conv) -> 4 x [block -> transition] -> 4 x [block -> transposed conv]
    -> transposed conv to RGB. ``dense=False`` swaps dense blocks for plain conv stacks,
    ``skips=False`` drops the U-Net connections (the plain autoencoder)."""

    def __init__(self, in_ch=4, out_ch=3, base=32, growth=12, layers=4, levels=4,
                 max_ch=128, dense=True, skips=True):
        super().__init__()
        block = DenseBlock if dense else PlainBlock
        self.skips = skips
        self.stem = nn.Conv2d(in_ch, base, 4, 2, 1)
        widths = [base] + [min(base * 2 ** (i + 1), max_ch) for i in range(levels)]
        self.down = nn.ModuleList()
        for i in range(levels):
            encoder_block = block(widths[i], layers, growth)
            self.down.append(nn.Sequential(encoder_block, Transition(encoder_block.out_channels, widths[i + 1])))
        self.up = nn.ModuleList()
        ch = widths[-1]
        for i in reversed(range(levels)):
            in_ch_level = ch + (widths[i + 1] if skips and i < levels - 1 else 0)
            decoder_block = block(in_ch_level, layers, growth)
            self.up.append(nn.Sequential(
                decoder_block,
                conv_bn_act(decoder_block.out_channels, widths[i], 4, 2, 1, transpose=True)))
            ch = widths[i]
        self.head = nn.Sequential(
            nn.ConvTranspose2d(ch + (base if skips else 0), out_ch, 4, 2, 1), nn.Tanh())

    def forward(self, x):
        x = self.stem(x)
        features = [x]
        for down in self.down:
            x = down(x)
            features.append(x)
        for i, up in enumerate(self.up):
            if self.skips and i > 0:
                x = torch.cat([x, features[-1 - i]], 1)
            x = up(x)
        if self.skips:
            x = torch.cat([x, features[0]], 1)
        return self.head(x)
