"""Fast Fourier convolution (Chi, Jiang, Mu, "Fast Fourier Convolution", NeurIPS 2020), as used by
LaMa (Suvorov et al. 2022) and by the face-inpainting DDPM ("Face inpainting model based on
denoising diffusion probability model") in the shallow layers of its U-Net.

Channels are split into a local part (ordinary 3x3 convolutions) and a global part (a spectral
transform whose 1x1 convolution acts on the image's Fourier coefficients, so every output pixel
sees the whole image). Four paths l->l, l->g, g->l, g->g are summed into the local and global
outputs. Tensors travel as ``(local, global)`` pairs inside an FFC stack; the global channels are
the last ones when a pair is concatenated back into one tensor.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "group")


def group_count(channels: int, most: int = 32) -> int:
    """The largest power of two up to ``most`` that divides ``channels`` (GroupNorm's groups)."""
    groups = most
    while channels % groups:
        groups //= 2
    return groups


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


def act_layer(kind: str) -> nn.Module:
    return {"relu": nn.ReLU(inplace=True), "silu": nn.SiLU(), "none": nn.Identity()}[kind]


def split_channels(x: torch.Tensor, global_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    local = x.shape[1] - global_channels
    return x[:, :local], x[:, local:]


class FourierUnit(nn.Module):
    """Real 2-D FFT -> 1x1 conv (+norm+ReLU) on the real and imaginary parts stacked as channels
    -> inverse FFT. Runs in float32 outside autocast: cuFFT has no bfloat16 kernels."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(in_ch * 2, out_ch * 2, 1, bias=False)
        self.norm = norm_layer(norm, out_ch * 2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        batch, _, height, width = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfft2(x.float(), norm="ortho")                   # B x C x H x W/2+1
            stacked = torch.stack([spectrum.real, spectrum.imag], 2).flatten(1, 2)  # re/im per channel
            mixed = self.act(self.norm(self.conv(stacked)))
            real, imag = mixed.unflatten(1, (-1, 2)).unbind(2)
            return torch.fft.irfft2(torch.complex(real, imag), s=(height, width), norm="ortho")


class SpectralTransform(nn.Module):
    """LaMa's g->g path: 1x1 conv halving the channels (+norm+ReLU), a Fourier unit with a
    residual around it, and a 1x1 conv to the output channels."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch"):
        super().__init__()
        hidden = max(out_ch // 2, 1)
        self.reduce = nn.Sequential(nn.Conv2d(in_ch, hidden, 1, bias=False), norm_layer(norm, hidden),
                                    nn.ReLU(inplace=True))
        self.fourier = FourierUnit(hidden, hidden, norm)
        self.expand = nn.Conv2d(hidden, out_ch, 1, bias=False)

    def forward(self, x):
        x = self.reduce(x)
        return self.expand(x + self.fourier(x).to(x.dtype))


class FFC(nn.Module):
    """One fast Fourier convolution: ``(local, global) -> (local, global)``.

    ``ratio_gin``/``ratio_gout`` are the fractions of input/output channels in the global part; a
    path whose source or target has no channels is left out. A plain tensor as input is split by
    ``ratio_gin`` first."""

    def __init__(self, in_ch: int, out_ch: int, ratio_gin: float = 0.5, ratio_gout: float = 0.5,
                 kernel: int = 3, norm: str = "batch"):
        super().__init__()
        self.in_global = int(in_ch * ratio_gin)
        self.out_global = int(out_ch * ratio_gout)
        in_local, out_local = in_ch - self.in_global, out_ch - self.out_global
        padding = kernel // 2

        def conv(source, target):
            if source == 0 or target == 0:
                return None
            return nn.Conv2d(source, target, kernel, padding=padding, padding_mode="reflect", bias=False)

        self.local_to_local = conv(in_local, out_local)
        self.local_to_global = conv(in_local, self.out_global)
        self.global_to_local = conv(self.in_global, out_local)
        self.global_to_global = (SpectralTransform(self.in_global, self.out_global, norm)
                                 if self.in_global and self.out_global else None)
        self.out_local = out_local

    def forward(self, x):
        local, global_ = split_channels(x, self.in_global) if torch.is_tensor(x) else x
        out_local = _sum(self.local_to_local, local, self.global_to_local, global_)
        out_global = _sum(self.local_to_global, local, self.global_to_global, global_)
        return _or_empty(out_local, local, self.out_local), _or_empty(out_global, local, self.out_global)


def _sum(path_a, input_a, path_b, input_b):
    parts = [path(value) for path, value in ((path_a, input_a), (path_b, input_b)) if path is not None]
    return sum(parts[1:], parts[0]) if parts else None


def _or_empty(value, like, channels):
    if value is not None:
        return value
    return like.new_zeros(like.shape[0], channels, *like.shape[2:])


class FFCNormAct(nn.Module):
    """FFC followed by a norm and an activation on each of its two outputs (LaMa's FFC_BN_ACT)."""

    def __init__(self, in_ch: int, out_ch: int, ratio_gin: float = 0.5, ratio_gout: float = 0.5,
                 norm: str = "batch", act: str = "relu"):
        super().__init__()
        self.ffc = FFC(in_ch, out_ch, ratio_gin, ratio_gout, norm=norm)
        self.local_post = _post(self.ffc.out_local, norm, act)
        self.global_post = _post(self.ffc.out_global, norm, act)

    def forward(self, x):
        local, global_ = self.ffc(x)
        return self.local_post(local), self.global_post(global_)


def _post(channels: int, norm: str, act: str) -> nn.Module:
    if channels == 0:
        return nn.Identity()
    return nn.Sequential(norm_layer(norm, channels), act_layer(act))


class FFCResBlock(nn.Module):
    """LaMa's FFC residual block: two FFC-norm-act layers on the (local, global) split of a tensor
    plus an identity skip (a 1x1 conv when the channel count changes). Tensor in, tensor out."""

    def __init__(self, in_ch: int, out_ch: int, global_ratio: float = 0.5, norm: str = "batch",
                 act: str = "relu"):
        super().__init__()
        self.first = FFCNormAct(in_ch, out_ch, global_ratio, global_ratio, norm, act)
        self.second = FFCNormAct(out_ch, out_ch, global_ratio, global_ratio, norm, act)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        local, global_ = self.second(self.first(x))
        return self.skip(x) + torch.cat([local, global_.to(local.dtype)], 1)
