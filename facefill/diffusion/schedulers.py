"""Noise schedules and samplers for denoising diffusion (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models"; Song et al. 2021, "Denoising Diffusion Implicit Models").

The schedulers hold no parameters (DESIGN.md): ``set_timesteps(n)`` picks the timesteps to visit,
``step(eps, t, x, generator)`` turns x_t and the predicted noise into x_prev, and
``add_noise(x0, eps, t)`` is the forward process. Semantics follow diffusers' schedulers with
``prediction_type="epsilon"``, ``variance_type="fixed_small"`` and ``timestep_spacing="trailing"``
(the first visited step is always T - 1, so sampling starts from pure noise). Every tensor is
in [-1, 1] image space; the schedule itself is kept in float64 on the CPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Ho et al.'s linear schedule: ``timesteps`` betas evenly spaced from start to end (float64)."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def trailing_timesteps(train_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps spread over [0, T), descending, starting at T - 1."""
    if not 1 <= steps <= train_timesteps:
        raise ValueError(f"steps must be between 1 and {train_timesteps}, got {steps}")
    return [int(t) for t in np.round(np.arange(train_timesteps, 0, -train_timesteps / steps)).astype(np.int64) - 1]


class NoiseScheduler:
    """The schedule shared by both samplers: betas, alphas and their cumulative product."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
                 clip_sample: bool = True, betas: torch.Tensor | None = None):
        self.betas = (linear_betas(num_train_timesteps, beta_start, beta_end) if betas is None
                      else torch.as_tensor(betas, dtype=torch.float64))
        self.num_train_timesteps = len(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self._tables: dict[torch.device, torch.Tensor] = {}
        self.clip_sample = clip_sample
        self.set_timesteps(self.num_train_timesteps)

    def set_timesteps(self, steps: int) -> None:
        timesteps = trailing_timesteps(self.num_train_timesteps, steps)
        self.timesteps = torch.tensor(timesteps, dtype=torch.long)
        self._previous = dict(zip(timesteps, timesteps[1:] + [-1]))

    def alpha_bar(self, t: int) -> float:
        """alpha-bar_t; 1 for t = -1 (the clean image after the last step)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def previous_timestep(self, t) -> int:
        t = int(t)
        if t not in self._previous:
            raise ValueError(f"timestep {t} is not in this scheduler's timesteps; call set_timesteps first")
        return self._previous[t]

    def alpha_bar_at(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar for each timestep in ``t`` (an int or a B tensor), shaped to broadcast over ``like``."""
        table = self._alphas_cumprod_on(like.device)
        values = table[t.long()] if torch.is_tensor(t) else table[int(t)]  # a device t stays on the device
        return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def _alphas_cumprod_on(self, device: torch.device) -> torch.Tensor:
        """alpha-bar on ``device``, copied there once: indexing it with timesteps drawn on the
        device needs no trip through the host (a synchronisation every training step)."""
        if device not in self._tables:
            self._tables[device] = self.alphas_cumprod.to(device)
        return self._tables[device]

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """q(x_t | x_0): sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps."""
        alpha_bar = self.alpha_bar_at(t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def predict_x0(self, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """The clean image implied by x_t and the predicted noise, clipped to [-1, 1] if asked."""
        alpha_bar = self.alpha_bar(int(t))
        x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        return x0.clamp(-1, 1) if self.clip_sample else x0

    @staticmethod
    def _noise(x, generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def step(self, eps, t, x, generator=None) -> torch.Tensor:
        raise NotImplementedError


class DDPMScheduler(NoiseScheduler):
    """Ancestral sampling from the posterior q(x_{t-1} | x_t, x0) with its variance (Ho et al.,
    eq. 7, "fixed_small"). With fewer than T timesteps it steps between the visited ones with the
    betas those jumps imply (as diffusers)."""

    def posterior_mean(self, eps, t, x) -> torch.Tensor:
        t = int(t)
        alpha_bar, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(self.previous_timestep(t))
        alpha = alpha_bar / alpha_bar_prev
        x0 = self.predict_x0(eps, t, x)
        return (math.sqrt(alpha_bar_prev) * (1 - alpha) / (1 - alpha_bar) * x0
                + math.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar) * x)

    def posterior_variance(self, t) -> float:
        t = int(t)
        alpha_bar, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(self.previous_timestep(t))
        return (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)

    def step(self, eps, t, x, generator=None):
        mean = self.posterior_mean(eps, t, x)
        variance = self.posterior_variance(t)
        if variance <= 0:
            return mean
        return mean + math.sqrt(variance) * self._noise(x, generator)


class DDIMScheduler(NoiseScheduler):
    """Song et al.'s generalised sampler (eq. 12): eta = 0 is deterministic, eta = 1 with every
    timestep is the DDPM ancestral sampler. After clipping x0 the noise is re-derived from it (as
    guided-diffusion), which keeps that equivalence exact."""

    def __init__(self, *args, eta: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.eta = eta

    def step(self, eps, t, x, generator=None, eta: float | None = None):
        eta = self.eta if eta is None else eta
        t = int(t)
        alpha_bar, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(self.previous_timestep(t))
        x0 = self.predict_x0(eps, t, x)
        eps = (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        sigma = eta * math.sqrt(max(variance, 0.0))
        x_prev = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(max(1 - alpha_bar_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x_prev = x_prev + sigma * self._noise(x, generator)
        return x_prev
