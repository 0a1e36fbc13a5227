"""Hole masks: a kind and its keyword arguments -> ``callable(rng, size) -> HxW bool`` (True = hole).

Every generator is deterministic given the state of the ``numpy.random.Generator`` it is handed.

=================== ==========================================================================
kind                what
=================== ==========================================================================
center              centred rectangle, each side ``fraction`` (0.5) of the image side: 25 %
random-box          one rectangle anywhere, sides uniform in [``min_side``, ``max_side``] (0.25-0.5)
irregular-thin      free-form strokes (LaMa style), thin brush, area 5-20 %
irregular-medium    medium brush, area 15-35 %
irregular-thick     thick brush, area 25-50 %
irregular           one of the three brushes at random, area 10-50 %
random              strokes of a random brush covering 20-30 % (the DDPM paper's random masks)
sunglasses          eyes + brows (+ eyeglasses) of a CelebAMask-HQ parsing map, as two lenses
surgical-mask       nose, mouth, lips and the lower face below the nose, from a parsing map
box                 one rectangle anywhere, area uniform in 10-50 %, aspect ratio in [0.5, 2]
large               a box of a quarter to three quarters of ``lo`` plus thick strokes, area 40-60 %
                    (LaMa's "large" masks)
=================== ==========================================================================

Stroke kinds take ``area=(lo, hi)``: strokes are added until the hole covers at least ``lo`` of
the image (a target drawn uniformly in [lo, hi]) and a stroke that would push it above ``hi``
is undone and retried thinner, so the area always lies in [lo, hi].

Face-part kinds take ``parsing`` (an HxW uint8 label map) or ``parsing_dir`` (a folder of
label PNGs, one picked with the rng; default :func:`default_parsing_dir`). A map without the
parts falls back to a geometric occluder at the usual place, so the mask is never empty.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MASK_KINDS: tuple[str, ...] = ("center", "random-box", "irregular", "irregular-thin", "irregular-medium",
                               "irregular-thick", "random", "sunglasses", "surgical-mask", "box", "large")
FACE_PART_KINDS = ("sunglasses", "surgical-mask")

Size = int | tuple[int, int]

# Brushes: widths and segment lengths as fractions of the shorter image side; vertices per stroke.
BRUSHES: dict[str, dict[str, tuple[float, float]]] = {
    "thin": {"width": (0.015, 0.04), "length": (0.05, 0.2), "vertices": (2, 10)},
    "medium": {"width": (0.04, 0.08), "length": (0.08, 0.25), "vertices": (2, 8)},
    "thick": {"width": (0.08, 0.15), "length": (0.1, 0.3), "vertices": (1, 6)},
}
DEFAULT_AREAS: dict[str, tuple[float, float]] = {
    "irregular": (0.1, 0.5),
    "irregular-thin": (0.05, 0.2),
    "irregular-medium": (0.15, 0.35),
    "irregular-thick": (0.25, 0.5),
    "random": (0.2, 0.3),
}
BOX_AREA = (0.1, 0.5)         # box: area fraction, uniform
BOX_ASPECT = (0.5, 2.0)       # box: width/height ratio relative to the image's, log-uniform
LARGE_AREA = (0.4, 0.6)       # large: area fraction
LARGE_BOX_SHARE = (0.25, 0.75)  # large: its box covers this share of ``lo``; thick strokes add the rest
MAX_TURN = math.pi / 2        # largest change of direction between two segments of a stroke
SHRINK = 0.7                  # brush and length factor after a stroke overshoots ``hi``
MAX_STROKES = 400             # stroke attempts before the border-growing fallback

# CelebAMask-HQ labels
SKIN, NOSE, EYEGLASSES, L_EYE, R_EYE, L_BROW, R_BROW = 1, 2, 3, 4, 5, 6, 7
MOUTH, U_LIP, L_LIP = 10, 11, 12
EYE_PARTS = (EYEGLASSES, L_EYE, R_EYE, L_BROW, R_BROW)
LOWER_PARTS = (NOSE, MOUTH, U_LIP, L_LIP)
PARSING_ENV = "FACEFILL_PARSING_DIR"


# ----------------------------------------------------------------------------------------- API

def make_mask(kind: str, rng: np.random.Generator, size: Size, **kwargs) -> np.ndarray:
    """One HxW bool mask (True = hole) of ``kind`` at ``size`` (an int or (height, width))."""
    generator = _GENERATORS.get(kind)
    if generator is None:
        raise ValueError(f"unknown mask kind {kind!r}; known kinds: {', '.join(MASK_KINDS)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    height, width = _hw(size)
    return np.ascontiguousarray(generator(rng, height, width, **kwargs), dtype=bool)


def mask_generator(kind: str, **kwargs) -> Callable[[np.random.Generator, Size], np.ndarray]:
    """``make_mask`` with the kind and its options bound: ``gen(rng, size) -> HxW bool``."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown mask kind {kind!r}; known kinds: {', '.join(MASK_KINDS)}")

    def generate(rng: np.random.Generator, size: Size) -> np.ndarray:
        return make_mask(kind, rng, size, **kwargs)

    generate.kind = kind  # type: ignore[attr-defined]
    return generate


def mask_area(mask: np.ndarray) -> float:
    """Fraction of hole pixels."""
    mask = np.asarray(mask)
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


def default_parsing_dir() -> Path:
    """``$FACEFILL_PARSING_DIR``, else ``<repo>/../shared/data/celeba-hq/parsing``."""
    env = os.environ.get(PARSING_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "celeba-hq" / "parsing"


# ----------------------------------------------------------------------------- boxes

def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        height = width = int(size)
    else:
        height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {size!r}")
    return height, width


def _center(rng, height, width, *, fraction: float = 0.5):
    if not 0 < fraction <= 1:
        raise ValueError(f"center: fraction must be in (0, 1], got {fraction}")
    mask = np.zeros((height, width), bool)
    side_h, side_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top, left = (height - side_h) // 2, (width - side_w) // 2
    mask[top:top + side_h, left:left + side_w] = True
    return mask


def _random_box(rng, height, width, *, min_side: float = 0.25, max_side: float = 0.5):
    if not 0 < min_side <= max_side <= 1:
        raise ValueError(f"random-box: need 0 < min_side <= max_side <= 1, got {min_side}, {max_side}")
    box_h = min(height, max(1, round(rng.uniform(min_side, max_side) * height)))
    box_w = min(width, max(1, round(rng.uniform(min_side, max_side) * width)))
    return _place_box(rng, height, width, box_h, box_w)


def _place_box(rng, height, width, box_h: int, box_w: int) -> np.ndarray:
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    mask = np.zeros((height, width), bool)
    mask[top:top + box_h, left:left + box_w] = True
    return mask


def _check_aspect(aspect) -> tuple[float, float]:
    lo, hi = (float(a) for a in aspect)
    if not 0 < lo <= hi:
        raise ValueError(f"box: aspect must satisfy 0 < lo <= hi, got {aspect!r}")
    return lo, hi


def _box(rng, height, width, *, area=BOX_AREA, aspect=BOX_ASPECT):
    """A rectangle anywhere whose area is uniform in ``area`` (its sides rounded, clipped to the image)."""
    lo, hi = _check_area(area)
    low, high = _check_aspect(aspect)
    fraction = rng.uniform(lo, hi)
    ratio = math.exp(rng.uniform(math.log(low), math.log(high)))
    box_h = min(height, max(1, round(math.sqrt(fraction / ratio) * height)))
    box_w = min(width, max(1, round(fraction * height * width / box_h)))
    return _place_box(rng, height, width, box_h, box_w)


# ----------------------------------------------------------------------------- strokes

def _draw_stroke(canvas: np.ndarray, rng: np.random.Generator, brush: dict, scale: float) -> None:
    """One random walk of thick line segments with round joints, drawn in place (value 1)."""
    height, width = canvas.shape
    side = min(height, width)
    thickness = max(1, round(rng.uniform(*brush["width"]) * side * scale))
    vertices = int(rng.integers(brush["vertices"][0], brush["vertices"][1] + 1))
    x, y = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
    angle = rng.uniform(0, 2 * math.pi)
    points = [(round(x), round(y))]
    for _ in range(vertices):
        angle += rng.uniform(-MAX_TURN, MAX_TURN)
        length = rng.uniform(*brush["length"]) * side * scale
        x = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
        y = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
        points.append((round(x), round(y)))
    for start, end in zip(points, points[1:]):
        cv2.line(canvas, start, end, 1, thickness, cv2.LINE_8)
    for point in points:
        cv2.circle(canvas, point, thickness // 2, 1, -1, cv2.LINE_8)


def _grow(mask: np.ndarray, need: int, rng: np.random.Generator) -> None:
    """Fallback: add border pixels until ``need`` pixels are holes (never reached in practice)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    count = int(np.count_nonzero(mask))
    while count < need:
        ring = (cv2.dilate(mask, kernel) > 0) & (mask == 0) if count else (mask == 0)
        ys, xs = np.nonzero(ring)
        take = rng.choice(len(ys), size=min(need - count, len(ys)), replace=False)
        mask[ys[take], xs[take]] = 1
        count += len(take)


def _check_area(area) -> tuple[float, float]:
    try:
        lo, hi = (float(a) for a in area)
    except (TypeError, ValueError):
        raise ValueError(f"area must be a (lo, hi) pair, got {area!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"area must satisfy 0 <= lo <= hi <= 1, got {area!r}")
    return lo, hi


def strokes(rng: np.random.Generator, height: int, width: int, brush: str | dict,
            area: tuple[float, float], start: np.ndarray | None = None) -> np.ndarray:
    """Free-form strokes of ``brush`` (added to the ``start`` mask, if given) until the hole covers
    a random target in ``area``."""
    brush = BRUSHES[brush] if isinstance(brush, str) else brush
    lo, hi = _check_area(area)
    total = height * width
    lo_px = math.ceil(lo * total - 1e-9)
    hi_px = max(lo_px, math.floor(hi * total + 1e-9))
    target = int(rng.integers(lo_px, hi_px + 1))
    mask = np.zeros((height, width), np.uint8) if start is None else start.astype(np.uint8)
    count, scale = int(np.count_nonzero(mask)), 1.0
    for _ in range(MAX_STROKES):
        if count >= target:
            break
        trial = mask.copy()
        _draw_stroke(trial, rng, brush, scale)
        new = int(np.count_nonzero(trial))
        if new <= hi_px:
            mask, count = trial, new
        else:                       # undo: too much; retry with a thinner, shorter stroke
            scale *= SHRINK
    if count < lo_px:
        _grow(mask, lo_px, rng)
    return mask.astype(bool)


def _irregular(rng, height, width, *, brush: str | None = None, area=None, _default="irregular"):
    """Stroke kinds. ``brush`` None picks one at random; the default area of ``irregular`` is the
    chosen brush's own range within 10-50 %, so thin brushes are not asked for half the image."""
    if brush is None:
        brush = ("thin", "medium", "thick")[int(rng.integers(3))]
    if brush not in BRUSHES:
        raise ValueError(f"unknown brush {brush!r}; known: {', '.join(BRUSHES)}")
    if area is None:
        area = DEFAULT_AREAS[_default]
        if _default == "irregular":
            own = DEFAULT_AREAS[f"irregular-{brush}"]
            area = (max(area[0], own[0]), min(area[1], own[1]))
    return strokes(rng, height, width, brush, area)


def _large(rng, height, width, *, area=LARGE_AREA):
    """A box covering a quarter to three quarters of ``lo``, then thick strokes up to ``area``."""
    lo, hi = _check_area(area)
    start = _box(rng, height, width, area=(LARGE_BOX_SHARE[0] * lo, LARGE_BOX_SHARE[1] * lo))
    return strokes(rng, height, width, "thick", (lo, hi), start=start)


# ----------------------------------------------------------------------------- face parts

@functools.lru_cache(maxsize=8)
def _parsing_files(folder: str) -> tuple[str, ...]:
    path = Path(folder)
    return tuple(sorted((str(p) for p in path.iterdir() if p.suffix.lower() == ".png"),
                        key=lambda p: (len(Path(p).stem), Path(p).stem)))


@functools.lru_cache(maxsize=256)
def load_parsing(path: str) -> np.ndarray:
    """A label PNG (palette or grey) -> HxW uint8 labels (read-only, cached)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette or grey label map, got mode {image.mode}")
        labels = np.array(image, dtype=np.uint8)
    labels.setflags(write=False)
    return labels


_warned_missing: set[str] = set()


def _pick_parsing(rng, parsing, parsing_dir) -> np.ndarray | None:
    if parsing is not None:
        labels = np.asarray(parsing)
        if labels.ndim != 2:
            raise ValueError(f"parsing must be an HxW label array, got shape {labels.shape}")
        return labels.astype(np.uint8, copy=False)
    explicit = parsing_dir is not None
    folder = Path(parsing_dir) if explicit else default_parsing_dir()
    files = _parsing_files(str(folder.resolve())) if folder.is_dir() else ()
    if not files:
        if explicit:
            raise FileNotFoundError(f"{folder}: no parsing label maps (*.png) found")
        if str(folder) not in _warned_missing:
            _warned_missing.add(str(folder))
            logger.warning("no face-parsing maps at %s (set %s); using geometric occluders",
                           folder, PARSING_ENV)
        return None
    return load_parsing(files[int(rng.integers(len(files)))])


def _resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    if labels.shape == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def _dilate(mask: np.ndarray, fraction: float) -> np.ndarray:
    radius = max(1, round(fraction * min(mask.shape))) if fraction > 0 else 0
    if radius == 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, kernel)


def _fill_hull(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
    if len(xs) == 0:
        return
    points = np.stack([xs, ys], axis=1).astype(np.int32)
    if len(points) < 3:
        canvas[ys, xs] = 1
        return
    cv2.fillConvexPoly(canvas, cv2.convexHull(points), 1)


def _min_pixels(height: int, width: int) -> int:
    return max(3, round(0.0005 * height * width))


def _geometric_eyes(height: int, width: int) -> np.ndarray:
    """Two lenses and a bridge across rows ~36-50 % of the height."""
    mask = np.zeros((height, width), np.uint8)
    cy, ay, ax = 0.43 * height, max(1, round(0.07 * height)), max(1, round(0.15 * width))
    for cx in (0.33 * width, 0.67 * width):
        cv2.ellipse(mask, (round(cx), round(cy)), (ax, ay), 0, 0, 360, 1, -1)
    mask[round(cy - 0.02 * height):round(cy + 0.02 * height) + 1, round(0.33 * width):round(0.67 * width)] = 1
    return mask.astype(bool)


def _geometric_lower(height: int, width: int) -> np.ndarray:
    """A lower-face cover across rows ~55-90 % of the height."""
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (round(0.5 * width), round(0.72 * height)),
                (max(1, round(0.28 * width)), max(1, round(0.17 * height))), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def sunglasses_from_parsing(labels: np.ndarray, dilate: float = 0.015) -> np.ndarray:
    """Eyes, brows and eyeglasses hulled per side into two lenses joined by a bridge."""
    height, width = labels.shape
    parts = np.isin(labels, EYE_PARTS)
    if np.count_nonzero(parts) < _min_pixels(height, width):
        return _geometric_eyes(height, width)
    ys, xs = np.nonzero(parts)
    left_eye, right_eye = np.nonzero(labels == L_EYE), np.nonzero(labels == R_EYE)
    if len(left_eye[1]) and len(right_eye[1]):
        middle = (left_eye[1].mean() + right_eye[1].mean()) / 2
    elif np.any(labels == NOSE):
        middle = np.nonzero(labels == NOSE)[1].mean()
    else:
        middle = xs.mean()
    eyes = np.isin(labels, (L_EYE, R_EYE, EYEGLASSES))
    canvas = np.zeros((height, width), np.uint8)
    lenses = []
    for side in (xs < middle, xs >= middle):
        side_x, side_y = xs[side], ys[side]
        if len(side_x) == 0:
            continue
        # lenses reach a little below the eye: add the eye pixels shifted down by half their height
        eye = eyes[side_y, side_x]
        if np.any(eye):
            drop = max(1, round(0.5 * (side_y[eye].max() - side_y[eye].min() + 1)))
            side_x = np.concatenate([side_x, side_x[eye]])
            side_y = np.concatenate([side_y, np.minimum(side_y[eye] + drop, height - 1)])
        _fill_hull(canvas, side_x, side_y)
        lenses.append((side_x.min(), side_x.max(), side_y.min(), side_y.max()))
    if len(lenses) == 2:                                   # the bridge between the lenses
        (_, a_right, a_top, a_bottom), (b_left, _, b_top, b_bottom) = sorted(lenses)
        row = (max(a_top, b_top) + min(a_bottom, b_bottom)) / 2
        half = max(1, round(0.12 * (min(a_bottom - a_top, b_bottom - b_top) + 1)))
        if b_left > a_right:
            canvas[max(0, round(row) - half):round(row) + half + 1, a_right:b_left + 1] = 1
    return _dilate(canvas, dilate).astype(bool)


def surgical_mask_from_parsing(labels: np.ndarray, dilate: float = 0.015) -> np.ndarray:
    """Nose, mouth and lips plus the skin below the nose top (and below the eyes), hulled."""
    height, width = labels.shape
    core = np.isin(labels, LOWER_PARTS)
    if np.count_nonzero(core) < _min_pixels(height, width):
        return _geometric_lower(height, width)
    nose_rows = np.nonzero(labels == NOSE)[0]
    top = int(nose_rows.min()) if len(nose_rows) else int(np.nonzero(core)[0].min())
    eye_rows = np.nonzero(np.isin(labels, (L_EYE, R_EYE)))[0]
    if len(eye_rows):
        top = max(top, int(eye_rows.max()) + 1)          # the mask stops under the eyes
    region = core.copy()
    region[top:] |= labels[top:] == SKIN
    ys, xs = np.nonzero(region)
    canvas = np.zeros((height, width), np.uint8)
    _fill_hull(canvas, xs, ys)
    return _dilate(canvas, dilate).astype(bool)


def _face_part(rng, height, width, *, parsing=None, parsing_dir=None, dilate: float = 0.015, _part):
    labels = _pick_parsing(rng, parsing, parsing_dir)
    if labels is None:
        return _geometric_eyes(height, width) if _part == "sunglasses" else _geometric_lower(height, width)
    labels = _resize_labels(labels, height, width)
    if _part == "sunglasses":
        return sunglasses_from_parsing(labels, dilate)
    return surgical_mask_from_parsing(labels, dilate)


# ----------------------------------------------------------------------------- torch batches
# The same kinds drawn in batch on any torch device (the training device), from a
# ``torch.Generator`` on that device, with no host synchronisation. Strokes are capsules (a
# segment widened by half the brush), hulls are 16-gons: close to the numpy kinds, not equal.

GPU_STROKE_ROUNDS = 48        # stroke attempts per mask; those still short of ``lo`` grow at the border
HULL_DIRECTIONS = 8


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, device: str, dtype=torch.float32) -> torch.Tensor:
    """A small constant tensor made once per device (no host-to-device copy inside a step)."""
    return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=16)
def _shape_on(shape: str, height: int, width: int, device: str) -> torch.Tensor:
    """A geometric occluder or the centre box as an HxW bool tensor on ``device``, made once."""
    draw = {"eyes": _geometric_eyes, "lower": _geometric_lower,
            "center": lambda h, w: _center(None, h, w)}[shape]
    return torch.from_numpy(draw(height, width)).to(device)


def _uniform(generator, shape, low, high, device):
    """Uniform in [low, high); low/high may be tensors broadcasting to ``shape``."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _grid(height: int, width: int, device):
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                            torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return xs, ys


def center_masks_torch(batch: int, height: int, width: int, device):
    return _shape_on("center", height, width, str(device)).expand(batch, height, width).clone()


def random_box_masks_torch(generator, batch: int, height: int, width: int, device,
                           min_side: float = 0.25, max_side: float = 0.5):
    box_h = (_uniform(generator, (batch,), min_side, max_side, device) * height).round().clamp(1, height)
    box_w = (_uniform(generator, (batch,), min_side, max_side, device) * width).round().clamp(1, width)
    return _place_boxes_torch(generator, box_h, box_w, height, width)


def box_masks_torch(generator, batch: int, height: int, width: int, device, area=BOX_AREA, aspect=BOX_ASPECT):
    """``box`` in batch: rectangles anywhere with area uniform in ``area``, as ``_box`` draws them."""
    lo, hi = _check_area(area)
    low, high = _check_aspect(aspect)
    fraction = _uniform(generator, (batch,), lo, hi, device)
    ratio = torch.exp(_uniform(generator, (batch,), math.log(low), math.log(high), device))
    box_h = ((fraction / ratio).sqrt() * height).round().clamp(1, height)
    box_w = (fraction * height * width / box_h).round().clamp(1, width)
    return _place_boxes_torch(generator, box_h, box_w, height, width)


def _place_boxes_torch(generator, box_h, box_w, height: int, width: int):
    """(B, H, W) masks with a box_h x box_w rectangle (B,) each at a random place inside the image."""
    batch, device = len(box_h), box_h.device
    top = (torch.rand(batch, generator=generator, device=device) * (height - box_h + 1)).floor()
    left = (torch.rand(batch, generator=generator, device=device) * (width - box_w + 1)).floor()
    xs, ys = _grid(height, width, device)
    rows = (ys >= top[:, None, None]) & (ys < (top + box_h)[:, None, None])
    cols = (xs >= left[:, None, None]) & (xs < (left + box_w)[:, None, None])
    return rows & cols


BRUSH_NAMES = ("thin", "medium", "thick")


def _brush_table(device):
    """(3, 6) brush ranges in BRUSH_NAMES order: width lo/hi, length lo/hi, vertices lo/hi."""
    rows = tuple(tuple([*BRUSHES[b]["width"], *BRUSHES[b]["length"], *BRUSHES[b]["vertices"]]) for b in BRUSH_NAMES)
    return _constant(rows, str(device))


def _one_stroke(generator, table, scale, height, width, xs, ys):
    """A random walk of capsules per sample (B, H, W), as ``_draw_stroke`` draws with OpenCV."""
    batch, device = len(table), table.device
    side = float(min(height, width))
    most = max(v["vertices"][1] for v in BRUSHES.values())
    thickness = (_uniform(generator, (batch,), table[:, 0], table[:, 1], device) * side * scale).round().clamp_min(1)
    count = (table[:, 4] + torch.rand(batch, generator=generator, device=device)
             * (table[:, 5] - table[:, 4] + 1)).floor()
    x = torch.rand(batch, generator=generator, device=device) * (width - 1)
    y = torch.rand(batch, generator=generator, device=device) * (height - 1)
    angle = torch.rand(batch, generator=generator, device=device) * 2 * math.pi
    points = [torch.stack([x, y], 1).round()]
    for _ in range(most):
        angle = angle + _uniform(generator, (batch,), -MAX_TURN, MAX_TURN, device)
        length = _uniform(generator, (batch,), table[:, 2], table[:, 3], device) * side * scale
        x = (x + length * torch.cos(angle)).clamp(0, width - 1)
        y = (y + length * torch.sin(angle)).clamp(0, height - 1)
        points.append(torch.stack([x, y], 1).round())
    points = torch.stack(points, 1)                                  # B, V+1, 2
    start, end = points[:, :-1], points[:, 1:]                       # B, V, 2
    valid = torch.arange(most, device=device)[None] < count[:, None]  # B, V
    pixel = torch.stack([xs.flatten(), ys.flatten()], 1)             # HW, 2
    direction = end - start
    rel = pixel[None, None] - start[:, :, None]                       # B, V, HW, 2
    t = ((rel * direction[:, :, None]).sum(-1) / direction.pow(2).sum(-1).clamp_min(1e-6)[:, :, None]).clamp(0, 1)
    distance = (rel - t[..., None] * direction[:, :, None]).pow(2).sum(-1)
    radius = (thickness / 2).pow(2)[:, None, None]
    inside = (distance <= radius) & valid[:, :, None]
    return inside.any(1).view(batch, height, width)


def stroke_masks_torch(generator, brushes: torch.Tensor, areas: torch.Tensor, height: int, width: int,
                       rounds: int = GPU_STROKE_ROUNDS, start: torch.Tensor | None = None):
    """Free-form strokes per sample (``brushes``: (B,) index into BRUSH_NAMES; ``areas``: (B, 2)
    lo/hi), added to ``start`` (B, H, W) when given: strokes are added while the hole is short of
    a target drawn in [lo, hi], and one that would pass ``hi`` is dropped and the brush shrunk,
    as ``strokes`` does."""
    batch, device = len(brushes), brushes.device
    table = _brush_table(device)[brushes]
    total = height * width
    lo_px = (areas[:, 0] * total - 1e-9).ceil()
    hi_px = torch.maximum(lo_px, (areas[:, 1] * total + 1e-9).floor())
    target = (lo_px + torch.rand(batch, generator=generator, device=device) * (hi_px - lo_px + 1)).floor()
    xs, ys = _grid(height, width, device)
    if start is None:
        mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
        count = torch.zeros(batch, device=device)
    else:
        mask, count = start.clone(), start.flatten(1).sum(1).float()
    scale = torch.ones(batch, device=device)
    for _ in range(rounds):
        trial = mask | _one_stroke(generator, table, scale, height, width, xs, ys)
        new = trial.flatten(1).sum(1).float()
        active = count < target
        accept = active & (new <= hi_px)
        mask = torch.where(accept[:, None, None], trial, mask)
        count = torch.where(accept, new, count)
        scale = torch.where(active & ~accept, scale * SHRINK, scale)
    for _ in range(max(height, width)):  # rare: grow short masks by one ring at a time
        short = count < lo_px
        grown = F.max_pool2d(mask[:, None].float(), 3, 1, 1)[:, 0] > 0
        mask = torch.where(short[:, None, None], grown, mask)
        count = mask.flatten(1).sum(1).float()
    return mask


STROKE_KIND_BRUSHES = {"irregular-thin": "thin", "irregular-medium": "medium", "irregular-thick": "thick"}


def _stroke_kind_torch(kind, generator, batch, height, width, device):
    if kind in STROKE_KIND_BRUSHES:
        brushes = torch.full((batch,), BRUSH_NAMES.index(STROKE_KIND_BRUSHES[kind]), device=device)
    else:
        brushes = torch.randint(3, (batch,), generator=generator, device=device)
    area = DEFAULT_AREAS[kind]
    if kind == "irregular":  # each brush's own range within 10-50 %
        ranges = [(max(area[0], DEFAULT_AREAS[f"irregular-{b}"][0]), min(area[1], DEFAULT_AREAS[f"irregular-{b}"][1]))
                  for b in BRUSH_NAMES]
    else:
        ranges = [area] * 3
    areas = _constant(tuple(ranges), str(device))[brushes]
    return stroke_masks_torch(generator, brushes, areas, height, width)


def large_masks_torch(generator, batch: int, height: int, width: int, device, area=LARGE_AREA):
    """``large`` in batch: a box covering a quarter to three quarters of ``lo``, then thick strokes."""
    lo, hi = _check_area(area)
    start = box_masks_torch(generator, batch, height, width, device,
                            area=(LARGE_BOX_SHARE[0] * lo, LARGE_BOX_SHARE[1] * lo))
    brushes = torch.full((batch,), BRUSH_NAMES.index("thick"), device=device)
    areas = _constant(((lo, hi),), str(device)).expand(batch, 2)
    return stroke_masks_torch(generator, brushes, areas, height, width, start=start)


def hull_fill(points: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool -> the convex hull of each sample's True pixels, as a 16-gon (empty stays empty)."""
    batch, height, width = points.shape
    xs, ys = _grid(height, width, points.device)
    angles = torch.arange(HULL_DIRECTIONS, device=points.device) * math.pi / HULL_DIRECTIONS
    projection = (torch.cos(angles)[:, None, None] * xs + torch.sin(angles)[:, None, None] * ys)  # K, H, W
    flat = projection.flatten(1)[None]                                      # 1, K, HW
    member = points.flatten(1)[:, None]                                     # B, 1, HW
    high = torch.where(member, flat, torch.full_like(flat, -1e9)).amax(2)   # B, K
    low = torch.where(member, flat, torch.full_like(flat, 1e9)).amin(2)
    inside = (flat >= low[:, :, None] - 0.5) & (flat <= high[:, :, None] + 0.5)
    return inside.all(1).view(batch, height, width)


def _dilate_torch(mask: torch.Tensor, fraction: float) -> torch.Tensor:
    radius = max(1, round(fraction * min(mask.shape[-2:]))) if fraction > 0 else 0
    if radius == 0:
        return mask
    disk = _constant(tuple(map(tuple, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2).tolist())),
                     str(mask.device))
    out = F.conv2d(mask[:, None].float(), disk[None, None], padding=radius)
    return out[:, 0] > 0.5


def _rows_and_cols(mask):
    """Per-sample first/last row and column of True pixels (B,) each; empty -> (H, -1, W, -1)."""
    batch, height, width = mask.shape
    xs, ys = _grid(height, width, mask.device)
    ys, xs = ys.expand_as(mask), xs.expand_as(mask)
    top = torch.where(mask, ys, 1e9).flatten(1).amin(1)
    bottom = torch.where(mask, ys, -1e9).flatten(1).amax(1)
    left = torch.where(mask, xs, 1e9).flatten(1).amin(1)
    right = torch.where(mask, xs, -1e9).flatten(1).amax(1)
    return top, bottom, left, right


def _shift_down(mask, rows):
    """Each sample's mask moved down by its own number of ``rows`` (B,)."""
    batch, height, width = mask.shape
    source = torch.arange(height, device=mask.device)[None] - rows[:, None].long()   # B, H
    valid = (source >= 0)[:, :, None]
    gathered = mask.gather(1, source.clamp_min(0)[:, :, None].expand(batch, height, width))
    return gathered & valid


def _enough(mask, height, width):
    return mask.flatten(1).sum(1) >= _min_pixels(height, width)


def sunglasses_masks_torch(labels: torch.Tensor, dilate: float = 0.015) -> torch.Tensor:
    """``sunglasses_from_parsing`` in batch on (B, H, W) label maps."""
    batch, height, width = labels.shape
    device = labels.device
    xs, _ = _grid(height, width, device)
    parts = torch.isin(labels, _constant(EYE_PARTS, str(device), labels.dtype))
    eyes = torch.isin(labels, _constant((L_EYE, R_EYE, EYEGLASSES), str(device), labels.dtype))

    def mean_x(mask):
        return (mask * xs).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)

    left_eye, right_eye = labels == L_EYE, labels == R_EYE
    both = left_eye.flatten(1).any(1) & right_eye.flatten(1).any(1)
    nose = labels == NOSE
    middle = torch.where(both, (mean_x(left_eye) + mean_x(right_eye)) / 2,
                         torch.where(nose.flatten(1).any(1), mean_x(nose), mean_x(parts)))
    canvas = torch.zeros_like(parts)
    boxes = []
    for side in (xs[None] < middle[:, None, None], xs[None] >= middle[:, None, None]):
        own, own_eye = parts & side, eyes & side
        top, bottom, _, _ = _rows_and_cols(own_eye)
        drop = torch.where(own_eye.flatten(1).any(1), (0.5 * (bottom - top + 1)).round().clamp_min(1),
                           torch.zeros_like(top))
        lens = hull_fill(own | _shift_down(own_eye, drop))
        canvas |= lens
        boxes.append(_rows_and_cols(lens))
    (a_top, a_bottom, _, a_right), (b_top, b_bottom, b_left, _) = boxes
    row = (torch.maximum(a_top, b_top) + torch.minimum(a_bottom, b_bottom)) / 2
    half = (0.12 * (torch.minimum(a_bottom - a_top, b_bottom - b_top) + 1)).round().clamp_min(1)
    xs_b, ys_b = xs[None], _grid(height, width, device)[1][None]
    bridge = ((ys_b >= (row.round() - half)[:, None, None]) & (ys_b <= (row.round() + half)[:, None, None])
              & (xs_b >= a_right[:, None, None]) & (xs_b <= b_left[:, None, None]))
    canvas |= bridge & (b_left > a_right)[:, None, None]
    result = _dilate_torch(canvas, dilate)
    fallback = _shape_on("eyes", height, width, str(device))
    return torch.where(_enough(parts, height, width)[:, None, None], result, fallback)


def surgical_masks_torch(labels: torch.Tensor, dilate: float = 0.015) -> torch.Tensor:
    """``surgical_mask_from_parsing`` in batch on (B, H, W) label maps."""
    batch, height, width = labels.shape
    device = labels.device
    _, ys = _grid(height, width, device)
    core = torch.isin(labels, _constant(LOWER_PARTS, str(device), labels.dtype))
    nose = labels == NOSE
    top = torch.where(nose.flatten(1).any(1), _rows_and_cols(nose)[0], _rows_and_cols(core)[0])
    eyes = torch.isin(labels, _constant((L_EYE, R_EYE), str(device), labels.dtype))
    top = torch.where(eyes.flatten(1).any(1), torch.maximum(top, _rows_and_cols(eyes)[1] + 1), top)
    region = core | ((labels == SKIN) & (ys[None] >= top[:, None, None]))
    result = _dilate_torch(hull_fill(region), dilate)
    fallback = _shape_on("lower", height, width, str(device))
    return torch.where(_enough(core, height, width)[:, None, None], result, fallback)


def make_masks_torch(kind: str, generator: torch.Generator, batch: int, size: Size, device,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """A batch of masks of ``kind``: (B, H, W) bool on ``device`` (True = hole). Face-part kinds
    use ``labels`` (B, H, W parsing maps), or the geometric occluders where it is None."""
    height, width = _hw(size)
    if kind == "center":
        return center_masks_torch(batch, height, width, device)
    if kind == "random-box":
        return random_box_masks_torch(generator, batch, height, width, device)
    if kind == "box":
        return box_masks_torch(generator, batch, height, width, device)
    if kind == "large":
        return large_masks_torch(generator, batch, height, width, device)
    if kind in DEFAULT_AREAS:
        return _stroke_kind_torch(kind, generator, batch, height, width, device)
    if kind in FACE_PART_KINDS:
        if labels is None:
            shape = _shape_on("eyes" if kind == "sunglasses" else "lower", height, width, str(device))
            return shape.expand(batch, height, width).clone()
        return (sunglasses_masks_torch if kind == "sunglasses" else surgical_masks_torch)(labels)
    raise ValueError(f"unknown mask kind {kind!r}; known kinds: {', '.join(MASK_KINDS)}")


_GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "center": _center,
    "random-box": _random_box,
    "irregular": functools.partial(_irregular, _default="irregular"),
    "irregular-thin": functools.partial(_irregular, brush="thin", _default="irregular-thin"),
    "irregular-medium": functools.partial(_irregular, brush="medium", _default="irregular-medium"),
    "irregular-thick": functools.partial(_irregular, brush="thick", _default="irregular-thick"),
    "random": functools.partial(_irregular, _default="random"),
    "sunglasses": functools.partial(_face_part, _part="sunglasses"),
    "surgical-mask": functools.partial(_face_part, _part="surgical-mask"),
    "box": _box,
    "large": _large,
}
assert tuple(_GENERATORS) == MASK_KINDS

__all__ = ["MASK_KINDS", "FACE_PART_KINDS", "make_mask", "mask_generator", "mask_area", "default_parsing_dir", "strokes",
           "sunglasses_from_parsing", "surgical_mask_from_parsing", "load_parsing", "BRUSHES",
           "DEFAULT_AREAS", "make_masks_torch", "stroke_masks_torch", "hull_fill", "sunglasses_masks_torch",
           "surgical_masks_torch", "box_masks_torch", "large_masks_torch"]
