"""Noise schedules and the DDPM / DDIM samplers (small parameter-free objects with step())."""
from facefill.diffusion.schedulers import (DDIMScheduler, DDPMScheduler, NoiseScheduler, linear_betas,
                                           trailing_timesteps)

__all__ = ["DDIMScheduler", "DDPMScheduler", "NoiseScheduler", "linear_betas", "trailing_timesteps"]
