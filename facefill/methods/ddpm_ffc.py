"""ddpm-ffc: "Face inpainting model based on denoising diffusion probability model" -- a DDPM whose
guided-diffusion U-Net has fast Fourier convolution residual blocks in its shallow layers.

Training: the U-Net sees cat(x_t, masked known image, mask) (7 channels, as Palette) and predicts
the noise; the loss is the MSE of that noise over the hole only (the paper; ``hole_loss=false``
takes every pixel). Schedule: T = 2000, betas linear from 1e-6 to 1e-2; cosine learning-rate
decay; augmentation by a small random-resized crop and colour jitter (the data loader flips).

Sampling: DDIM (Song et al.) over ``steps`` timesteps with ``eta``, or ancestral DDPM over all T.
Before every denoising step the known region of x_t is replaced by the known pixels noised to the
level of x_t (as RePaint), which is also what the network saw in training, where the whole image
is noised; after the last step it is replaced by the exact known pixels, so they never change.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from facefill.diffusion import DDIMScheduler, DDPMScheduler
from facefill.inference.options import SAMPLERS, FillOptions
from facefill.methods.base import TrainableInpainter
from facefill.nn.diffusion_unet import TIME_EMBEDDINGS, DiffusionUNet
from facefill.nn.ffc import NORMS
from facefill.nn.losses import masked_mse
from facefill.registry import register_method


@dataclass(frozen=True)
class DDPMFFCConfig:
    size: int = 64                      # the CPU-trainable size; the paper trains at 256
    base_channels: int = 64
    channel_mult: tuple = ()            # () = guided-diffusion's choice for the size
    num_res_blocks: int = 2
    attention_resolutions: tuple = (16, 8)  # feature-map sides with self-attention
    num_heads: int = 4
    dropout: float = 0.0
    ffc: bool = True                    # ablation: False = plain residual blocks everywhere
    ffc_blocks: int = 2                 # how many of the first residual blocks become FFC blocks
    ffc_global_ratio: float = 0.5
    ffc_norm: str = "batch"             # LaMa's FFC uses BatchNorm; "group" is the alternative
    time_embedding: str = "alphabar-linear"  # the paper; or "sinusoidal"
    timesteps: int = 2000
    beta_start: float = 1e-6
    beta_end: float = 1e-2
    lr: float = 1e-4
    lr_decay_steps: int = 200_000       # cosine decay horizon; the rate then stays at lr_min
    lr_min: float = 1e-6
    grad_clip: float = 1.0
    hole_loss: bool = True
    augment: bool = True
    crop_scale: float = 0.9             # random-resized crop keeps 90-100 % of the side
    colour_jitter: float = 0.05         # brightness, contrast and saturation within +-5 %
    sampler: str = "ddim"
    sample_steps: int = 50
    eta: float = 0.0
    clip_sample: bool = True

    def __post_init__(self):
        for field, value, allowed in (("sampler", self.sampler, SAMPLERS), ("ffc_norm", self.ffc_norm, NORMS),
                                      ("time_embedding", self.time_embedding, TIME_EMBEDDINGS)):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0 < self.ffc_global_ratio < 1:
            raise ValueError(f"ffc_global_ratio must be in (0, 1), got {self.ffc_global_ratio}")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError(f"sample_steps must be between 1 and timesteps ({self.timesteps})")


class CosineDecay:
    """The learning rate as a pure function of the step: the engine's checkpoints hold the step but
    no scheduler state, so setting the rate from the step resumes exactly."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, horizon: int, lr_min: float = 0.0):
        self.optimizer, self.lr, self.horizon, self.lr_min = optimizer, lr, horizon, lr_min

    def rate(self, step: int) -> float:
        if self.horizon <= 0:
            return self.lr
        progress = min(step, self.horizon) / self.horizon
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        rate = self.rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        return rate


@functools.cache
def luma_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """ITU-R 601 luma weights (1x3x1x1), made once per device: a fresh host tensor copied to the
    device every step would wait for the device to finish its queued work."""
    return torch.tensor([0.299, 0.587, 0.114], dtype=dtype).view(1, 3, 1, 1).to(device)


def augment(image: torch.Tensor, crop_scale: float, jitter: float) -> torch.Tensor:
    """Per image: a random-resized crop (side fraction in [crop_scale, 1], anywhere inside the
    image, resized back) and brightness/contrast/saturation jitter within +-``jitter``."""
    batch = image.shape[0]

    def uniform(low, high):
        return torch.rand(batch, device=image.device) * (high - low) + low

    scale = uniform(crop_scale, 1.0)
    theta = torch.zeros(batch, 2, 3, device=image.device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, 0, 2] = uniform(-1, 1) * (1 - scale)
    theta[:, 1, 2] = uniform(-1, 1) * (1 - scale)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def factor():
        return uniform(1 - jitter, 1 + jitter).view(batch, 1, 1, 1)

    image = image * factor()
    mean = image.mean((1, 2, 3), keepdim=True)
    image = (image - mean) * factor() + mean
    grey = (image * luma_weights(image.device, image.dtype)).sum(1, keepdim=True)
    image = (image - grey) * factor() + grey
    return image.clamp(0, 1)


@register_method("ddpm-ffc", config=DDPMFFCConfig)
class DDPMFFC(TrainableInpainter):
    option_names = ("steps", "sampler", "eta", "seed")

    def __init__(self, config: DDPMFFCConfig):
        super().__init__(config)
        self.unet = DiffusionUNet(
            in_ch=7, out_ch=3, size=config.size, base_channels=config.base_channels,
            channel_mult=config.channel_mult, num_res_blocks=config.num_res_blocks,
            attention_resolutions=config.attention_resolutions, num_heads=config.num_heads, dropout=config.dropout,
            ffc_blocks=config.ffc_blocks if config.ffc else 0, ffc_global_ratio=config.ffc_global_ratio,
            ffc_norm=config.ffc_norm, time_embedding=config.time_embedding)
        self.noise = DDPMScheduler(config.timesteps, config.beta_start, config.beta_end, config.clip_sample)
        # The weights' sampling defaults; a fill's FillOptions override them per call.
        self.sampler = config.sampler
        self.eta = config.eta
        self.lr_schedule: CosineDecay | None = None

    def inference_modules(self):
        return {"unet": self.unet}

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.config.lr, weight_decay=0.0)
        self.lr_schedule = CosineDecay(optimizer, self.config.lr, self.config.lr_decay_steps, self.config.lr_min)
        self.optimizers = {"unet": optimizer}
        return self.optimizers

    # ------------------------------------------------------------ training
    def denoise(self, x_t, known, mask, t) -> torch.Tensor:
        """Predicted noise for x_t (in [-1, 1]) given the known image (hole zeroed) and the mask."""
        alpha_bar = self.noise.alpha_bar_at(t, x_t).flatten().expand(x_t.shape[0])
        return self.unet(torch.cat([x_t, known, mask], 1), alpha_bar)

    def training_step(self, batch, step):
        config = self.config
        image, mask = batch["image"], batch["mask"]
        if config.augment:
            image = augment(image, config.crop_scale, config.colour_jitter)
        x0 = image * 2 - 1
        t = torch.randint(0, config.timesteps, (x0.shape[0],), device=x0.device)
        eps = torch.randn_like(x0)
        predicted = self.denoise(self.noise.add_noise(x0, eps, t), x0 * (1 - mask), mask, t)
        if config.hole_loss:
            loss = masked_mse(predicted.float(), eps, mask)
        else:
            loss = F.mse_loss(predicted.float(), eps)
        lr = self.lr_schedule.apply(step)
        self.optimise("unet", loss, clip=config.grad_clip or None)
        return {"loss": loss.detach(), "lr": lr}

    # ------------------------------------------------------------ sampling
    def sampling_scheduler(self, options: FillOptions = FillOptions()):
        """The scheduler ``options`` ask for (steps: None = sample_steps for DDIM, all T for DDPM;
        sampler and eta: None = the weights' settings)."""
        config = self.config
        sampler = options.sampler or self.sampler
        eta = self.eta if options.eta is None else options.eta
        if sampler == "ddpm":
            scheduler = DDPMScheduler(config.timesteps, config.beta_start, config.beta_end, config.clip_sample)
        elif sampler == "ddim":
            scheduler = DDIMScheduler(config.timesteps, config.beta_start, config.beta_end, config.clip_sample,
                                      eta=eta)
        else:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        default = config.timesteps if sampler == "ddpm" else config.sample_steps
        scheduler.set_timesteps(int(options.steps or default))
        return scheduler

    @torch.no_grad()
    def predict(self, image, mask, options: FillOptions = FillOptions()):
        scheduler = self.sampling_scheduler(options)
        generator = torch.Generator(device=image.device).manual_seed(int(options.seed))
        x0_known = image * 2 - 1
        known = x0_known * (1 - mask)
        x = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
        for t in scheduler.timesteps.tolist():
            noise = torch.randn(image.shape, generator=generator, device=image.device, dtype=image.dtype)
            x = mask * x + (1 - mask) * scheduler.add_noise(x0_known, noise, t)
            eps = self.denoise(x, known, mask, t).to(x.dtype)
            x = scheduler.step(eps, t, x, generator=generator)
        x = mask * x + (1 - mask) * x0_known
        return (x.clamp(-1, 1) + 1) / 2
