"""Where OpenCV's Haar face box sits in a training source's crops (facefill.inference.faces.FRAMINGS):
the median, over the faces found, of the box centre and width as fractions of the crop side.

    .venv/bin/python tools/measure_framing.py /work/data/data128/test --count 400
    .venv/bin/python tools/measure_framing.py /work/shared/data/celeba-hq/images --count 400
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from facefill.inference.faces import detect_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))[:args.count]
    rows = []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        faces = detect_faces(image)
        if faces:
            x, y, w, h = faces[0].box
            side = image.shape[0]
            rows.append(((x + w / 2) / side, (y + h / 2) / side, w / side))
    median = np.median(np.array(rows), axis=0)
    print(f"{len(rows)} faces found in {len(files)}: Framing(cx={median[0]:.3f}, cy={median[1]:.3f}, "
          f"width={median[2]:.3f})")


if __name__ == "__main__":
    main()
