"""Methods that need no training: OpenCV Telea and Navier-Stokes, scikit-image biharmonic."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from facefill.methods.base import Inpainter
from facefill.registry import register_method


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


class _PerImageInpainter(Inpainter):
    """Runs a numpy routine on each image of the batch; works at any size."""

    size = None

    def fill_one(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, image, mask):
        fills = []
        for one_image, one_mask in zip(image, mask):
            hole = one_mask[0].cpu().numpy() > 0.5
            fill = self.fill_one(_to_uint8(one_image), hole)
            fills.append(torch.from_numpy(fill).permute(2, 0, 1).float() / 255.0)
        return torch.stack(fills).to(image.device)


class _OpenCVInpainter(_PerImageInpainter):
    flag: int
    radius = 5

    def fill_one(self, image, hole):
        return cv2.inpaint(image, hole.astype(np.uint8) * 255, self.radius, self.flag)


@register_method("telea")
class Telea(_OpenCVInpainter):
    """Fast marching (Telea 2004), ``cv2.INPAINT_TELEA``."""

    flag = cv2.INPAINT_TELEA


@register_method("navier-stokes")
class NavierStokes(_OpenCVInpainter):
    """Fluid-dynamics inpainting (Bertalmio et al. 2001), ``cv2.INPAINT_NS``."""

    flag = cv2.INPAINT_NS


@register_method("biharmonic")
class Biharmonic(_PerImageInpainter):
    """Biharmonic equation fill, ``skimage.restoration.inpaint_biharmonic``."""

    def fill_one(self, image, hole):
        from skimage.restoration import inpaint_biharmonic

        if not hole.any():
            return image
        filled = inpaint_biharmonic(image.astype(np.float64) / 255.0, hole, channel_axis=-1)
        return (filled * 255.0).round().clip(0, 255).astype(np.uint8)
