"""Conversions between uint8 HxWxC arrays, PIL images and [0, 1] NCHW tensors."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xHxW float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """HxW bool (True = hole) -> 1x1xHxW float."""
    return torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """3xHxW (or 1x3xHxW) float in [0, 1] -> HxWx3 uint8."""
    if image.dim() == 4:
        image = image[0]
    return image.detach().clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def _read(path, mode: str) -> np.ndarray:
    """Decode ``path`` to ``mode``; a truncated or unreadable file is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode image, truncated or not an image "
                         f"({error.__class__.__name__})") from None


def read_rgb(path) -> np.ndarray:
    """A plain RGB read for trusted files (prepared data sets); user input goes through folders.py."""
    return _read(path, "RGB")


def read_mask(path) -> np.ndarray:
    """A stored mask PNG (white = hole) -> HxW bool."""
    return _read(path, "L") > 127


def mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize HxWx3 uint8 to (height, width) with a Lanczos/area filter as appropriate."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))
