"""Baselines from the papers' tables: a plain autoencoder (L2 only) and the context encoder
(Pathak et al. 2016: conv encoder, channel-wise fully connected bottleneck, decoder; L2 + adversarial)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from facefill.methods.base import GeneratorInpainter
from facefill.nn.blocks import ChannelwiseFC, DCGANDiscriminator, conv_bn_act
from facefill.nn.losses import gan_d_loss, gan_g_loss, masked_mse
from facefill.nn.unet import DenseUNet, check_dense_unet_size
from facefill.registry import register_method


@dataclass(frozen=True)
class AutoencoderConfig:
    size: int = 64
    base_channels: int = 32
    max_channels: int = 128
    growth: int = 12
    layers_per_block: int = 4
    valid_weight: float = 0.1
    lr: float = 2e-4
    betas: tuple = (0.5, 0.9)


@register_method("autoencoder", config=AutoencoderConfig)
class Autoencoder(GeneratorInpainter):
    """dense-gan's encoder-decoder without dense blocks or skips, trained with L2 alone."""

    def __init__(self, config: AutoencoderConfig):
        check_dense_unet_size(config.size, "autoencoder")
        super().__init__(config)
        self.generator = DenseUNet(base=config.base_channels, growth=config.growth,
                                   layers=config.layers_per_block, max_ch=config.max_channels, dense=False, skips=False)

    def configure_optimizers(self):
        self.optimizers = {"generator": self.adam(self.generator)}
        return self.optimizers

    def training_step(self, batch, step):
        image, mask = batch["image"], batch["mask"]
        output = self.generate(image, mask)
        rec = masked_mse(output, image * 2 - 1, mask, valid_weight=self.config.valid_weight)
        self.optimise("generator", rec)
        return {"rec": rec.detach(), "loss": rec.detach()}


class ContextEncoderNet(nn.Module):
    """4x4 stride-2 convs down to 4x4, channel-wise FC, transposed convs back up."""

    def __init__(self, size: int, base: int = 64, max_ch: int = 512):
        super().__init__()
        depth = int(math.log2(size // 4))
        widths = [min(base * 2 ** i, max_ch) for i in range(depth)]
        encoder, ch = [], 4
        for i, width in enumerate(widths):
            encoder.append(conv_bn_act(ch, width, 4, 2, 1, act="lrelu", norm=i > 0))
            ch = width
        self.encoder = nn.Sequential(*encoder)
        self.bottleneck = ChannelwiseFC(ch, 4)
        decoder = []
        for width in reversed(widths[:-1]):
            decoder.append(conv_bn_act(ch, width, 4, 2, 1, transpose=True))
            ch = width
        decoder += [nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x):
        return self.decoder(self.bottleneck(self.encoder(x)))


@dataclass(frozen=True)
class ContextEncoderConfig:
    size: int = 64
    base_channels: int = 64
    rec_weight: float = 0.999
    adv_weight: float = 0.001
    valid_weight: float = 0.1
    lr: float = 2e-4
    betas: tuple = (0.5, 0.9)
    disc_channels: int = 32


@register_method("context-encoder", config=ContextEncoderConfig)
class ContextEncoder(GeneratorInpainter):
    def __init__(self, config: ContextEncoderConfig):
        super().__init__(config)
        if config.size < 8 or config.size & (config.size - 1):
            raise ValueError(f"context-encoder needs a power-of-two size >= 8, got {config.size}")
        self.generator = ContextEncoderNet(config.size, config.base_channels)
        self.discriminator = DCGANDiscriminator(config.size, base=config.disc_channels,
                                                depth=min(5, int(math.log2(config.size))))

    def configure_optimizers(self):
        self.optimizers = {"generator": self.adam(self.generator), "discriminator": self.adam(self.discriminator)}
        return self.optimizers

    def training_step(self, batch, step):
        image, mask = batch["image"], batch["mask"]
        target = image * 2 - 1
        output = self.generate(image, mask)
        completed = mask * output + (1 - mask) * target
        d_loss = gan_d_loss(self.discriminator(target), self.discriminator(completed.detach()))
        self.optimise("discriminator", d_loss)
        rec = masked_mse(output, target, mask, valid_weight=self.config.valid_weight)
        g_adv = gan_g_loss(self.discriminator(completed))
        loss = self.config.rec_weight * rec + self.config.adv_weight * g_adv
        self.optimise("generator", loss)
        return {"d_loss": d_loss.detach(), "rec": rec.detach(), "g_adv": g_adv.detach(), "loss": loss.detach()}
