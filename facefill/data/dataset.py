"""Training data: prepared face crops held in memory, masks drawn on the fly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facefill.imaging import read_rgb, resize_rgb

MIX_KINDS = ("center", "random-box", "irregular")


def list_split(data: str | Path, split: str) -> list[Path]:
    folder = Path(data) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; run `facefill prepare SRC {data}` first")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"{folder}: no images")
    return files


def draw_mask(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    from facefill.data.masks import make_mask

    if kind == "mix":
        kind = MIX_KINDS[rng.integers(len(MIX_KINDS))]
    return make_mask(kind, rng, size)


class FaceDataset(Dataset):
    """Images resized to ``size``, random horizontal flips, and masks of ``mask_kind``:
    drawn from torch's RNG (so seeded and resumable) or, with ``fixed_masks``, from
    ``default_rng([seed, index])`` so validation sees the same holes every time."""

    def __init__(self, files, size: int, mask_kind: str = "center", flip: bool = True,
                 fixed_masks: bool = False, seed: int = 0):
        self.images = np.stack([resize_rgb(read_rgb(f), (size, size)) for f in files])
        self.size, self.mask_kind, self.flip = size, mask_kind, flip
        self.fixed_masks, self.seed = fixed_masks, seed

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(255.0)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        seed = [self.seed, index] if self.fixed_masks else int(torch.randint(2 ** 62, ()))
        mask = draw_mask(self.mask_kind, np.random.default_rng(seed), self.size)
        return {"image": image, "mask": torch.from_numpy(mask).float()[None]}
