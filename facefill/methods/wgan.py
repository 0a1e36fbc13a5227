"""wgan: semantic inpainting by latent optimisation (Yeh et al., "Semantic Image Inpainting with
Deep Generative Models", CVPR 2017) with a Wasserstein GAN prior (Arjovsky et al. 2017; gradient
penalty of Gulrajani et al., "Improved Training of Wasserstein GANs", 2017).

Training learns an unconditional DCGAN-shaped generator G(z) and critic D on whole faces (the
batch's masks are ignored). One engine step is one generator iteration: ``n_critic`` critic
updates, then one generator update. The critic updates either all reuse the step's real batch
with fresh noise each (``critic_batches="reuse"``, default: full-size batches for the penalty's
statistics) or take ``n_critic`` disjoint slices of it (``"split"``: each real image seen once).

Inpainting finds, per image, z* = argmin_z L_context(z) + lam * L_perceptual(z) with
L_context = mean over known pixels of |G(z) - y| and L_perceptual = -D(G(z)), by Adam on z from
``restarts`` random starts (the best final context loss wins), then Poisson-blends G(z*) into
the hole. ``lam = 0.003`` as in Yeh et al.: with the gradient penalty ||grad D|| ~ 1, while the
per-pixel mean L1 has gradient norm 1/sqrt(3 * known pixels) ~ 0.01 at 64 px, so the prior pulls
about a third as hard as the context: the balance the paper's setting aims at (context first,
realism second). z is Gaussian in training and left unconstrained during the search (Yeh et al.
clip a uniform z to [-1, 1]); the critic term is what keeps G(z) on the face manifold.

Cost: every iteration is a generator and critic forward and backward per (image, restart);
``iterations`` (default 100, the paper 1500) and ``restarts`` trade speed for quality, and the
``steps`` attribute (``facefill inpaint --steps N``) overrides the iterations at run time.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facefill.blending import BLEND_MODES, blend_fill
from facefill.inference.options import FillOptions
from facefill.methods.base import TrainableInpainter
from facefill.nn.blocks import conv_bn_act
from facefill.registry import register_method

PENALTIES = ("gp", "clip")
CRITIC_NORMS = ("layer", "none")
CRITIC_BATCHES = ("reuse", "split")
CONTEXT_WEIGHTINGS = ("uniform", "importance")


@dataclass(frozen=True)
class WGANConfig:
    size: int = 64                     # the prior trains better at 64 px than at 128
    latent_dim: int = 100
    gen_channels: int = 64             # DCGAN: 512-256-128-64 at 64 px
    critic_channels: int = 64
    critic_norm: str = "layer"         # layer | none (no BatchNorm: the penalty is per sample)
    penalty: str = "gp"                # gp (WGAN-GP) | clip (original WGAN)
    gp_weight: float = 10.0
    clip_value: float = 0.01
    n_critic: int = 5
    critic_batches: str = "reuse"      # reuse | split (see the module docstring)
    lr: float = 1e-4                   # Adam, WGAN-GP
    betas: tuple = (0.5, 0.9)
    clip_lr: float = 5e-5              # RMSprop, original WGAN
    # inpainting
    iterations: int = 100              # Adam steps on z (Yeh et al.: 1500; 100 keeps CPU runs sane)
    restarts: int = 2                  # random starts per image
    lam: float = 0.003                 # weight of the critic's perceptual term
    z_lr: float = 0.03
    context_weighting: str = "uniform"  # uniform | importance (Yeh et al.'s 7x7 hole-proximity weights)
    blend: str = "poisson"             # poisson | none (plain compositing)

    def __post_init__(self):
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"wgan needs a power-of-two size >= 8, got {self.size}")
        for name, allowed in (("penalty", PENALTIES), ("critic_norm", CRITIC_NORMS),
                              ("critic_batches", CRITIC_BATCHES), ("context_weighting", CONTEXT_WEIGHTINGS),
                              ("blend", BLEND_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.n_critic < 1 or self.restarts < 1 or self.iterations < 0:
            raise ValueError("n_critic and restarts must be >= 1 and iterations >= 0")


class DCGANGenerator(nn.Module):
    """z -> 4x4 (transposed conv) -> doubling transposed convs with BN + ReLU -> tanh image."""

    def __init__(self, size: int, latent_dim: int = 100, base: int = 64):
        super().__init__()
        ups = int(math.log2(size // 4))
        widths = [base * 2 ** i for i in reversed(range(ups))]  # e.g. 512, 256, 128, 64
        layers = [conv_bn_act(latent_dim, widths[0], 4, 1, 0, transpose=True)]
        for in_ch, out_ch in zip(widths, widths[1:]):
            layers.append(conv_bn_act(in_ch, out_ch, 4, 2, 1, transpose=True))
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z):
        return self.net(z.view(len(z), -1, 1, 1))


class WassersteinCritic(nn.Module):
    """DCGAN discriminator without BatchNorm (the gradient penalty is per sample): stride-2 4x4
    convs, optional LayerNorm over (C, H, W), LeakyReLU, a linear score (no sigmoid)."""

    def __init__(self, size: int, base: int = 64, norm: str = "layer"):
        super().__init__()
        depth = int(math.log2(size // 4))
        layers, ch, side = [], 3, size
        for i in range(depth):
            out_ch = base * 2 ** i
            side //= 2
            layers.append(nn.Conv2d(ch, out_ch, 4, 2, 1))
            if norm == "layer" and i > 0:
                layers.append(nn.GroupNorm(1, out_ch))  # one group = LayerNorm over C, H, W
            layers.append(nn.LeakyReLU(0.2))
            ch = out_ch
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(ch * side * side, 1)

    def forward(self, x):
        return self.score(self.features(x).flatten(1)).squeeze(1)


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Gulrajani et al.: E[(||grad_x D(x)||_2 - 1)^2] at x = eps * real + (1 - eps) * fake,
    eps ~ U[0, 1] per sample, drawn on ``real``'s device (or ``generator``'s). Differentiable
    (create_graph) so the critic can be trained on it."""
    device = real.device if generator is None else generator.device
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator, device=device).to(real)
    interpolates = (eps * real + (1 - eps) * fake).requires_grad_(True)
    scores = critic(interpolates)
    grad, = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def context_weights(mask: torch.Tensor, mode: str = "uniform", window: int = 7) -> torch.Tensor:
    """Weights of the known pixels in L_context (the hole weighs 0): 1 each (``uniform``), or Yeh
    et al.'s importance weighting, the fraction of hole pixels in the ``window`` around each."""
    known = 1 - mask
    if mode == "uniform":
        return known
    near_hole = F.avg_pool2d(mask, window, 1, window // 2, count_include_pad=False)
    return known * near_hole


@register_method("wgan", config=WGANConfig)
class WGANInpainter(TrainableInpainter):
    option_names = ("steps", "seed")  # steps: latent-search iterations (default: the config's)

    def __init__(self, config: WGANConfig):
        super().__init__(config)
        self.generator = DCGANGenerator(config.size, config.latent_dim, config.gen_channels)
        self.critic = WassersteinCritic(config.size, config.critic_channels, config.critic_norm)

    def inference_modules(self):
        return {"generator": self.generator, "critic": self.critic}  # the critic scores realism at inference

    # ------------------------------------------------------------ training
    def configure_optimizers(self):
        config = self.config
        if config.penalty == "clip":
            def make(module):
                return torch.optim.RMSprop(module.parameters(), lr=config.clip_lr)
        else:
            make = self.adam
        self.optimizers = {"generator": make(self.generator), "critic": make(self.critic)}
        return self.optimizers

    def sample_latents(self, count: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian latents on ``device``, drawn there (a host-to-device copy would synchronise) unless
        ``generator`` lives elsewhere (the seeded latent search draws on the CPU, for any device)."""
        draw_on = device if generator is None else generator.device
        return torch.randn(count, self.config.latent_dim, generator=generator, device=draw_on).to(device)

    def _real_batches(self, real: torch.Tensor) -> list[torch.Tensor]:
        n = self.config.n_critic
        if self.config.critic_batches == "split" and len(real) >= n:
            return list(real.chunk(n))
        return [real] * n

    def training_step(self, batch, step):
        """n_critic critic updates, then one generator update; "wasserstein" (the critic's estimate
        E[D(real)] - E[D(fake)]), "d_loss" and "gp" are means over the critic updates."""
        config = self.config
        real_all = batch["image"] * 2 - 1
        critic_logs = {"wasserstein": [], "d_loss": [], "gp": []}
        for real in self._real_batches(real_all):
            with torch.no_grad():
                fake = self.generator(self.sample_latents(len(real), real.device))
            wasserstein = self.critic(real).mean() - self.critic(fake).mean()
            d_loss = -wasserstein
            if config.penalty == "gp":
                penalty = gradient_penalty(self.critic, real, fake)
                d_loss = d_loss + config.gp_weight * penalty
                critic_logs["gp"].append(penalty.detach())
            self.optimise("critic", d_loss)
            if config.penalty == "clip":
                with torch.no_grad():
                    for parameter in self.critic.parameters():
                        parameter.clamp_(-config.clip_value, config.clip_value)
            critic_logs["wasserstein"].append(wasserstein.detach())
            critic_logs["d_loss"].append(d_loss.detach())
        logs = {name: torch.stack(values).mean() for name, values in critic_logs.items() if values}
        fake = self.generator(self.sample_latents(len(real_all), real_all.device))
        g_adv = -self.critic(fake).mean()
        self.optimise("generator", g_adv)
        logs.update(g_adv=g_adv.detach(), loss=g_adv.detach())
        return logs

    # ------------------------------------------------------------ inpainting
    @staticmethod
    def context_loss(generated: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted mean L1 over the known pixels (images in [-1, 1])."""
        weights = weights.expand_as(generated)
        weighted = (weights * (generated - target).abs()).flatten(1).sum(1)
        return weighted / weights.flatten(1).sum(1).clamp_min(1e-8)

    def optimise_latents(self, image: torch.Tensor, mask: torch.Tensor, iterations: int | None = None,
                         restarts: int | None = None, seed: int = 0):
        """Adam on z for every (image, restart) pair at once. Returns the best z per image (Bxd)
        and the mean context loss per iteration (a list, the first entry before any step). The latent
        starts are drawn from ``seed``: the search is reproducible."""
        config = self.config
        iterations = config.iterations if iterations is None else iterations
        restarts = config.restarts if restarts is None else restarts
        count = len(image)
        target = (image * 2 - 1).repeat_interleave(restarts, 0)
        weights = context_weights(mask, config.context_weighting).repeat_interleave(restarts, 0)
        rng = torch.Generator().manual_seed(int(seed))
        z = self.sample_latents(count * restarts, image.device, rng).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=config.z_lr)
        history = []
        with _frozen(self.generator, self.critic), torch.enable_grad():
            for _ in range(iterations):
                generated = self.generator(z)
                context = self.context_loss(generated, target, weights)
                loss = (context + config.lam * -self.critic(generated)).sum()  # per-sample terms: independent
                history.append(context.mean().item())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                final = self.context_loss(self.generator(z), target, weights)
        history.append(final.mean().item())
        best = final.view(count, restarts).argmin(1)
        chosen = z.detach().view(count, restarts, -1)[torch.arange(count, device=z.device), best]
        return chosen, history

    @torch.no_grad()
    def predict(self, image, mask, options: FillOptions = FillOptions()):
        z, _ = self.optimise_latents(image, mask, options.steps, seed=options.seed)
        with _frozen(self.generator, self.critic):
            fill = (self.generator(z) + 1) / 2
        return blend_fill(fill.clamp(0, 1), image, mask, self.config.blend)


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """Eval mode (BatchNorm's running statistics: images are optimised independently) and no
    parameter gradients, restored afterwards."""
    states = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    for module in modules:
        module.eval().requires_grad_(False)
    try:
        yield
    finally:
        for module, training, flags in states:
            module.train(training)
            for parameter, flag in zip(module.parameters(), flags):
                parameter.requires_grad_(flag)
