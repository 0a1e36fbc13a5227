"""two-stage-gan: Lin et al., "Face Image Inpainting with Generative Adversarial Network"
(stepwise face completion). Cascaded U-Net GANs: a pre-completion stage with 5x5 kernels and an
enhancement stage with 3x3 kernels, linked by an LSTM cell whose state flows from one stage's
bottleneck to the next. Each stage has its own discriminator (paper table 1) and the loss
L = alpha L_adv + beta L_content + lambda L_TV is applied to every stage.

Reading of the paper's "real and generated image concatenated" discriminator input: the
discriminator is conditional (pix2pix style); it sees [masked input, candidate], where the
candidate is the real image (real pair) or a stage's completed image (fake pair). Pairing the
real image with the candidate instead would let it win by comparing the two halves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from facefill.methods.base import GeneratorInpainter
from facefill.nn.blocks import conv_bn_act
from facefill.nn.losses import gan_d_loss, gan_g_loss, masked_l1, total_variation
from facefill.nn.lstm import LSTMCell
from facefill.registry import register_method

BOTTLENECK_SIDE = 4  # the encoder's convolutions stop at 4x4 before the fully connected layer


@dataclass(frozen=True)
class TwoStageGANConfig:
    size: int = 128
    stages: int = 2                    # ablation: 1 | 2 | 3 (stage 3 = a second 3x3 enhancement stage)
    lstm: bool = True                  # ablation: False = no LSTM; its half of the 2*fc_dim code is zeros
    base_channels: int = 64
    max_channels: int = 512
    fc_dim: int = 1024
    disc_channels: int = 32            # table 1: 32, 32, 64, 64, ..., 512, 512
    disc_fc_dim: int = 1024
    # The paper prints alpha = 100, beta = 1, lambda = 100. With those, content learning stalls
    # (adversarial and TV gradients swamp the L1; 500 steps at 32 px: held-out hole L1 0.227 ->
    # 0.198, against 0.126 with the defaults below and 0.124 with content alone), so the defaults
    # keep beta = 1 and scale the other two down; set alpha=100, lambda_tv=100 for the paper's.
    alpha: float = 0.01                # adversarial weight
    beta: float = 1.0                  # content (L1 on the hole) weight
    lambda_tv: float = 0.1             # squared total-variation weight
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self):
        if self.stages not in (1, 2, 3):
            raise ValueError(f"stages must be 1, 2 or 3, got {self.stages}")
        if self.size < 2 * BOTTLENECK_SIDE or self.size & (self.size - 1):
            raise ValueError(f"two-stage-gan needs a power-of-two size >= 8, got {self.size}")


def up_block(in_ch, out_ch, kernel, last=False):
    """Transposed conv that exactly doubles the side for odd kernels; BN-ReLU, or tanh when last."""
    conv = nn.ConvTranspose2d(in_ch, out_ch, kernel, 2, (kernel - 1) // 2, output_padding=1, bias=last)
    if last:
        return nn.Sequential(conv, nn.Tanh())
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class StageGenerator(nn.Module):
    """One stage's U-Net: stride-2 ``kernel`` x ``kernel`` convs down to 4x4, a fully connected
    layer to ``fc_dim``, the LSTM cell, [FC code, LSTM hidden state] (2 * fc_dim) through a fully
    connected layer back to a 4x4 map, then transposed convs up, each fed the previous output
    concatenated with the encoder output of the same resolution; tanh RGB at the input size."""

    def __init__(self, size, kernel, base=64, max_ch=512, fc_dim=1024, lstm=True, in_ch=4, out_ch=3):
        super().__init__()
        depth = int(math.log2(size // BOTTLENECK_SIDE))
        widths = [min(base * 2 ** i, max_ch) for i in range(depth)]
        self.down = nn.ModuleList()
        ch = in_ch
        for i, width in enumerate(widths):
            self.down.append(conv_bn_act(ch, width, kernel, 2, act="lrelu", norm=i > 0))
            ch = width
        flat = ch * BOTTLENECK_SIDE ** 2
        self.encode = nn.Sequential(nn.Flatten(), nn.Linear(flat, fc_dim), nn.LeakyReLU(0.2, inplace=True))
        self.lstm = LSTMCell(fc_dim, fc_dim) if lstm else None
        self.decode = nn.Sequential(nn.Linear(2 * fc_dim, flat), nn.ReLU(inplace=True))
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            skip_ch = widths[i]
            if i > 0:
                self.up.append(up_block(ch + skip_ch, widths[i - 1], kernel))
                ch = widths[i - 1]
            else:
                self.up.append(up_block(ch + skip_ch, out_ch, kernel, last=True))
        self.bottleneck_ch = widths[-1]

    def forward(self, x, state=None):
        """Returns (output in [-1, 1], LSTM state (h, c) or None without the LSTM)."""
        features = []
        for down in self.down:
            x = down(x)
            features.append(x)
        code = self.encode(x)
        if self.lstm is not None:
            state = self.lstm(code, state)
            memory = state[0]
        else:
            state, memory = None, torch.zeros_like(code)
        x = self.decode(torch.cat([code, memory], 1))
        x = x.view(x.shape[0], self.bottleneck_ch, BOTTLENECK_SIDE, BOTTLENECK_SIDE)
        for up, skip in zip(self.up, reversed(features)):
            x = up(torch.cat([x, skip], 1))
        return x, state


class CascadeGenerator(nn.Module):
    """Stage 1 (5x5 kernels) then 3x3 enhancement stages. Each later stage sees the previous
    stage's output composited with the known pixels, plus the mask, and starts its LSTM from
    the previous stage's (h, c). Input: cat(masked image in [-1, 1], mask)."""

    def __init__(self, config: TwoStageGANConfig):
        super().__init__()
        kernels = [5] + [3] * (config.stages - 1)
        self.stages = nn.ModuleList(
            StageGenerator(config.size, kernel, config.base_channels, config.max_channels, config.fc_dim,
                           config.lstm) for kernel in kernels)

    def forward_stages(self, x, state=None):
        """Every stage's raw output and LSTM state, first to last."""
        known, mask = x[:, :3], x[:, 3:]
        outputs, states = [], []
        for stage in self.stages:
            output, state = stage(x, state)
            outputs.append(output)
            states.append(state)
            x = torch.cat([mask * output + (1 - mask) * known, mask], 1)
        return outputs, states

    def forward(self, x):
        return self.forward_stages(x)[0][-1]


class PairDiscriminator(nn.Module):
    """Paper table 1: ten 3x3 convs with LeakyReLU, widths base x (1, 1, 2, 2, 4, 4, 8, 8, 16, 16),
    strides alternating 1 and 2 (128 -> 4), then FC ``fc_dim`` and FC 1. Returns logits (the
    paper's sigmoid lives in the BCE-with-logits loss). Input: two images concatenated."""

    MULTIPLIERS = (1, 1, 2, 2, 4, 4, 8, 8, 16, 16)

    def __init__(self, size, base=32, fc_dim=1024, in_ch=6):
        super().__init__()
        layers, ch, side = [], in_ch, size
        for i, multiplier in enumerate(self.MULTIPLIERS):
            stride = 1 + i % 2
            layers += [nn.Conv2d(ch, base * multiplier, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True)]
            ch = base * multiplier
            side = (side - 1) // stride + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch * side * side, fc_dim),
                                  nn.LeakyReLU(0.2, inplace=True), nn.Linear(fc_dim, 1))

    def forward(self, condition, candidate):
        return self.head(self.features(torch.cat([condition, candidate], 1)))


@register_method("two-stage-gan", config=TwoStageGANConfig)
class TwoStageGAN(GeneratorInpainter):
    def __init__(self, config: TwoStageGANConfig):
        super().__init__(config)
        self.generator = CascadeGenerator(config)
        self.adversarial = config.alpha > 0
        if self.adversarial:
            self.discriminators = nn.ModuleList(
                PairDiscriminator(config.size, config.disc_channels, config.disc_fc_dim)
                for _ in range(config.stages))

    def configure_optimizers(self):
        betas = (self.config.beta1, self.config.beta2)
        self.optimizers = {"generator": self.adam(self.generator, betas)}
        if self.adversarial:
            self.optimizers["discriminator"] = self.adam(self.discriminators, betas)
        return self.optimizers

    def training_step(self, batch, step):
        config = self.config
        image, mask = batch["image"], batch["mask"]
        target = image * 2 - 1
        known = target * (1 - mask)
        outputs, _ = self.generator.forward_stages(torch.cat([known, mask], 1))
        completed = [mask * output + (1 - mask) * target for output in outputs]
        logs = {}
        if self.adversarial:
            d_loss = sum(gan_d_loss(disc(known, target), disc(known, fake.detach()))
                         for disc, fake in zip(self.discriminators, completed))
            self.optimise("discriminator", d_loss)
            logs["d_loss"] = d_loss.detach()
        loss = 0.0
        for index, (output, fake) in enumerate(zip(outputs, completed), 1):
            content = masked_l1(output, target, mask)
            tv = total_variation(fake, squared=True)
            stage_loss = config.beta * content + config.lambda_tv * tv
            logs[f"content{index}"], logs[f"tv{index}"] = content.detach(), tv.detach()
            if self.adversarial:
                adv = gan_g_loss(self.discriminators[index - 1](known, fake))
                stage_loss = stage_loss + config.alpha * adv
                logs[f"g_adv{index}"] = adv.detach()
            loss = loss + stage_loss
        self.optimise("generator", loss)
        logs["loss"] = loss.detach()
        return logs
