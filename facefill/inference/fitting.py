"""The one fit-to-model and paste-back path (DESIGN.md): ``inpaint``, ``eval``, ``bench`` and the
Python API all fill through :func:`fill_batch`, so eval scores exactly what inpaint writes.

Per image:

1. the hole is grown by ``dilate`` pixels (:class:`PasteSettings`);
2. it is split into fits. With ``aligned`` (pre-cropped faces, and eval's test splits) there is
   one: the image's square (the whole image when square, else the square of the short side
   around the hole). Otherwise faces are detected (:mod:`facefill.inference.faces`); each
   connected part of the hole goes to the face whose box it overlaps most, and each such face is
   cropped in the framing the model was trained on, turned level by its eyes. Parts that cover no
   face are fitted by the square of twice their extent around them (``context_box``);
3. each fit warps image and hole to the model's square with a similarity transform (area
   averaging first when shrinking; the hole grown by one source footprint, so a fitted pixel that
   touches a hole pixel is a hole and no known pixel mixes in occluder pixels); hole pixels are
   zeroed before the method runs (it never sees what the hole holds);
4. the fill is warped back (bicubic) and composited: pixels outside the (dilated) hole never
   change; inside, the fill's weight ramps from 0 at the hole's edge to 1 over ``feather``
   pixels (``feather=0``: the fill replaces every hole pixel).

Methods that take any size (``inpainter.size`` None: the classical ones) fill at full resolution.
A fully convolutional method with ``fill_size(side, depth)`` (ffc-unet-gan) fills each crop at the
size it picks for the crop's side and the hole's depth (:func:`hole_depth`), both in photo pixels.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facefill.inference.faces import Framing, crop_side, detect_faces, face_transform, framing_for
from facefill.inference.options import FillOptions

FACE_BOX_GROWTH = 1.5   # a hole part belongs to a face when it overlaps its Haar box grown by this
HOLE_CONTEXT = 2.0      # a hole on no face is fitted in a square of twice its extent


@dataclass(frozen=True)
class PasteSettings:
    """How a photo is fitted and pasted back: ``aligned`` skips face detection; ``dilate`` grows
    the hole (pixels) before filling; ``feather`` is the width of the soft edge inside it."""

    aligned: bool = False
    dilate: int = 0
    feather: int = 0

    def __post_init__(self):
        for name in ("dilate", "feather"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"--{name} must be a whole number of pixels >= 0, got {value}")


@dataclass
class Fit:
    """One crop of one image as the model sees it, and how to map it back."""

    index: int                      # the image's position in the batch
    matrix: np.ndarray | None       # 2x3, photo -> model square; None: full resolution
    hole: np.ndarray                # HxW bool: the photo's hole pixels this fit fills
    image: np.ndarray               # SxSx3 uint8 (or the whole photo)
    mask: np.ndarray                # SxS bool, True = hole


# --------------------------------------------------------------------------------- transforms

def _check_pair(image, mask) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    mask = np.asarray(mask).astype(bool, copy=False)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
    return image, mask


def hole_bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The hole's bounding box (top, bottom, left, right), ends exclusive; the mask has a hole."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def crop_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The square (top, bottom, left, right) to fit: the short side's square centred on the
    hole's bounding box, or the whole image when square or when the hole does not fit."""
    height, width = mask.shape
    if height == width or not mask.any():
        return 0, height, 0, width
    side = min(height, width)
    y0, y1, x0, x1 = hole_bounds(mask)
    if y1 - y0 > side or x1 - x0 > side:
        return 0, height, 0, width
    top = int(np.clip(round((y0 + y1 - side) / 2), 0, height - side))
    left = int(np.clip(round((x0 + x1 - side) / 2), 0, width - side))
    return top, top + side, left, left + side


def context_box(mask: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """For a hole on no detected face: the square centred on the hole with ``HOLE_CONTEXT`` times
    its extent (the training holes' share of a crop: a centre hole is half the side), at least
    the model's ``size``, shifted inside the image; the short side's square when larger."""
    height, width = mask.shape
    y0, y1, x0, x1 = hole_bounds(mask)
    side = max(HOLE_CONTEXT * max(y1 - y0, x1 - x0), size)
    if side >= min(height, width):
        return crop_box(mask)
    side = int(math.ceil(side))
    top = int(np.clip(round((y0 + y1 - side) / 2), 0, height - side))
    left = int(np.clip(round((x0 + x1 - side) / 2), 0, width - side))
    return top, top + side, left, left + side


def box_transform(box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The matrix that maps the (top, bottom, left, right) box onto the model's square (a box that
    is not square is stretched)."""
    top, bottom, left, right = box
    sx, sy = size / (right - left), size / (bottom - top)
    return np.array([[sx, 0.0, -left * sx], [0.0, sy, -top * sy]])


def _is_crop(matrix: np.ndarray) -> bool:
    """Scale 1, no rotation, whole-pixel shift: the warp is a plain slice."""
    return bool(np.allclose(matrix[:, :2], np.eye(2)) and np.allclose(matrix[:, 2], np.round(matrix[:, 2])))


def warp_in(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``image`` seen through ``matrix`` as a ``size`` square (bilinear; area averaging first
    when the photo is shrunk; mirrored where the square reaches past the photo)."""
    if _is_crop(matrix):
        left, top = int(round(-matrix[0, 2])), int(round(-matrix[1, 2]))
        height, width = image.shape[:2]
        if 0 <= top and top + size <= height and 0 <= left and left + size <= width:
            return np.ascontiguousarray(image[top:top + size, left:left + size])
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    if scale < 1.0:
        height, width = image.shape[:2]
        x0, y0, x1, y1 = _source_box(matrix, size, width, height)
        region = image[y0:y1, x0:x1]
        small_w, small_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
        if (small_w, small_h) != (x1 - x0, y1 - y0):
            region = cv2.resize(region, (small_w, small_h), interpolation=cv2.INTER_AREA)
        fx, fy = small_w / (x1 - x0), small_h / (y1 - y0)
        linear = matrix[:, :2] @ np.diag([1 / fx, 1 / fy])
        matrix = np.hstack([linear, (matrix[:, :2] @ np.array([x0, y0]) + matrix[:, 2])[:, None]])
        image = region
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _source_box(matrix, size, width, height, margin: int = 2) -> tuple[int, int, int, int]:
    """The photo's pixels (x0, y0, x1, y1), clipped to it, that the model's square maps from."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], float) @ inverse.T
    x0 = int(np.clip(math.floor(corners[:, 0].min()) - margin, 0, width - 1))
    y0 = int(np.clip(math.floor(corners[:, 1].min()) - margin, 0, height - 1))
    x1 = int(np.clip(math.ceil(corners[:, 0].max()) + margin, x0 + 1, width))
    y1 = int(np.clip(math.ceil(corners[:, 1].max()) + margin, y0 + 1, height))
    return x0, y0, x1, y1


def hole_in(hole: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The fitted hole: grown by one source footprint (+1 pixel for interpolation), then sampled
    at the nearest pixel, so a fitted pixel whose sources touch a hole pixel is a hole."""
    if _is_crop(matrix):
        return warp_in(hole.astype(np.uint8), matrix, size) > 0
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    radius = math.ceil(1 / scale / 2) + 1
    grown = cv2.dilate(hole.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    return cv2.warpAffine(grown, matrix, (size, size), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT_101) > 0


def inside_square(hole: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The hole pixels whose place in the model's square lies inside it."""
    ys, xs = np.nonzero(hole)
    points = np.stack([xs + 0.5, ys + 0.5, np.ones_like(xs, float)], 1) @ matrix.T
    inside = ((points >= 0) & (points < size)).all(1)
    result = np.zeros_like(hole)
    result[ys[inside], xs[inside]] = True
    return result


# ------------------------------------------------------------------------------------- planning

def plan_fits(index: int, image: np.ndarray, hole: np.ndarray, size: int | None, framing: Framing,
              aligned: bool, size_for=None) -> list[Fit]:
    """The crops that together fill ``hole`` (see the module docstring). ``size_for(side, depth)``,
    for a fully convolutional method, picks the fill size of a crop of ``side`` photo pixels whose
    hole is ``depth`` pixels deep (``fill_size`` of ffc-unet-gan)."""
    if size is None:
        return [Fit(index, None, hole, image, hole)]
    parts = []
    if not aligned:
        for face, part in assign_to_faces(image, hole):
            matrix, side = _sized(lambda s: face_transform(face, framing, s), size, size_for, part)
            covered = inside_square(part, matrix, side)
            parts.append((matrix, side, covered))
            hole = hole & ~covered
    if hole.any():
        box = crop_box(hole) if aligned else context_box(hole, size)
        matrix, side = _sized(lambda s: box_transform(box, s), size, size_for, hole)
        parts.append((matrix, side, hole))
    return [Fit(index, matrix, part, warp_in(image, matrix, side), hole_in(part, matrix, side))
            for matrix, side, part in parts]


def _sized(transform, size: int, size_for, hole: np.ndarray) -> tuple[np.ndarray, int]:
    """(photo -> model matrix, fill size): ``transform(size)``, or the size ``size_for`` picks
    for the crop's side and ``hole``'s depth in photo pixels."""
    matrix = transform(size)
    if size_for is None:
        return matrix, size
    chosen = int(size_for(crop_side(matrix, size), depth=hole_depth(hole)))
    return (matrix, size) if chosen == size else (transform(chosen), chosen)


def hole_depth(hole: np.ndarray) -> float:
    """How far (pixels) the hole's farthest pixel lies from a known pixel; beyond the image's
    border counts as hole, so a hole along an edge is as deep as it would be in a larger photo."""
    if not hole.any():
        return 0.0
    # the hole's box grown by a pixel holds the nearest known pixels: no transform of a whole photo
    y0, y1, x0, x1 = hole_bounds(hole)
    window = hole[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1]
    inside = np.pad(window, 1, constant_values=True).astype(np.uint8)
    return float(cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1][window].max())


def assign_to_faces(image: np.ndarray, hole: np.ndarray) -> list[tuple[object, np.ndarray]]:
    """(face, the part of the hole it covers) for each detected face that a hole part overlaps."""
    faces = detect_faces(image, hole)
    if not faces:
        return []
    count, labels = cv2.connectedComponents(hole.astype(np.uint8), connectivity=8)
    owners: dict[int, list[int]] = defaultdict(list)
    for label in range(1, count):
        part = labels == label
        overlaps = [_overlap(part, face.box, hole.shape) for face in faces]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            owners[best].append(label)
    return [(faces[i], np.isin(labels, members)) for i, members in sorted(owners.items())]


def _overlap(part: np.ndarray, box, shape) -> int:
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    half_w, half_h = w * FACE_BOX_GROWTH / 2, h * FACE_BOX_GROWTH / 2
    top, bottom = max(0, int(cy - half_h)), min(shape[0], int(math.ceil(cy + half_h)))
    left, right = max(0, int(cx - half_w)), min(shape[1], int(math.ceil(cx + half_w)))
    return int(part[top:bottom, left:right].sum())


# ------------------------------------------------------------------------------------ pasting

def edge_weights(hole: np.ndarray, core: np.ndarray, feather: int) -> np.ndarray:
    """HxW float32 weight of the fill: 0 outside ``hole`` (the dilated hole), 1 on ``core`` (the
    hole as given: its pixels are always replaced), and in between a ramp from the dilated hole's
    edge inwards over ``feather`` pixels (1 everywhere in the hole for ``feather=0``)."""
    if feather <= 0:
        return hole.astype(np.float32)
    inside = cv2.distanceTransform(np.pad(hole, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    return np.maximum(np.clip(inside / (feather + 1), 0.0, 1.0), core).astype(np.float32)


def paste(out: np.ndarray, fit: Fit, fill: np.ndarray, feather: int = 0, core: np.ndarray | None = None) -> None:
    """Composite ``fill`` (the model's SxSx3 float output for ``fit``) into ``out`` in place;
    ``core`` (HxW bool, default ``fit.hole``) is the undilated hole for the soft edge."""
    ys, xs = np.nonzero(fit.hole)
    if not len(ys):
        return
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if fit.matrix is None:
        back = fill[top:bottom, left:right]
    else:
        shifted = fit.matrix.copy()
        shifted[:, 2] += fit.matrix[:, :2] @ np.array([left, top], float)
        back = cv2.warpAffine(fill, shifted, (right - left, bottom - top),
                              flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    back = (np.clip(back, 0.0, 1.0) * 255.0).round()
    hole = fit.hole[top:bottom, left:right]
    core = fit.hole if core is None else core
    weight = edge_weights(hole, core[top:bottom, left:right], feather)[..., None]
    region = out[top:bottom, left:right]
    mixed = (weight * back + (1 - weight) * region).round().astype(np.uint8)
    region[hole] = mixed[hole]


# ------------------------------------------------------------------------------------- filling

def _predict(inpainter, fits: list[Fit], device, options: FillOptions) -> list[np.ndarray]:
    images = torch.from_numpy(np.stack([f.image for f in fits])).permute(0, 3, 1, 2).float().div(255.0)
    masks = torch.from_numpy(np.stack([f.mask for f in fits])[:, None]).float()
    images = images * (1 - masks)  # the method never sees what the hole holds
    with torch.no_grad():
        out = inpainter.inpaint(images.to(device), masks.to(device), options)
    return list(out.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy())


def fill_batch(inpainter, images: list[np.ndarray], masks: list[np.ndarray], device="cpu",
               batch_size: int = 8, options: FillOptions | None = None,
               settings: PasteSettings = PasteSettings(), framing: Framing | None = None) -> list[np.ndarray]:
    """Fill many images (HxWx3 uint8, any sizes) with their holes (HxW bool, True = hole);
    returns HxWx3 uint8 arrays in input order. Fits of the same shape run in batches of
    ``batch_size``. An image without a hole comes back as an unchanged copy."""
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    device = device if isinstance(device, torch.device) else torch.device(device or "cpu")
    options = options or FillOptions()
    # a model with smaller scales (the default) frames every crop as its smallest scale does
    # alone; fill_size then hands each crop to the scale that fits it
    framer = inpainter.scale_for(0) if hasattr(inpainter, "scale_for") else inpainter
    framing = framing or framing_for(getattr(framer, "weights_meta", None))
    size = getattr(framer, "size", None)
    size_for = getattr(inpainter, "fill_size", None)
    results, cores, groups = [], [], defaultdict(list)
    for index, (image, mask) in enumerate(zip(images, masks)):
        image, mask = _check_pair(image, mask)
        results.append(image.copy())
        cores.append(mask)
        if settings.dilate and mask.any():
            mask = cv2.dilate(mask.astype(np.uint8), _disc(settings.dilate)) > 0
        if mask.any():
            for fit in plan_fits(index, image, mask, size, framing, settings.aligned, size_for):
                groups[fit.image.shape].append(fit)
    step = max(1, int(batch_size))
    for members in groups.values():
        for start in range(0, len(members), step):
            chunk = members[start:start + step]
            for fit, fill in zip(chunk, _predict(inpainter, chunk, device, options)):
                paste(results[fit.index], fit, fill, settings.feather, cores[fit.index])
    return results


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


__all__ = ["PasteSettings", "Fit", "crop_box", "box_transform", "warp_in", "hole_in", "plan_fits",
           "assign_to_faces", "edge_weights", "paste", "fill_batch"]
