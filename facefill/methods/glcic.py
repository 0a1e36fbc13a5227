"""glcic: Iizuka, Simo-Serra and Ishikawa, "Globally and Locally Consistent Image Completion"
(SIGGRAPH 2017). A dilated-convolution completion network on (masked image, mask), a global +
local context discriminator, three training phases, Poisson blending of the result.

Training phases, by the engine's step (``phase_steps = (tc, td)``):

1. ``step < tc``: the completion network alone, with the MSE loss over the hole (plus the local
   consistency term below);
2. ``tc <= step < tc + td``: the discriminator alone, on real images and the network's completions;
3. afterwards: both, the generator with ``MSE + alpha * adversarial`` (alpha = 4e-4).

The local consistency term is the MSE of the raw network output against the image over the
local discriminator's window (the hole and its surroundings, ``size // 2`` square), weighted by
``local_weight``: it asks the output to agree with the context next to the hole, where seams
show. Random rectangular holes come from the data pipeline (``--masks random-box``); the local
window follows whichever hole it gets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facefill.blending import BLEND_MODES, blend_fill
from facefill.methods.base import GeneratorInpainter
from facefill.nn.dilated import DilatedCompletionNet, GLDiscriminator, local_crop
from facefill.nn.losses import gan_d_loss, gan_g_loss, masked_mse
from facefill.registry import register_method

OPTIMIZERS = ("adam", "adadelta")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's vgg16().features up to relu3_3 (indices 0-15): channel counts, "M" = max pool.
VGG16_TO_RELU3_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256)


@dataclass(frozen=True)
class GLCICConfig:
    size: int = 128
    base_channels: int = 64            # paper: 64 / 128 / 256
    disc_channels: int = 64            # paper: 64 ... 512
    disc_features: int = 1024          # each branch's FC output, concatenated
    phase_steps: tuple = (9000, 1000)  # (tc, td); the paper's 90k / 10k of 500k, scaled by 1/10
    alpha: float = 4e-4                # adversarial weight in phase 3
    local_weight: float = 0.1          # MSE of the raw output over the local window
    vgg_weights: str = ""              # a local torchvision VGG16 state dict; "" = no perceptual loss
    perceptual_weight: float = 0.01
    optimizer: str = "adam"            # adam | adadelta (the paper's)
    lr: float = 2e-4                   # Adam; Adadelta uses lr 1.0
    betas: tuple = (0.5, 0.999)
    blend: str = "poisson"             # poisson | none (plain compositing)

    def __post_init__(self):
        if self.size < 8 or self.size % 4:
            raise ValueError(f"glcic needs a size divisible by 4 and >= 8, got {self.size}")
        if len(self.phase_steps) != 2 or min(self.phase_steps) < 0:
            raise ValueError(f"phase_steps must be two step counts (tc, td) >= 0, got {self.phase_steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")


def training_phase(step: int, phase_steps) -> int:
    """1: generator alone (MSE), 2: discriminator alone, 3: joint."""
    tc, td = phase_steps
    return 1 if step < tc else 2 if step < tc + td else 3


class VGGFeatures(nn.Module):
    """Frozen VGG16 features up to relu3_3, from a local weights file (never downloaded). Accepts a
    torchvision ``vgg16`` state dict (``features.N.*`` keys) or one of ``vgg16().features``."""

    def __init__(self, path: str):
        super().__init__()
        layers, ch = [], 3
        for item in VGG16_TO_RELU3_3:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, item, 3, padding=1), nn.ReLU(inplace=True)]
                ch = item
        self.features = nn.Sequential(*layers)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("features."): v for k, v in state.items()}
        wanted = self.features.state_dict()
        self.features.load_state_dict({k: state[k] for k in wanted if k in state}, strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, image_pm1):
        return self.features(((image_pm1 + 1) / 2 - self.mean) / self.std)


@register_method("glcic", config=GLCICConfig)
class GLCIC(GeneratorInpainter):
    def __init__(self, config: GLCICConfig):
        super().__init__(config)
        self.generator = DilatedCompletionNet(4, config.base_channels)
        self.discriminator = GLDiscriminator(config.size, config.disc_channels, config.disc_features)
        # Kept out of the module tree: a fixed loss network belongs in no checkpoint.
        self._vgg = [VGGFeatures(config.vgg_weights)] if config.vgg_weights else []

    def configure_optimizers(self):
        def make(module):
            if self.config.optimizer == "adadelta":
                return torch.optim.Adadelta(module.parameters())
            return self.adam(module)

        self.optimizers = {"generator": make(self.generator), "discriminator": make(self.discriminator)}
        return self.optimizers

    def training_step(self, batch, step):
        phase = training_phase(step, self.config.phase_steps)
        image, mask = batch["image"], batch["mask"]
        target = image * 2 - 1
        logs = {"phase": float(phase)}
        if phase == 1:
            output = self.generate(image, mask)
        else:
            with torch.no_grad() if phase == 2 else torch.enable_grad():
                output = self.generate(image, mask)
            completed = mask * output + (1 - mask) * target
            d_loss = gan_d_loss(self.discriminator(target, mask),
                                self.discriminator(completed.detach(), mask))
            self.optimise("discriminator", d_loss)
            logs["d_loss"] = d_loss.detach()
            if phase == 2:
                return logs
        loss = self._reconstruction(output, target, mask, logs)
        if phase == 3:
            g_adv = gan_g_loss(self.discriminator(completed, mask))
            loss = loss + self.config.alpha * g_adv
            logs["g_adv"] = g_adv.detach()
        self.optimise("generator", loss)
        logs["loss"] = loss.detach()
        return logs

    def _reconstruction(self, output, target, mask, logs):
        """MSE over the hole + local consistency (+ VGG perceptual over the local window)."""
        config = self.config
        side = self.discriminator.local_side
        rec = masked_mse(output, target, mask)
        output_local, target_local = local_crop(output, mask, side), local_crop(target, mask, side)
        local = F.mse_loss(output_local, target_local)
        loss = rec + config.local_weight * local
        logs.update(rec=rec.detach(), local=local.detach())
        if self._vgg:
            vgg = self._vgg[0].to(output.device)
            perceptual = F.l1_loss(vgg(output_local), vgg(target_local))
            loss = loss + config.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.detach()
        return loss

    @torch.no_grad()
    def predict(self, image, mask):
        fill = (self.generate(image, mask) + 1) / 2
        return blend_fill(fill.clamp(0, 1), image, mask, self.config.blend)
