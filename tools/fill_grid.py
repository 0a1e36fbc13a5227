"""A picture of fills side by side: for each mask kind, the first test faces of a prepared set as
masked input, each method's fill and the original, one row per face (as `facefill eval` scores them).

    .venv/bin/python tools/fill_grid.py --data /work/data/datahq256 --masks center,random,irregular \\
        --methods telea,dense-gan --weights runs/x/weights.pt --faces 2 --out docs/grid-256.jpg
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from facefill.config import EvalConfig
from facefill.engine.evaluate import _load_pair, load_test_split, resolve_methods, score_method


def masked_view(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The input as a user sees it: the hole painted white."""
    view = image.copy()
    view[hole] = 255
    return view


def label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    scale = max(0.35, tile.shape[1] / 400)
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (tile.shape[1] - 8) / width)      # long names shrink to fit the tile
    origin = (4, int(16 * max(scale, 0.35) / 0.4))
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
    return out


def grid_rows(data: str, kind: str, entries, faces: int, first: int, framing: str) -> list[np.ndarray]:
    items, shape, _ = load_test_split(data, kind, limit=first + faces, framing=framing)
    items = items[first:first + faces]
    stems = {item.stem for item in items}
    fills = [score_method(entry, items, torch.device("cpu"), len(items), keep=stems, shape=shape)[2]
             for entry in entries]
    rows = []
    for item in items:
        image, hole = _load_pair(item, shape)
        tiles = [label(masked_view(image, hole), kind)]
        tiles += [label(filled[item.stem], entry.name) for entry, filled in zip(entries, fills)]
        tiles.append(label(image, "original"))
        rows.append(np.concatenate(tiles, axis=1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--masks", default="center")
    parser.add_argument("--methods", default="telea")
    parser.add_argument("--weights", action="append", default=[])
    parser.add_argument("--faces", type=int, default=2, help="faces per mask kind")
    parser.add_argument("--first", type=int, default=0, help="skip this many test faces")
    parser.add_argument("--framing", choices=("aligned", "shifted"), default="aligned")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    _, _, size = load_test_split(args.data, args.masks.split(",")[0], limit=1)
    config = EvalConfig(data=args.data, masks=args.masks.split(",")[0],
                        methods=tuple(m for m in args.methods.split(",") if m), weights=tuple(args.weights),
                        device="cpu")
    entries = resolve_methods(config, torch.device("cpu"), size)
    rows = [row for kind in args.masks.split(",")
            for row in grid_rows(args.data, kind, entries, args.faces, args.first, args.framing)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, quality=88)
    print(f"wrote {args.out}: columns masked, {', '.join(e.name for e in entries)}, original")


if __name__ == "__main__":
    main()
