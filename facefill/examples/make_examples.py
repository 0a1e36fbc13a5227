"""Regenerate the bundled example faces in ``facefill/examples/occluded/``.

Six CelebA-HQ faces (``celeba-hq/images/<id>.jpg``), resized to 128x128 (Lanczos), are occluded
using their CelebAMask-HQ parsing maps (``celeba-hq/parsing/<id>.png``, nearest neighbour) so that
each occluder sits where it would on a real photo:

=================================  =====================================================  =========
file                               occluder                                               mask
=================================  =====================================================  =========
``00000-black-sunglasses.png``     flat black sunglasses (two lenses, bridge), hard edge  detected
``00011-grey-box.png``             flat grey (128) box over mouth and chin                 detected
``00025-surgical-mask.png``        none painted: original pixels under the mask           beside
``00039-red-scribble.png``         thick red anti-aliased pen strokes over the face       beside
``00052-black-sunglasses.png``     flat black sunglasses, anti-aliased edge, white        detected
                                   studio background (a natural flat region to ignore)
``00071-striped-scarf.png``        textured striped scarf over the lower face and neck    beside
=================================  =====================================================  =========

"detected": no mask file, ``facefill inpaint`` finds the flat fill itself; "beside": a
``<stem>_mask.png`` (white = hole) lies beside the image. Everything is deterministic.

Usage (from the repository root)::

    python facefill/examples/make_examples.py [--data ../shared/data] [--out facefill/examples/occluded]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = 128
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_OUT = Path(__file__).resolve().parent / "occluded"

# CelebAMask-HQ labels
SKIN, NOSE, GLASSES, L_EYE, R_EYE, L_BROW, R_BROW = 1, 2, 3, 4, 5, 6, 7
MOUTH, U_LIP, L_LIP, NECK = 10, 11, 12, 17


def load(data: Path, face_id: int) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(data / "celeba-hq" / "images" / f"{face_id}.jpg") as image:
        rgb = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)).copy()
    with Image.open(data / "celeba-hq" / "parsing" / f"{face_id}.png") as parsing:
        labels = np.asarray(parsing.resize((SIZE, SIZE), Image.Resampling.NEAREST)).copy()
    return rgb, labels


def centroid(labels: np.ndarray, values) -> np.ndarray:
    rows, cols = np.nonzero(np.isin(labels, values))
    if rows.size == 0:
        raise ValueError(f"parsing map lacks labels {values}")
    return np.array([cols.mean(), rows.mean()])


def sunglasses(labels: np.ndarray, line_type: int) -> np.ndarray:
    """Two lenses over eyes and brows, joined by a bridge, tilted with the eye line."""
    left, right = centroid(labels, [L_EYE]), centroid(labels, [R_EYE])
    if left[0] > right[0]:
        left, right = right, left
    distance = float(np.linalg.norm(right - left))
    angle = float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    for eye in (left, right):
        centre = (int(round(eye[0])), int(round(eye[1] - 0.06 * distance)))
        axes = (int(round(0.40 * distance)), int(round(0.28 * distance)))
        cv2.ellipse(canvas, centre, axes, angle, 0, 360, 255, -1, line_type)
    y = lambda p: int(round(p[1] - 0.12 * distance))  # noqa: E731
    cv2.line(canvas, (int(left[0]), y(left)), (int(right[0]), y(right)), 255,
             max(2, int(round(0.10 * distance))), line_type)
    return canvas


def hull_mask(points_mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(points_mask)
    points = np.stack([cols, rows], axis=1).astype(np.int32)
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillConvexPoly(canvas, cv2.convexHull(points), 255)
    return canvas > 0


def lower_face(labels: np.ndarray, with_neck: bool) -> np.ndarray:
    """Skin, nose, mouth and lips below the middle of the nose (and the neck): a mask or scarf."""
    nose_rows = np.nonzero((labels == NOSE).any(axis=1))[0]
    top = int(nose_rows[0] + 0.55 * (nose_rows[-1] - nose_rows[0]))
    parts = [SKIN, NOSE, MOUTH, U_LIP, L_LIP] + ([NECK] if with_neck else [])
    region = np.isin(labels, parts)
    region[:top] = False
    return hull_mask(region)


def paint(rgb: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    """Blend ``colour`` in with ``alpha`` (0..255): exact where 255, soft where between."""
    weight = (alpha.astype(np.float32) / 255.0)[..., None]
    out = rgb.astype(np.float32) * (1 - weight) + np.array(colour, np.float32) * weight
    return out.round().astype(np.uint8)


def example_sunglasses(rgb, labels, anti_aliased: bool):
    shape = sunglasses(labels, cv2.LINE_AA if anti_aliased else cv2.LINE_8)
    return paint(rgb, shape, (0, 0, 0)), None


def example_grey_box(rgb, labels):
    rows, cols = np.nonzero(np.isin(labels, [MOUTH, U_LIP, L_LIP]))
    height, width = rows.max() - rows.min(), cols.max() - cols.min()
    top, bottom = int(rows.min() - 1.1 * height), int(rows.max() + 0.6 * height)
    left, right = int(cols.min() - 0.35 * width), int(cols.max() + 0.35 * width)
    out = rgb.copy()
    out[max(top, 0):bottom, max(left, 0):right] = 128
    return out, None


def example_surgical_mask(rgb, labels):
    return rgb.copy(), lower_face(labels, with_neck=False)


def example_scribble(rgb, labels, rng):
    face = np.nonzero(np.isin(labels, [SKIN, NOSE, L_EYE, R_EYE, MOUTH]))
    y0, y1, x0, x1 = face[0].min(), face[0].max(), face[1].min(), face[1].max()
    strokes = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(3):
        points = np.stack([rng.uniform(x0, x1, 4), rng.uniform(y0 + 0.2 * (y1 - y0), y1, 4)], axis=1)
        cv2.polylines(strokes, [points.round().astype(np.int32)], False, 255, 4, cv2.LINE_AA)
    hole = cv2.dilate((strokes > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return paint(rgb, strokes, (220, 30, 45)), hole


def example_scarf(rgb, labels, rng):
    hole = lower_face(labels, with_neck=True)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    stripes = ((rows + cols) // 6) % 2 == 0
    navy, tan = np.array([40, 60, 120]), np.array([200, 170, 120])
    texture = np.where(stripes[..., None], navy, tan).astype(np.float32)
    texture += rng.normal(0, 12, texture.shape)
    out = rgb.copy()
    out[hole] = texture.round().clip(0, 255).astype(np.uint8)[hole]
    return out, hole


def make_examples(data: Path = DEFAULT_DATA, out: Path = DEFAULT_OUT) -> list[Path]:
    rng = np.random.default_rng(2024)
    recipes = [
        (0, "black-sunglasses", lambda rgb, lab: example_sunglasses(rgb, lab, anti_aliased=False)),
        (11, "grey-box", example_grey_box),
        (25, "surgical-mask", example_surgical_mask),
        (39, "red-scribble", lambda rgb, lab: example_scribble(rgb, lab, rng)),
        (52, "black-sunglasses", lambda rgb, lab: example_sunglasses(rgb, lab, anti_aliased=True)),
        (71, "striped-scarf", lambda rgb, lab: example_scarf(rgb, lab, rng)),
    ]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for face_id, name, recipe in recipes:
        rgb, labels = load(data, face_id)
        image, hole = recipe(rgb, labels)
        stem = f"{face_id:05d}-{name}"
        Image.fromarray(image).save(out / f"{stem}.png", optimize=True)
        written.append(out / f"{stem}.png")
        if hole is not None:
            Image.fromarray(hole.astype(np.uint8) * 255).save(out / f"{stem}_mask.png", optimize=True)
            written.append(out / f"{stem}_mask.png")
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding celeba-hq/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    for path in make_examples(args.data, args.out):
        print(f"{path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
