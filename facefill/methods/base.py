"""The one interface every method implements (see DESIGN.md)."""
from __future__ import annotations

import torch
from torch import nn

from facefill.inference.options import FillOptions


class Inpainter:
    """Classical and learned alike: images Bx3xHxW in [0, 1], masks Bx1xHxW with 1 = hole."""

    name: str = ""
    trainable = False
    size: int | None = None  # native resolution; None = any size
    #: the FillOptions fields ``predict`` reads (steps, sampler, eta, seed); a method that lists
    #: any gets ``predict(image, mask, options)``, the others ``predict(image, mask)``
    option_names: tuple[str, ...] = ()

    def predict(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The raw fill, same shape as ``image``."""
        raise NotImplementedError

    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, options: FillOptions | None = None) -> torch.Tensor:
        """The composite: ``image`` outside the hole, the fill (float32, in [0, 1]) inside; the
        networks run under bf16 autocast when ``options.amp``."""
        options = options or FillOptions()
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=options.amp):
            fill = self.predict(image, mask, options) if self.option_names else self.predict(image, mask)
        fill = fill.to(image.dtype).clamp(0, 1)
        return mask * fill + (1 - mask) * image

    def to_device(self, device: torch.device) -> "Inpainter":
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class TrainableInpainter(Inpainter, nn.Module):
    """A learned method. ``training_step`` owns its G/D turns, losses and backward passes."""

    trainable = True

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.size = config.size
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor | float]:
        """One optimisation step on ``batch`` ({image, mask}); returns the step's logs by name.

        Loss values are detached 0-dim tensors left on the device (``loss.detach()``), and values
        the host already knows (a learning rate, a phase) plain numbers. A step never moves a device
        value to the host: no ``.item()``, ``float()``, ``.tolist()``, ``.cpu()``, no Python ``if`` on a
        tensor, no host tensor copied to the device. Each of these waits for the device to finish
        its queued work; the trainer converts the logs once, on the steps it logs."""
        raise NotImplementedError

    def prepare_inference(self) -> None:
        """Called once a method is loaded for inference alone (never for training): a place to
        build faster inference-only forms of its networks. Nothing by default."""

    def inference_modules(self) -> dict[str, nn.Module]:
        """The sub-networks inference needs (the generator; not the discriminators)."""
        raise NotImplementedError

    def export_state(self) -> dict:
        return {name: {k: v.detach().cpu() for k, v in module.state_dict().items()}
                for name, module in self.inference_modules().items()}

    def load_export_state(self, state: dict) -> None:
        modules = self.inference_modules()
        missing = set(modules) - set(state)
        if missing:
            raise ValueError(f"weights lack module(s): {', '.join(sorted(missing))}")
        for name, module in modules.items():
            module.load_state_dict(state[name])

    def adam(self, module: nn.Module, betas: tuple | None = None) -> torch.optim.Adam:
        """Adam over ``module`` with the config's ``lr`` and ``betas`` (the papers' optimiser): the
        fused kernel on CUDA, the multi-tensor (foreach) one elsewhere."""
        parameters = list(module.parameters())
        on_cuda = bool(parameters) and all(p.device.type == "cuda" for p in parameters)
        speed = {"fused": True} if on_cuda else {"foreach": True}
        return torch.optim.Adam(parameters, lr=self.config.lr, betas=tuple(betas or self.config.betas), **speed)

    def optimise(self, name: str, loss: torch.Tensor, clip: float | None = None) -> None:
        """zero_grad, backward, gradient averaging across ranks, optional clipping, step."""
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        average_gradients(parameters)
        if clip:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        optimizer.step()

    def to_device(self, device):
        return self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def average_gradients(parameters) -> None:
    """Sum gradients over torch.distributed ranks and divide by the world size: what
    DistributedDataParallel does, done per optimiser step because GAN methods run several
    forwards per step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(world)


class GeneratorInpainter(TrainableInpainter):
    """A method whose inference is one feed-forward generator on (masked image, mask) in [-1, 1]."""

    generator: nn.Module

    def inference_modules(self):
        return {"generator": self.generator}

    def generate(self, image, mask):
        """Generator output in [-1, 1] for [0, 1] images; the hole is zeroed before it is seen."""
        known = (image * 2 - 1) * (1 - mask)
        return self.run_generator(torch.cat([known, mask], 1))

    def run_generator(self, inputs):
        """The generator on (masked image, mask); a method may run a faster inference form here."""
        return self.generator(inputs)

    @torch.no_grad()
    def predict(self, image, mask):
        return (self.generate(image, mask) + 1) / 2

    def calibration_forward(self, batch: dict) -> None:
        """The inference networks on a training batch, as training runs them: what re-estimating
        their BatchNorm statistics (``train --ema``) passes through them."""
        self.generate(batch["image"], batch["mask"])
