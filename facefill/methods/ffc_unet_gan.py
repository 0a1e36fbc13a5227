"""ffc-unet-gan: facefill's own model, combining the seed papers' and the field's ideas, each
switchable for ablations:

- global context from fast Fourier convolution residual blocks in the bottleneck (LaMa; the
  DDPM-FFC paper), ``global_ratio`` (0 = plain residual blocks);
- U-Net skips (``skips``) and dense connectivity in the decoder (dense-GAN; ``dense``);
- an optional coarse-to-fine second stage (two-stage GAN; ``stages`` = 1 | 2);
- a multi-scale patch discriminator, local patches at full resolution and global layout at the
  coarser scales (GLCIC's two judgements; ``disc_scales``), trained with the non-saturating loss
  where only patches touching the hole count as fake (LaMa), an R1 penalty on real images, and
  its features matched between real and completed images as the perceptual term (no
  pretrained network).

``losses`` is a ``+``-joined subset of ``rec`` (L1, hole + ``valid_weight`` x known pixels),
``adv`` (the generator's adversarial term), ``fm`` (discriminator feature matching) and ``r1``
(the discriminator's R1 penalty). The discriminator is trained when ``adv`` or ``fm`` is present.

Fully convolutional: ``size`` is the native (training) size, but one weights file fills any
height and width (padded to a multiple of ``2 ** levels`` inside). :meth:`fill_size` says at what
size to fill a face crop of a given side.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facefill.methods.base import GeneratorInpainter
from facefill.nn.blocks import fold_batch_norms
from facefill.nn.fourier_unet import CoarseToFine, FourierUNet, pad_to_multiple
from facefill.nn.patch_discriminator import MultiScaleDiscriminator
from facefill.registry import register_method

LOSS_TERMS = ("rec", "adv", "fm", "r1")
MAX_FILL_SIZE = 512  # the largest square side the method is documented and tested to fill at


@dataclass(frozen=True)
class FFCUNetGANConfig:
    size: int = 256                    # native (training) size; any multiple of 2**levels fills
    min_fill_size: int = 128           # smaller face crops are enlarged to this (at most size) to fill
    base_channels: int = 24            # full-resolution width: most of the CPU time (4 img/s at 256 px on 2 cores)
    max_channels: int = 192            # the FFC bottleneck width (levels = 3: 24, 48, 96, 192)
    levels: int = 3                    # stride-2 downsamplings before the FFC bottleneck
    ffc_blocks: int = 4
    global_ratio: float = 0.75         # ablation: share of bottleneck channels in the Fourier branch; 0 = none
    skips: bool = True                 # ablation: U-Net skips
    dense: bool = True                 # ablation: dense decoder blocks (False: plain conv stacks)
    dense_layers: int = 2
    growth: int = 8                    # dense growth at full resolution, scaled by each level's width
    stages: int = 1                    # ablation: 1 | 2 (2: a coarse-to-fine refinement stage)
    refine_channels: int = 16          # the refinement stage's base width
    refine_blocks: int = 2             # its FFC blocks
    losses: str = "rec+adv+fm+r1"      # ablation: "+"-joined subset of rec, adv, fm, r1
    rec_weight: float = 1.0
    valid_weight: float = 0.1          # weight of known pixels in L_rec (the hole weighs 1)
    coarse_weight: float = 0.5         # L_rec weight of the coarse stage's output (two stages)
    adv_weight: float = 0.01
    fm_weight: float = 0.1
    r1_weight: float = 0.001           # R1 coefficient (LaMa's), on the sum of patch logits
    r1_every: int = 4                  # lazy R1 (StyleGAN2): every k steps, weighted by k
    disc_channels: int = 32
    disc_depth: int = 3
    disc_scales: int = 2
    lr: float = 5e-4                   # generator
    disc_lr: float = 2e-4
    betas: tuple = (0.5, 0.999)

    def __post_init__(self):
        terms = self.loss_terms
        unknown = sorted(terms - set(LOSS_TERMS))
        if unknown or not terms & {"rec", "adv", "fm"}:
            raise ValueError(f"losses must be '+'-joined terms from {', '.join(LOSS_TERMS)} with at least one "
                             f"of rec, adv, fm; got {self.losses!r}")
        if "r1" in terms and not terms & {"adv", "fm"}:
            raise ValueError(f"losses {self.losses!r}: r1 regularises the discriminator; add adv or fm")
        if self.stages not in (1, 2):
            raise ValueError(f"stages must be 1 or 2, got {self.stages}")
        if self.levels < 1 or self.size % 2 ** self.levels:
            raise ValueError(f"size must be a multiple of 2**levels = {2 ** max(self.levels, 0)}, got {self.size}")
        if not 0 <= self.global_ratio < 1:
            raise ValueError(f"global_ratio must be in [0, 1), got {self.global_ratio}")
        if self.r1_every < 1:
            raise ValueError(f"r1_every must be at least 1, got {self.r1_every}")

    @property
    def loss_terms(self) -> set[str]:
        return {term.strip() for term in self.losses.split("+") if term.strip()}


def build_generator(config: FFCUNetGANConfig) -> CoarseToFine:
    coarse = FourierUNet(base=config.base_channels, max_ch=config.max_channels, levels=config.levels,
                         ffc_blocks=config.ffc_blocks, global_ratio=config.global_ratio, skips=config.skips,
                         dense=config.dense, dense_layers=config.dense_layers, growth=config.growth)
    refine = None
    if config.stages == 2:
        refine = FourierUNet(base=config.refine_channels, max_ch=config.max_channels // 2, levels=config.levels,
                             ffc_blocks=config.refine_blocks, global_ratio=config.global_ratio,
                             skips=config.skips, dense=config.dense, dense_layers=config.dense_layers,
                             growth=max(config.growth // 2, 1))
    return CoarseToFine(coarse, refine)


SHALLOW_HOLE = 1 / 16   # a hole no deeper than this share of the crop's side is shallow (fill_size)


def fill_size(native: int, side: int, multiple: int = 8, smallest: int = 128,
              depth: float | None = None) -> int:
    """The square side to fill a face crop of ``side`` px at: the crop's own side (rounded up to
    ``multiple``) between ``smallest`` and the native size. Enlarging a crop adds no detail, so
    between the two the fill works at the crop's resolution; shrinking to the native size keeps
    faces at the scale the model was trained on (256 px for faces of 256 px and larger), and a
    smaller crop is enlarged to ``smallest`` (at most the native size): a model trained on 128 px
    faces filled 64 px faces 1.6 dB worse at 64 than enlarged to 128.

    A shallow hole (``depth``, the hole's farthest pixel from a known one, at most
    ``SHALLOW_HOLE`` of the side: thin strokes and scratches) may be filled at up to twice the
    native size: shrinking a crop grows a thin hole by a pixel at the fill's scale and blurs its
    fill. The 128 px model on 750 holes in 150 CelebA-HQ 256 px training faces, filled at 256
    rather than 128: +3.0 dB at depths up to 16 px, +1.9 at 16-20, +0.1 at 40-50, -0.8 beyond 60
    (a centred quarter is 64 deep). PSNR alone would set the threshold at 48 of 256, but at 256
    the model draws eyes under sunglasses (19 px deep) squinting and distorted: face parts need
    the trained scale, so only holes up to 16 of 256 px deep go to full resolution."""
    largest = int(native)
    if depth is not None and depth <= SHALLOW_HOLE * side:
        largest *= 2
    side = max(int(side), min(int(smallest), int(native)), multiple)
    return min(largest, -(-side // multiple) * multiple, MAX_FILL_SIZE)


def fake_patch_weights(mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per logit, the hole's share of the patch it judges: the mask area-pooled to the logits' grid."""
    return F.adaptive_avg_pool2d(mask, logits.shape[-2:])


def discriminator_loss(real_logits, fake_logits, mask) -> torch.Tensor:
    """Non-saturating loss: real images real; in completed images, patches fake by their hole share
    (the known part of a completed image is real, LaMa's ``mask_as_fake_target``)."""
    loss = 0.0
    for real, fake in zip(real_logits, fake_logits):
        weight = fake_patch_weights(mask, fake)
        fake_term = F.softplus(fake) * weight + F.softplus(-fake) * (1 - weight)
        loss = loss + F.softplus(-real).mean() + fake_term.mean()
    return loss / len(real_logits)


def generator_adversarial_loss(fake_logits) -> torch.Tensor:
    return sum(F.softplus(-logits).mean() for logits in fake_logits) / len(fake_logits)


def feature_matching_loss(fake_features, real_features) -> torch.Tensor:
    """Mean L1 between the discriminator's hidden features of the completed and the real images."""
    return sum(F.l1_loss(fake, real) for fake, real in zip(fake_features, real_features)) / len(fake_features)


def r1_penalty(discriminator, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared gradient norm of the summed patch logits at real images."""
    real = real.detach().requires_grad_(True)
    logits, _ = discriminator(real)
    (gradient,) = torch.autograd.grad(sum(logit.sum() for logit in logits), real, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean()


def reconstruction_loss(output, target, mask, valid_weight) -> torch.Tensor:
    """L1 over the hole plus ``valid_weight`` x L1 over the known pixels, normalised by the weights."""
    weights = (mask + (1 - mask) * valid_weight).expand_as(output)
    return (weights * (output - target).abs()).sum() / weights.sum().clamp_min(1e-8)


@register_method("ffc-unet-gan", config=FFCUNetGANConfig)
class FFCUNetGAN(GeneratorInpainter):
    def __init__(self, config: FFCUNetGANConfig):
        super().__init__(config)
        self.generator = build_generator(config)
        self.terms = config.loss_terms
        self.discriminator = None
        if self.terms & {"adv", "fm"}:
            self.discriminator = MultiScaleDiscriminator(3, config.disc_channels, config.disc_depth,
                                                         config.disc_scales)

    def configure_optimizers(self):
        self.optimizers = {"generator": self.adam(self.generator)}
        if self.discriminator is not None:
            self.optimizers["discriminator"] = torch.optim.Adam(
                self.discriminator.parameters(), lr=self.config.disc_lr, betas=tuple(self.config.betas))
        return self.optimizers

    def prepare_inference(self):
        """A copy of the generator for inference: BatchNorm folded into the convolutions and
        channels-last memory (about 20 % faster on CPU, the same fill to 1e-6). Training and
        export keep using ``self.generator``; the copy is not a registered submodule."""
        fast = fold_batch_norms(copy.deepcopy(self.generator).eval())
        self.__dict__["inference_generator"] = fast.to(memory_format=torch.channels_last)

    def run_generator(self, inputs):
        fast = self.__dict__.get("inference_generator")
        if fast is None or self.training:
            return self.generator(inputs)
        return fast(inputs.contiguous(memory_format=torch.channels_last))

    smaller_scale: "FFCUNetGAN | None" = None

    def add_smaller_scale(self, smaller: "FFCUNetGAN") -> None:
        """Let ``smaller`` (this method trained at a smaller size, e.g. the 128 px parent of a
        256 px stage) fill the face crops smaller than this model's size: each fills best the
        faces of the scale it learned from. Set in ``__dict__``, not as a registered submodule:
        exports stay one model."""
        self.__dict__["smaller_scale"] = smaller

    def scale_for(self, side: int) -> "FFCUNetGAN":
        """The model that fills a crop (or a fill square) of ``side`` px."""
        if self.smaller_scale is not None and side < self.size:
            return self.smaller_scale.scale_for(side)
        return self

    def to_device(self, device):
        if self.smaller_scale is not None:
            self.smaller_scale.to_device(device)
        return super().to_device(device)

    def fill_size(self, side: int, depth: float | None = None) -> int:
        """See :func:`fill_size`; with a smaller scale added, that of the model for ``side``."""
        model = self.scale_for(side)
        return fill_size(model.size, side, model.generator.multiple, model.config.min_fill_size, depth)

    @torch.no_grad()
    def predict(self, image, mask):
        model = self.scale_for(max(image.shape[-2:]))
        if model is not self:
            return model.predict(image, mask)
        height, width = image.shape[-2:]
        multiple = self.generator.multiple
        padded = self.generate(pad_to_multiple(image, multiple), pad_to_multiple(mask, multiple))
        return (padded[..., :height, :width] + 1) / 2

    def training_step(self, batch, step):
        config = self.config
        image, mask = batch["image"], batch["mask"]
        target = image * 2 - 1
        known = target * (1 - mask)
        outputs = self.generator.forward_stages(torch.cat([known, mask], 1))
        completed = mask * outputs[-1] + (1 - mask) * target
        logs = {}
        if self.discriminator is not None:
            self._discriminator_step(target, completed.detach(), mask, step, logs)
        loss = 0.0
        if "rec" in self.terms:
            stage_weights = [config.coarse_weight] * (len(outputs) - 1) + [1.0]
            recs = [reconstruction_loss(out, target, mask, config.valid_weight) for out in outputs]
            rec = sum(w * r for w, r in zip(stage_weights, recs))
            loss = loss + config.rec_weight * rec
            logs["rec"] = recs[-1].detach()
            if len(recs) > 1:
                logs["rec_coarse"] = recs[0].detach()
        if self.discriminator is not None and self.terms & {"adv", "fm"}:
            loss = loss + self._generator_gan_terms(target, completed, logs)
        self.optimise("generator", loss)
        logs["loss"] = loss.detach()
        return logs

    def _discriminator_step(self, target, fake, mask, step, logs):
        self.discriminator.requires_grad_(True)
        real_logits, _ = self.discriminator(target)
        fake_logits, _ = self.discriminator(fake)
        d_loss = discriminator_loss(real_logits, fake_logits, mask)
        logs["d_loss"] = d_loss.detach()
        if "r1" in self.terms and step % self.config.r1_every == 0:
            r1 = r1_penalty(self.discriminator, target)
            d_loss = d_loss + self.config.r1_weight * self.config.r1_every * r1
            logs["r1"] = r1.detach()
        self.optimise("discriminator", d_loss)

    def _generator_gan_terms(self, target, completed, logs) -> torch.Tensor:
        self.discriminator.requires_grad_(False)  # no discriminator gradients from the generator's turn
        fake_logits, fake_features = self.discriminator(completed)
        loss = 0.0
        if "adv" in self.terms:
            g_adv = generator_adversarial_loss(fake_logits)
            loss = loss + self.config.adv_weight * g_adv
            logs["g_adv"] = g_adv.detach()
        if "fm" in self.terms:
            with torch.no_grad():
                _, real_features = self.discriminator(target)
            fm = feature_matching_loss(fake_features, real_features)
            loss = loss + self.config.fm_weight * fm
            logs["fm"] = fm.detach()
        self.discriminator.requires_grad_(True)
        return loss
