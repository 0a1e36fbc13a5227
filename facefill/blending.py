"""Poisson blending of a generated fill into an image's hole (Pérez et al. 2003), as GLCIC
(Iizuka et al. 2017) and Yeh et al. (2017) post-process their completions; OpenCV's
``seamlessClone`` (NORMAL_CLONE) does the solve."""
from __future__ import annotations

import cv2
import numpy as np
import torch

# OpenCV erodes the clone mask by three 3x3 steps before it takes the source's gradients, so
# the mask is the hole grown by four pixels: the fill's gradients then govern the whole hole
# and the boundary values come from known pixels just outside it.
MARGIN = 4
PAD = MARGIN + 2  # known pixels kept around the grown mask (seamlessClone zeroes the mask's outermost pixel)
BLEND_MODES = ("poisson", "none")


def poisson_blend(fill: np.ndarray, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``fill`` blended into ``image`` inside ``hole`` (HxWx3 uint8, HxW bool; True = hole).

    Pixels outside the hole are returned unchanged. The solve runs on the hole's bounding region
    (grown by a few known pixels); where that region meets the image border it is mirrored
    outwards, so a border hole is enclosed by mirrored known pixels and solved as if the image
    went on (a Neumann-like edge). An empty hole returns the image, a hole with no known pixel
    the fill.
    """
    hole = np.asarray(hole, bool)
    result = image.copy()
    if not hole.any():
        return result
    if hole.all():
        return fill.copy()
    composite = np.where(hole[..., None], fill, image)
    (top, bottom), (left, right) = _extent(hole, 0), _extent(hole, 1)
    rows = slice(max(top - PAD, 0), min(bottom + PAD, hole.shape[0]))
    cols = slice(max(left - PAD, 0), min(right + PAD, hole.shape[1]))
    height, width = rows.stop - rows.start, cols.stop - cols.start
    # Mirror a clipped side by the whole region (less one: reflect-101), so the mirrored hole
    # keeps the known margin of the region's far side around it.
    pads = (height - 1 if top - PAD < 0 else 0, height - 1 if bottom + PAD > hole.shape[0] else 0,
            width - 1 if left - PAD < 0 else 0, width - 1 if right + PAD > hole.shape[1] else 0)
    source, target, region = (_pad(a[rows, cols], pads)
                              for a in (fill, composite, hole.astype(np.uint8) * 255))
    clone_mask = cv2.dilate(region, np.ones((3, 3), np.uint8), iterations=MARGIN)
    clone_mask[[0, -1], :] = 0
    clone_mask[:, [0, -1]] = 0
    x, y, box_w, box_h = cv2.boundingRect(clone_mask)
    # seamlessClone pastes the mask's bounding box at centre - size // 2: this centre keeps it in place.
    centre = (x + box_w // 2, y + box_h // 2)
    blended = cv2.seamlessClone(source, target, clone_mask, centre, cv2.NORMAL_CLONE)
    blended = blended[PAD + pads[0]:PAD + pads[0] + height, PAD + pads[2]:PAD + pads[2] + width]
    window = result[rows, cols]
    window[hole[rows, cols]] = blended[hole[rows, cols]]
    return result


def _pad(array: np.ndarray, pads) -> np.ndarray:
    """Mirror by ``pads`` (top, bottom, left, right), then repeat the edge ``PAD`` times: the
    mirrored region's far side may be a thin strip of known pixels, and the clone mask needs
    ``PAD`` known pixels around every hole pixel (else the hole's seam leaks into the solve)."""
    mirrored = cv2.copyMakeBorder(np.ascontiguousarray(array), *pads, cv2.BORDER_REFLECT_101)
    return cv2.copyMakeBorder(mirrored, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)


def _extent(hole: np.ndarray, axis: int) -> tuple[int, int]:
    """First and one-past-last index along ``axis`` holding a hole pixel."""
    present = np.flatnonzero(hole.any(axis=1 - axis))
    return int(present[0]), int(present[-1]) + 1


def blend_fill(fill: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
               mode: str = "poisson") -> torch.Tensor:
    """Batch form on [0, 1] tensors (Bx3xHxW, mask Bx1xHxW, 1 = hole): the fill with its hole
    region Poisson-blended (``mode="poisson"``) or unchanged (``"none"``, plain compositing)."""
    if mode not in BLEND_MODES:
        raise ValueError(f"blend must be one of {', '.join(BLEND_MODES)}, got {mode!r}")
    if mode == "none":
        return fill
    out = []
    for one_fill, one_image, one_mask in zip(fill, image, mask):
        blended = poisson_blend(_uint8(one_fill), _uint8(one_image), one_mask[0].detach().cpu().numpy() > 0.5)
        out.append(torch.from_numpy(blended).permute(2, 0, 1).float() / 255.0)
    blended = torch.stack(out).to(fill.device, fill.dtype)
    return mask * blended + (1 - mask) * fill


def _uint8(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
