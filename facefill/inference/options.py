"""``FillOptions``: the sampling settings of one fill call, passed to ``Inpainter.inpaint``.

Settings travel as an argument (as diffusers' ``DDIMPipeline.__call__``), never as attributes
set on a model from outside: a method reads what it uses (``Inpainter.option_names``) from the
value it is handed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)

SAMPLERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class FillOptions:
    """steps: sampling steps (diffusion) or latent-search iterations (wgan); None = the method's
    default. sampler: ``ddim`` or ``ddpm`` (ancestral; all T steps unless ``steps``). eta: DDIM
    noise (None = the weights' setting). seed: every generator the fill draws from. amp: bf16
    autocast for the networks."""

    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    seed: int = 0
    amp: bool = False

    def __post_init__(self):
        if self.steps is not None and (isinstance(self.steps, bool) or int(self.steps) != self.steps
                                       or self.steps < 1):
            raise ValueError(f"--steps must be a positive integer, got {self.steps}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.eta is not None and not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


def warn_unused(inpainter, options: FillOptions) -> None:
    """A warning for each setting given that the method does not use (it is ignored)."""
    used = set(getattr(inpainter, "option_names", ()))
    name = getattr(inpainter, "name", "") or type(inpainter).__name__
    for setting in ("steps", "sampler", "eta"):
        if getattr(options, setting) is not None and setting not in used:
            log.warning("method %s takes no --%s; ignored", name, setting)


def sweep_options(inpainter, setting: int | str, base: FillOptions = FillOptions()) -> FillOptions:
    """One point of a speed/quality sweep, strictly: an integer is the sampling steps (DDIM for
    diffusion methods, latent-search iterations for wgan); ``"ddpm"`` is ancestral DDPM over all T
    timesteps. Raises ValueError for a method the setting would not change."""
    name = getattr(inpainter, "name", "") or type(inpainter).__name__
    used = set(getattr(inpainter, "option_names", ()))
    if isinstance(setting, str) and setting.strip().lower() == "ddpm":
        if "sampler" not in used:
            raise ValueError(f"method {name!r} has no sampler to switch to ancestral DDPM "
                             f"(only diffusion methods, e.g. ddpm-ffc, take 'ddpm')")
        return replace(base, sampler="ddpm", steps=None)
    try:
        steps = int(setting)
    except (TypeError, ValueError):
        raise ValueError(f"a sampling setting is a positive integer or 'ddpm', got {setting!r}") from None
    if steps < 1:
        raise ValueError(f"sampling steps / iterations must be at least 1, got {steps}")
    if "steps" not in used:
        raise ValueError(f"method {name!r} takes no sampling steps or iterations (only diffusion and "
                         f"latent-search methods, e.g. ddpm-ffc, wgan, do)")
    return replace(base, steps=steps, sampler="ddim" if "sampler" in used else None)
