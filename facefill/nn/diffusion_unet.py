"""A U-Net in the style of guided-diffusion (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on
Image Synthesis") as the face-inpainting DDPM uses it ("Face inpainting model based on denoising
diffusion probability model"): residual blocks of GroupNorm + SiLU + 3x3 conv, multi-head
self-attention only at the low resolutions, and fast Fourier convolution residual blocks in place
of the first residual blocks after the stem.

Noise-level conditioning. The network is told alpha-bar_t (a B tensor), not the integer timestep,
so a DDIM schedule over any subset of timesteps needs nothing else. Two encodings:

* ``"alphabar-linear"`` (the paper): each block has a linear layer from alpha-bar_t to its channel
  count, and the result is added to the block's output.
* ``"sinusoidal"``: a sinusoidal embedding of 1000 * alpha-bar_t (as Palette and WaveGrad embed the
  continuous noise level) through a two-layer MLP shared by all blocks; each block projects it to
  its channel count with its own linear layer and adds it to its output, as above.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facefill.nn.ffc import FFCResBlock, group_count

TIME_EMBEDDINGS = ("alphabar-linear", "sinusoidal")

# guided-diffusion's create_model: channel multipliers chosen by image size.
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
                        64: (1, 2, 3, 4), 32: (1, 2, 2), 16: (1, 2)}


def default_channel_mult(size: int) -> tuple:
    if size not in DEFAULT_CHANNEL_MULT:
        raise ValueError(f"no default channel_mult for size {size}; pass channel_mult "
                         f"(defaults exist for {', '.join(map(str, sorted(DEFAULT_CHANNEL_MULT)))})")
    return DEFAULT_CHANNEL_MULT[size]


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """guided-diffusion's zero_module: the residual branch starts as the identity."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3x3, GroupNorm-SiLU-dropout-conv3x3 (zero-initialised), plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            group_norm(out_ch), nn.SiLU(), nn.Dropout(dropout), zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        return self.skip(x) + self.body(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions, with a residual (zero-initialised output)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} attention heads")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x):
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x).flatten(2))                                   # B x 3C x N
        q, k, v = qkv.unflatten(1, (3, self.heads, -1)).transpose(-1, -2).unbind(1)  # B x heads x N x d
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(-1, -2).flatten(1, 2)).view(batch, channels, height, width)


class TimeEmbedding(nn.Module):
    """alpha-bar_t (B) -> the vector each block projects to its channels (B x ``dim``)."""

    def __init__(self, kind: str, width: int):
        super().__init__()
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {', '.join(TIME_EMBEDDINGS)}, got {kind!r}")
        self.kind = kind
        self.width = width
        if kind == "sinusoidal":
            self.dim = width * 4
            self.mlp = nn.Sequential(nn.Linear(width, self.dim), nn.SiLU(), nn.Linear(self.dim, self.dim), nn.SiLU())
        else:
            self.dim = 1

    def forward(self, alpha_bar):
        alpha_bar = alpha_bar.float().reshape(-1, 1)
        if self.kind == "alphabar-linear":
            return alpha_bar
        half = self.width // 2
        frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=alpha_bar.device) / half)
        angles = 1000 * alpha_bar * frequencies
        return self.mlp(torch.cat([angles.cos(), angles.sin()], 1))


class Conditioned(nn.Module):
    """A block, the noise level's projection added to its output (the paper), then optional attention."""

    def __init__(self, block: nn.Module, out_ch: int, embed_dim: int, attention: nn.Module | None = None):
        super().__init__()
        self.block = block
        self.embed = nn.Linear(embed_dim, out_ch)
        self.attention = attention or nn.Identity()

    def forward(self, x, embedding):
        return self.attention(self.block(x) + self.embed(embedding)[..., None, None].to(x.dtype))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, embedding=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, embedding=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DiffusionUNet(nn.Module):
    """``forward(x, alpha_bar)``: x is B x in_ch x H x W (H, W divisible by 2^(levels-1)),
    alpha_bar a B tensor; returns B x out_ch x H x W (the predicted noise)."""

    def __init__(self, in_ch: int = 7, out_ch: int = 3, size: int = 64, base_channels: int = 64,
                 channel_mult: tuple = (), num_res_blocks: int = 2, attention_resolutions: tuple = (16, 8),
                 num_heads: int = 4, dropout: float = 0.0, ffc_blocks: int = 0, ffc_global_ratio: float = 0.5,
                 ffc_norm: str = "batch", time_embedding: str = "alphabar-linear"):
        super().__init__()
        channel_mult = tuple(channel_mult) or default_channel_mult(size)
        if size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"size {size} is not divisible by 2^{len(channel_mult) - 1} ({len(channel_mult)} levels)")
        self.time = TimeEmbedding(time_embedding, base_channels)
        self.levels = len(channel_mult)
        embed = self.time.dim

        def unit(block, out, resolution):
            attention = SelfAttention(out, num_heads) if resolution in attention_resolutions else None
            return Conditioned(block, out, embed, attention)

        ch = int(channel_mult[0] * base_channels)
        self.stem = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.encoder, skips, resolution, ffc_left = nn.ModuleList(), [ch], size, ffc_blocks
        for level, mult in enumerate(channel_mult):
            out = int(mult * base_channels)
            for _ in range(num_res_blocks):
                if ffc_left > 0:
                    block, ffc_left = FFCResBlock(ch, out, ffc_global_ratio, norm=ffc_norm), ffc_left - 1
                else:
                    block = ResBlock(ch, out, dropout)
                self.encoder.append(unit(block, out, resolution))
                ch = out
                skips.append(ch)
            if level < self.levels - 1:
                self.encoder.append(Downsample(ch))
                skips.append(ch)
                resolution //= 2
        self.middle = nn.ModuleList([Conditioned(ResBlock(ch, ch, dropout), ch, embed, SelfAttention(ch, num_heads)),
                                     Conditioned(ResBlock(ch, ch, dropout), ch, embed)])
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            out = int(mult * base_channels)
            for _ in range(num_res_blocks + 1):
                self.decoder.append(unit(ResBlock(ch + skips.pop(), out, dropout), out, resolution))
                ch = out
            if level > 0:
                self.decoder.append(Upsample(ch))
                resolution *= 2
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, out_ch, 3, padding=1)))

    def forward(self, x, alpha_bar):
        embedding = self.time(alpha_bar.expand(x.shape[0]) if alpha_bar.dim() == 0 else alpha_bar)
        x = self.stem(x)
        features = [x]
        for layer in self.encoder:
            x = layer(x, embedding)
            features.append(x)
        for layer in self.middle:
            x = layer(x, embedding)
        for layer in self.decoder:
            if isinstance(layer, Upsample):
                x = layer(x)
            else:
                x = layer(torch.cat([x, features.pop()], 1), embedding)
        return self.head(x)
