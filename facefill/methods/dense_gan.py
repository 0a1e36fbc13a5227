"""dense-gan: Meng et al., "Dense Convolution Generative Adversarial Networks Based Image
Inpainting". A dense-block U-Net generator, a DCGAN discriminator, and
L = 0.999 L_rec + 0.001 L_adv + 1e-6 L_TV."""
from __future__ import annotations

from dataclasses import dataclass

from facefill.methods.base import GeneratorInpainter
from facefill.nn.blocks import DCGANDiscriminator
from facefill.nn.losses import gan_d_loss, gan_g_loss, masked_mse, total_variation
from facefill.nn.unet import DenseUNet, check_dense_unet_size
from facefill.registry import register_method

LOSS_SETS = ("rec", "rec+adv", "rec+adv+tv")


@dataclass(frozen=True)
class DenseGANConfig:
    size: int = 64
    base_channels: int = 32
    max_channels: int = 128
    growth: int = 12
    layers_per_block: int = 4
    dense: bool = True                 # ablation: False = plain conv encoder-decoder
    skips: bool = True
    losses: str = "rec+adv+tv"         # ablation: rec | rec+adv | rec+adv+tv
    rec_weight: float = 0.999
    adv_weight: float = 0.001
    tv_weight: float = 1e-6
    valid_weight: float = 0.1          # weight of known pixels in L_rec (the hole weighs 1)
    lr: float = 2e-4
    betas: tuple = (0.5, 0.9)
    disc_channels: int = 32

    def __post_init__(self):
        if self.losses not in LOSS_SETS:
            raise ValueError(f"losses must be one of {', '.join(LOSS_SETS)}, got {self.losses!r}")


@register_method("dense-gan", config=DenseGANConfig)
class DenseGAN(GeneratorInpainter):
    def __init__(self, config: DenseGANConfig):
        check_dense_unet_size(config.size, "dense-gan")
        super().__init__(config)
        self.generator = DenseUNet(base=config.base_channels, growth=config.growth,
                                   layers=config.layers_per_block, max_ch=config.max_channels, dense=config.dense, skips=config.skips)
        self.adversarial = "adv" in config.losses
        if self.adversarial:
            self.discriminator = DCGANDiscriminator(config.size, base=config.disc_channels)

    def configure_optimizers(self):
        self.optimizers = {"generator": self.adam(self.generator)}
        if self.adversarial:
            self.optimizers["discriminator"] = self.adam(self.discriminator)
        return self.optimizers

    def training_step(self, batch, step):
        config = self.config
        image, mask = batch["image"], batch["mask"]
        target = image * 2 - 1
        output = self.generate(image, mask)
        completed = mask * output + (1 - mask) * target
        logs = {}
        if self.adversarial:
            d_loss = gan_d_loss(self.discriminator(target), self.discriminator(completed.detach()))
            self.optimise("discriminator", d_loss)
            logs["d_loss"] = d_loss.detach()
        rec = masked_mse(output, target, mask, valid_weight=config.valid_weight)
        loss = config.rec_weight * rec
        logs["rec"] = rec.detach()
        if self.adversarial:
            g_adv = gan_g_loss(self.discriminator(completed))
            loss = loss + config.adv_weight * g_adv
            logs["g_adv"] = g_adv.detach()
        if "tv" in config.losses:
            tv = total_variation(completed)
            loss = loss + config.tv_weight * tv
            logs["tv"] = tv.detach()
        self.optimise("generator", loss)
        logs["loss"] = loss.detach()
        return logs
