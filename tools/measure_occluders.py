"""Occluder detection on CelebA-HQ faces (faces not used for training): painted boxes at 512 px
saved lossless, as JPEG quality 95 and 75 (found and wholly covered; extra area as a fraction of
the box), and false detections on the natural faces and on the same faces with their background
(parsing label 0) painted black and saved as JPEG quality 90.

    .venv/bin/python tools/measure_occluders.py --count 100
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facefill.data.folders import detect_occluder

COLOURS = ((0, 0, 0), (128, 128, 128), (255, 255, 255), (40, 40, 40))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hq", default="/work/shared/data/celeba-hq")
    parser.add_argument("--first", type=int, default=4900, help="first image index used")
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    found = {"png": [], "jpeg q95": [], "jpeg q75": []}
    natural, black_background = [], []
    for index in range(args.first, args.first + args.count):
        face = np.asarray(Image.open(Path(args.hq) / "images" / f"{index}.jpg").convert("RGB"))
        parsing = np.asarray(Image.open(Path(args.hq) / "parsing" / f"{index}.png"))
        painted = cv2.resize(face, (512, 512), interpolation=cv2.INTER_CUBIC)
        y, x = rng.integers(170, 280), rng.integers(120, 250)
        h, w = rng.integers(70, 110), rng.integers(100, 180)     # 2.7-7.5 % of the image
        painted[y:y + h, x:x + w] = COLOURS[rng.integers(len(COLOURS))]
        box = np.zeros((512, 512), bool)
        box[y:y + h, x:x + w] = True
        for kind, image in (("png", painted), ("jpeg q95", jpeg(painted, 95)), ("jpeg q75", jpeg(painted, 75))):
            hole = detect_occluder(image)
            covered = hole is not None and hole[box].mean() > 0.999
            found[kind].append((covered, (hole & ~box).sum() / box.sum() if covered else np.nan))
        natural.append(detect_occluder(face) is not None)
        backdrop = face.copy()
        backdrop[parsing == 0] = 0
        hole = detect_occluder(jpeg(backdrop, 90))
        black_background.append(hole is not None and (hole & (parsing == 0)).any())
    for kind, rows in found.items():
        rows = np.array(rows, float)
        print(f"{kind:9s} found and covered {100 * rows[:, 0].mean():5.1f} %, extra area median "
              f"{100 * np.nanmedian(rows[:, 1]):.1f} % of the box")
    print(f"natural faces taken for an occluder: {100 * np.mean(natural):.1f} %; black backgrounds taken "
          f"for one: {100 * np.mean(black_background):.1f} % ({args.count} faces)")


if __name__ == "__main__":
    main()
