"""Faces in ordinary photos: offline detection (OpenCV's bundled Haar cascades), rotation from
the eyes, and the similarity transform that crops a face in the framing a model was trained on.

A transform is a 2x3 matrix mapping photo pixel coordinates to the model's square (``size`` x
``size``); :mod:`facefill.inference.fitting` warps with it and back with its inverse.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DETECT_MAX_SIDE = 640       # detection runs on a copy no larger than this
MIN_FACE_FRACTION = 0.06    # faces smaller than this fraction of the short side are ignored
MAX_EYE_ANGLE = 30.0        # an eye pair tilted more than this (degrees) is taken for a false match


@dataclass(frozen=True)
class Face:
    """A detected face: its Haar box (x, y, w, h) in photo pixels and the in-plane rotation from
    its eyes (degrees, counter-clockwise positive as in cv2.getRotationMatrix2D; 0 without eyes)."""

    box: tuple[float, float, float, float]
    angle: float = 0.0
    eyes: bool = False

    @property
    def centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


@dataclass(frozen=True)
class Framing:
    """Where the Haar face box sits in a model's training crops, as fractions of the crop side:
    its centre (cx, cy) and its width."""

    cx: float
    cy: float
    width: float


# Measured with detect_faces on the training sources (median over the faces found, tools/
# measure_framing.py): the first 400 data128 test faces (aligned CelebA, "celeba" crop; 388 found)
# and the first 400 CelebA-HQ faces (384 found).
FRAMINGS = {
    "celeba-aligned": Framing(0.5, 0.586, 0.586),
    "celeba-hq": Framing(0.502, 0.555, 0.652),
}
DEFAULT_FRAMING = "celeba-aligned"


def framing_for(meta: dict | None) -> Framing:
    """The framing of the data a model was trained on (its weights' ``meta["data"]["source"]``)."""
    data = (meta or {}).get("data") or {}
    source = str(data.get("source", "") if isinstance(data, dict) else data).lower()
    for key, framing in FRAMINGS.items():
        if key in source:
            return framing
    return FRAMINGS[DEFAULT_FRAMING]


_local = threading.local()


def _cascade(name: str):
    """A cascade per thread (detectMultiScale is not thread-safe), None where OpenCV lacks it."""
    cache = getattr(_local, "cascades", None)
    if cache is None:
        cache = _local.cascades = {}
    if name not in cache:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = Path(folder) / name
        classifier = cv2.CascadeClassifier(str(path)) if path.is_file() and hasattr(cv2, "CascadeClassifier") else None
        cache[name] = classifier if classifier is not None and not classifier.empty() else None
    return cache[name]


def detector_available() -> bool:
    return _cascade("haarcascade_frontalface_default.xml") is not None


def detect_faces(rgb: np.ndarray, hole: np.ndarray | None = None) -> list[Face]:
    """Frontal faces in ``rgb`` (HxWx3 uint8), largest first. Where ``hole`` (HxW bool) is given
    and some part of it touches no face found, the detector looks again with the hole filled
    roughly (Telea, on the small detection copy), so that an occluder over the eyes or mouth does
    not hide the face."""
    faces_cascade = _cascade("haarcascade_frontalface_default.xml")
    if faces_cascade is None:
        return []
    height, width = rgb.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                                                interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
    least = max(20, round(MIN_FACE_FRACTION * min(gray.shape)))
    boxes = _detect(faces_cascade, cv2.equalizeHist(gray), 5, least)
    if hole is not None and hole.any():
        small_hole = cv2.resize(hole.astype(np.uint8), gray.shape[::-1], interpolation=cv2.INTER_NEAREST)
        small_hole = cv2.dilate(small_hole, np.ones((3, 3), np.uint8))
        if _some_part_off(small_hole, boxes):
            # fewer neighbours needed here: a false face counts only where a hole overlaps it
            rough = cv2.inpaint(gray, small_hole * 255, 3, cv2.INPAINT_TELEA)
            boxes += _detect(faces_cascade, cv2.equalizeHist(rough), 3, least)
    faces = []
    for box in _distinct(boxes):
        angle, eyes = _eye_angle(gray, box)  # the eye cascade does better without equalisation
        x, y, w, h = box
        faces.append(Face((x / scale, y / scale, w / scale, h / scale), angle, eyes))
    return faces


def _detect(cascade, view: np.ndarray, neighbours: int, least: int) -> list[tuple[int, int, int, int]]:
    # scale steps of 1.2 took 44 % less time but lost 0.15 dB on photos with sunglasses
    found = cascade.detectMultiScale(view, scaleFactor=1.1, minNeighbors=neighbours, minSize=(least, least))
    return [tuple(int(v) for v in box) for box in found]


def _some_part_off(hole: np.ndarray, boxes) -> bool:
    """Whether some connected part of ``hole`` (uint8, 1 = hole) touches none of ``boxes``: only
    then can a face hidden by an occluder matter, and the second, rough-filled look is needed."""
    count, labels = cv2.connectedComponents(hole, connectivity=8)
    touched = set()
    for x, y, w, h in boxes:
        touched.update(np.unique(labels[y:y + h, x:x + w]).tolist())
    return any(label not in touched for label in range(1, count))


def _distinct(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Largest first; a box that mostly lies inside one already kept (the same face found twice,
    or a false face on an eye or mouth) is dropped."""
    kept = []
    for box in sorted(boxes, key=lambda b: -b[2] * b[3]):
        if all(_inside_fraction(box, other) < 0.5 for other in kept):
            kept.append(box)
    return kept


def _inside_fraction(box, other) -> float:
    x, y, w, h = box
    ox, oy, ow, oh = other
    overlap_w = max(0, min(x + w, ox + ow) - max(x, ox))
    overlap_h = max(0, min(y + h, oy + oh) - max(y, oy))
    return overlap_w * overlap_h / float(w * h)


def _eye_angle(gray: np.ndarray, box) -> tuple[float, bool]:
    """The tilt of the line through the two eyes found in the upper half of ``box``, or 0."""
    eyes_cascade = _cascade("haarcascade_eye.xml")
    if eyes_cascade is None:
        return 0.0, False
    x, y, w, h = box
    upper = gray[y:y + h // 2 + h // 10, x:x + w]
    least = max(5, w // 8)
    eyes = eyes_cascade.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=3, minSize=(least, least),
                                         maxSize=(w // 2, w // 2))
    if len(eyes) < 2:
        return 0.0, False
    centres = sorted(((ex + ew / 2, ey + eh / 2) for ex, ey, ew, eh in eyes), key=lambda c: c[0])
    left = [c for c in centres if c[0] < w / 2]
    right = [c for c in centres if c[0] >= w / 2]
    if not left or not right:
        return 0.0, False
    (lx, ly), (rx, ry) = left[-1], right[0]
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    if abs(angle) > MAX_EYE_ANGLE or rx - lx < w / 5:
        return 0.0, False
    return angle, True


def face_transform(face: Face, framing: Framing, size: int) -> np.ndarray:
    """The 2x3 matrix mapping photo pixels to the model's ``size`` square with ``face`` in the
    training ``framing`` (its box width at ``framing.width`` of the side, its centre at (cx, cy)),
    turned by the eyes' angle so that they lie level."""
    fx, fy = face.centre
    side = face.box[2] / framing.width                 # crop side in photo pixels
    scale = size / side
    matrix = cv2.getRotationMatrix2D((fx, fy), face.angle, scale)
    # the face centre goes to (cx, cy) of the square
    matrix[0, 2] += framing.cx * size - fx
    matrix[1, 2] += framing.cy * size - fy
    return matrix


def crop_side(matrix: np.ndarray, size: int) -> float:
    """The side, in photo pixels, of the square ``matrix`` maps to the model's ``size``."""
    return size / math.sqrt(abs(np.linalg.det(matrix[:, :2])))


__all__ = ["Face", "Framing", "FRAMINGS", "framing_for", "detect_faces", "detector_available",
           "face_transform", "crop_side"]
