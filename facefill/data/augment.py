"""Batches made on the training device: the training set held there as one uint8 tensor,
batches gathered by index, framing/colour augmentation and masks drawn in batch from a
``torch.Generator`` on that device (saved in checkpoints), with no host synchronisation."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from facefill.data.dataset import MIXTURES, TrainingImages, epoch_order, mask_mixture
from facefill.data.masks import DEFAULT_AREAS, FACE_PART_KINDS, MASK_KINDS, make_mask, make_masks_torch

SCALE_RANGE = (0.8, 1.25)     # face size within the crop (log-uniform)
SHIFT = 0.1                   # translation, a fraction of the side either way
JITTER = 0.1                  # brightness, contrast and saturation factors in [1 - J, 1 + J]
TRAIN_MASK_KINDS = MASK_KINDS + tuple(MIXTURES)   # and comma-separated lists of MASK_KINDS
# Stroke masks are drawn once into a bank on the device and each batch takes bank masks under a
# random flip, transpose and (wrap-around) shift: drawing strokes every step would cost more than
# the step itself. The bank is built by the torch generator on CUDA, by the numpy one elsewhere.
BANK_SIZE = {"cuda": 8192}
BANK_SIZE_OTHER = 512
BANK_CHUNK = 256
BANKED_KINDS = tuple(DEFAULT_AREAS) + ("large",)


def check_mask_kind(kind: str) -> None:
    """A one-line ValueError unless ``kind`` is a kind, a mixture or a comma-separated list of kinds."""
    mask_mixture(kind)


def augment(images: torch.Tensor, generator: torch.Generator, labels: torch.Tensor | None = None,
            frame: bool = True, colour: bool = True):
    """Random flips, and with ``frame`` a random scale and shift of the face (reflected border),
    and with ``colour`` mild colour jitter, for a float batch Bx3xHxW in [0, 1]; ``labels``
    (B, H, W parsing maps) get the same flip and warp (nearest, background outside)."""
    flip = torch.rand(len(images), generator=generator, device=images.device) < 0.5
    if frame:
        images, labels = _reframe(images, labels, flip, generator)
    else:  # flips alone: no resampling
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if labels is not None:
            labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
    if colour:
        images = colour_jitter(images, generator)
    return images, labels


def _reframe(images, labels, flip, generator):
    """A random scale and shift of each face (and its flip) by one affine resampling."""
    batch, device = len(images), images.device
    sign = torch.where(flip, -1.0, 1.0)
    low, high = math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])
    scale = torch.exp(low + (high - low) * torch.rand(batch, generator=generator, device=device))
    shift = (torch.rand(batch, 2, generator=generator, device=device) * 2 - 1) * SHIFT * 2
    # output pixel p samples input at (p - shift) / scale, x mirrored when flipped
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = sign / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2] = -sign * shift[:, 0] / scale
    theta[:, 1, 2] = -shift[:, 1] / scale
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if labels is not None:
        labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)[:, 0].to(torch.uint8)
    return images, labels


def finish_loader_batch(batch: dict, device: torch.device, generator: torch.Generator, augment_images: bool,
                        channels_last: bool) -> dict:
    """A DataLoader batch (CPU workers drew its flips and masks) on ``device``: with
    ``augment_images`` the frame and colour augmentation made there, then channels-last if asked."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if augment_images:
        batch["image"], _ = augment(batch["image"], generator)
    if channels_last:
        batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in batch.items()}
    return batch


def reframe_pair(image: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One face (HxWx3 uint8) and its hole (HxW, true or 1 = hole; returned as bool) moved
    together by the training augmentation's scale and shift, drawn from ``seed``, without flip: a
    fixed test case of a face framed as users' photos frame it."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(255.0)
    moved, labels = _reframe(images, torch.from_numpy((mask > 0.5).astype(np.uint8))[None],
                             torch.zeros(1, dtype=torch.bool), generator)
    moved = moved[0].permute(1, 2, 0).mul(255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return moved, labels[0].numpy() > 0


def colour_jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    batch, device = len(images), images.device
    factors = 1 + (torch.rand(batch, 3, 1, 1, 1, generator=generator, device=device) * 2 - 1) * JITTER
    brightness, contrast, saturation = factors.unbind(1)
    images = images * brightness
    mean = images.mean((1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    grey = images.mean(1, keepdim=True)
    return ((images - grey) * saturation + grey).clamp(0, 1)


def draw_masks(kind: str, generator: torch.Generator, batch: int, size: int, device,
               labels: torch.Tensor | None = None, banks: dict | None = None) -> torch.Tensor:
    """Bx1xSxS float masks (1 = hole); a mixture (``mix``, ``full``, a comma list) draws each
    sample's kind uniformly from its kinds (face-part kinds from ``labels``); stroke kinds come
    from ``banks[kind]`` when given (see ``build_mask_bank``)."""
    kinds = mask_mixture(kind)
    if len(kinds) > 1:
        choice = torch.randint(len(kinds), (batch,), generator=generator, device=device)
        masks = torch.zeros(batch, size, size, dtype=torch.bool, device=device)
        for number, name in enumerate(kinds):
            drawn = draw_masks(name, generator, batch, size, device, labels, banks)[:, 0] > 0
            masks = torch.where((choice == number)[:, None, None], drawn, masks)
    elif banks and kind in banks:
        masks = from_bank(banks[kind], generator, batch)
    else:
        masks = make_masks_torch(kind, generator, batch, size, device, labels)
    return masks[:, None].float()


def bank_kinds(kind: str) -> tuple[str, ...]:
    return tuple(k for k in dict.fromkeys(mask_mixture(kind)) if k in BANKED_KINDS)


def build_mask_bank(kind: str, count: int, size: int, device, generator: torch.Generator) -> torch.Tensor:
    """``count`` stroke (or large) masks of ``kind`` (count x S x S bool) on ``device``."""
    if device.type == "cuda":
        chunks = [make_masks_torch(kind, generator, min(BANK_CHUNK, count - start), size, device)
                  for start in range(0, count, BANK_CHUNK)]
        return torch.cat(chunks)
    seeds = torch.randint(2 ** 62, (count,), generator=generator, device=device).tolist()
    masks = np.stack([make_mask(kind, np.random.default_rng(seed), size) for seed in seeds])
    return torch.from_numpy(masks).to(device)


def from_bank(bank: torch.Tensor, generator: torch.Generator, batch: int) -> torch.Tensor:
    """``batch`` bank masks, each flipped, transposed and shifted (wrapping round) at random."""
    device, size = bank.device, bank.shape[-1]
    index = torch.randint(len(bank), (batch,), generator=generator, device=device)
    masks = bank[index]
    flips = torch.rand(batch, 3, generator=generator, device=device) < 0.5
    masks = torch.where(flips[:, 0, None, None], masks.transpose(1, 2), masks)
    masks = torch.where(flips[:, 1, None, None], masks.flip(1), masks)
    masks = torch.where(flips[:, 2, None, None], masks.flip(2), masks)
    shift = torch.randint(size, (batch, 2), generator=generator, device=device)
    lines = torch.arange(size, device=device)
    rows = (lines[None] - shift[:, :1]) % size                                   # B, S
    cols = (lines[None] - shift[:, 1:]) % size
    masks = masks.gather(1, rows[:, :, None].expand(batch, size, size))
    return masks.gather(2, cols[:, None, :].expand(batch, size, size))


class DeviceBatches:
    """The training images on ``device`` and batches made there: ``batch(step)`` gathers the
    step's images (an order fixed by seed and epoch, as the loader path), augments them and draws
    their masks. ``state_dict`` holds the generator; resume restores it."""

    def __init__(self, data: TrainingImages, device: torch.device, mask_kind: str, batch_size: int,
                 seed: int = 0, rank: int = 0, world: int = 1, frame: bool = False, colour: bool = False,
                 channels_last: bool = False):
        check_mask_kind(mask_kind)
        self.images = torch.from_numpy(data.images).to(device)                     # N, S, S, 3 uint8
        self.weights = data.weights
        self.parsing = torch.from_numpy(data.parsing).to(device) if data.parsing is not None else None
        self.parsing_index = torch.from_numpy(data.parsing_index).to(device)
        self.device, self.kind, self.batch_size = device, mask_kind, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.frame, self.colour, self.channels_last = frame, colour, channels_last
        self.size = self.images.shape[1]
        self.needs_labels = any(kind in FACE_PART_KINDS for kind in mask_mixture(mask_kind))
        self.steps_per_epoch = len(self.images) // (batch_size * world)
        self.generator = torch.Generator(device=device).manual_seed(seed + rank)
        self._epoch, self._order = None, None
        count = BANK_SIZE.get(device.type, BANK_SIZE_OTHER)
        self.banks = {kind: build_mask_bank(kind, count, self.size, device, self.generator)
                      for kind in bank_kinds(mask_kind)}

    def order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            count = self.steps_per_epoch * self.batch_size * self.world
            order = epoch_order(self.weights, self.seed, epoch, count)
            self._order = torch.from_numpy(np.ascontiguousarray(order)).to(self.device)
            self._epoch = epoch
        return self._order

    def batch(self, step: int) -> dict:
        epoch, within = divmod(step, self.steps_per_epoch)
        start = (within * self.world + self.rank) * self.batch_size
        index = self.order(epoch)[start:start + self.batch_size]
        return self.make(index)

    def make(self, index: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The batch of these images; ``generator`` (default: the training one) draws its randomness."""
        generator = generator or self.generator
        images = self.images[index].permute(0, 3, 1, 2).float().div(255.0)
        labels = self._labels(index, generator) if self.needs_labels else None
        images, labels = augment(images, generator, labels, frame=self.frame, colour=self.colour)
        masks = draw_masks(self.kind, generator, len(index), self.size, self.device, labels, self.banks)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.contiguous(memory_format=torch.channels_last)
        return {"image": images, "mask": masks}

    def _labels(self, index, generator):
        """Each image's own parsing map, or a random one from the set's maps (None: geometric)."""
        if self.parsing is None:
            return None
        own = self.parsing_index[index]
        other = torch.randint(len(self.parsing), (len(index),), generator=generator, device=self.device)
        return self.parsing[torch.where(own >= 0, own, other)]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "device": self.device.type}

    def load_state_dict(self, state: dict, step: int) -> bool:
        """Restore the generator; False (reseeded from seed and step) when saved on another device type."""
        if state.get("device") == self.device.type:
            self.generator.set_state(state["generator"])
            return True
        self.generator.manual_seed(self.seed + self.rank + 1_000_003 * step)
        return False
