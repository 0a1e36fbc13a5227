"""The Python API behind ``facefill.load``: a loaded method with ``fill(image, mask)`` on numpy
arrays or PIL images, through the same pipeline as ``facefill inpaint``."""
from __future__ import annotations

import numpy as np
from PIL import Image

from facefill.data.folders import mask_values_to_hole, to_rgb_alpha
from facefill.devices import resolve_device
from facefill.inference.fitting import PasteSettings, fill_batch
from facefill.inference.loading import Loaded, load_inpainter
from facefill.inference.options import FillOptions, warn_unused


class FaceFill:
    """A method ready to fill photos. ``name``, ``size`` (native; None = any), ``source``
    (builtin | shipped | weights), ``weights`` and ``meta`` say what was loaded."""

    def __init__(self, loaded: Loaded, device):
        self.loaded = loaded
        self.device = device

    name = property(lambda self: self.loaded.name)
    size = property(lambda self: getattr(self.loaded.inpainter, "size", None))
    source = property(lambda self: self.loaded.source)
    weights = property(lambda self: self.loaded.weights)
    meta = property(lambda self: self.loaded.meta)

    def fill(self, image, mask, *, steps: int | None = None, sampler: str | None = None, eta: float | None = None,
             seed: int = 0, amp: bool = False, aligned: bool = False, dilate: int = 0, feather: int = 0,
             invert_mask: bool = False):
        """``image``: a PIL image or an HxW / HxWx3 / HxWx4 uint8 array; ``mask``: a PIL image or an
        HxW array, white (> 127, or 1 in a 0/1 mask, or True) = hole, same size as the image.
        Returns the filled image as the same kind (PIL in, PIL out; an alpha channel is kept).
        Only pixels in the hole (grown by ``dilate``) change."""
        options = FillOptions(steps=steps, sampler=sampler, eta=eta, seed=seed, amp=amp)
        warn_unused(self.loaded.inpainter, options)
        rgb, alpha, grey = _as_rgb(image)
        hole = _as_hole(mask, invert_mask)
        if hole.shape != rgb.shape[:2]:
            raise ValueError(f"mask is {hole.shape[1]}x{hole.shape[0]}, image is {rgb.shape[1]}x{rgb.shape[0]}")
        filled = fill_batch(self.loaded.inpainter, [rgb], [hole], self.device, 1, options,
                            PasteSettings(aligned, dilate, feather))[0]
        return _like(image, filled, alpha, grey)

    def __repr__(self) -> str:
        return f"FaceFill({self.name!r}, size={self.size}, source={self.source!r}, weights={self.weights!r})"


def load(name: str = "default", device: str = "auto", weights: str | None = None) -> FaceFill:
    """``name``: ``"default"`` (the best shipped learned method, else telea), a method name
    (``"telea"``, ``"dense-gan"`` ...) or a weights file path; ``device``: auto | cpu | cuda."""
    device = resolve_device(device)
    return FaceFill(load_inpainter(name, weights, device), device)


def _as_rgb(image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    if isinstance(image, Image.Image):
        rgb, alpha = to_rgb_alpha(image)
        return rgb, alpha, False
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2), None, True
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3]), (array[..., 3] if array.shape[2] == 4 else None), False
    raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {array.shape}")


def _as_hole(mask, invert: bool) -> np.ndarray:
    if isinstance(mask, Image.Image):
        rgb, alpha = to_rgb_alpha(mask)
        return mask_values_to_hole(np.asarray(Image.fromarray(rgb).convert("L")), alpha, invert)
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"expected an HxW mask, got shape {array.shape}")
    if array.dtype == bool:
        return ~array if invert else array
    return mask_values_to_hole(array, None, invert)


def _like(original, filled: np.ndarray, alpha, grey: bool):
    if isinstance(original, Image.Image):
        result = Image.fromarray(filled)
        if alpha is not None:
            result.putalpha(Image.fromarray(alpha))
        return result
    if grey:  # equal channels outside the hole: their grey value is the input's exactly
        return np.asarray(Image.fromarray(filled).convert("L"))
    return np.concatenate([filled, alpha[..., None]], axis=2) if alpha is not None else filled
