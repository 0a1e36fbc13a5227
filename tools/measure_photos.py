"""PSNR of faces shifted and scaled inside larger photos: main's pipeline, this one, and Telea.

Builds photos from held-out CelebA-HQ test faces: each face (a 256 px square) is scaled to 30-60 %
of a 512 or 1024 px canvas and pasted, with a soft edge, at a random place on a plausible
backdrop (smooth colour blotches with a little grain). A box hole (the centre quarter of the face
square, as the `center` eval masks) goes beside each photo as <stem>_mask.png. Then
`facefill inpaint` fills the folder with the shipped default weights, once with each CLI given
(--before: e.g. main's checkout), and with --method telea; PSNR is measured over the face square
(known pixels and fill together, as papers report) and over the hole alone.

    .venv/bin/python tools/measure_photos.py --faces /work/data/datahq256/test --count 40 \\
        --before /work/main/.venv/bin/facefill --work /tmp/photos --pictures docs
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facefill.inference.fitting import assign_to_faces


def backdrop(side: int, rng) -> np.ndarray:
    """A plausible out-of-focus background: smooth colour blotches and a little sensor grain."""
    coarse = rng.uniform(40, 220, (4, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 3, field.shape).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)


def make_photo(face: np.ndarray, side: int, rng, face_hole: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(photo, hole, (x, y, width) of the face square); the hole is ``face_hole`` (the face's own
    stored mask, bool) scaled with the face, or else the centre quarter of the face square."""
    canvas = backdrop(side, rng)
    width = int(rng.uniform(0.3, 0.6) * side)
    x, y = (int(rng.integers(0, side - width + 1)) for _ in range(2))
    scaled = cv2.resize(face, (width, width), interpolation=cv2.INTER_CUBIC if width > face.shape[0] else cv2.INTER_AREA)
    ramp = np.minimum(np.arange(width) + 1, np.arange(width)[::-1] + 1) / max(1, width // 16)
    alpha = np.clip(np.minimum.outer(ramp, ramp), 0, 1)[..., None]
    region = canvas[y:y + width, x:x + width].astype(np.float64)
    canvas[y:y + width, x:x + width] = (alpha * scaled + (1 - alpha) * region).round().astype(np.uint8)
    hole = np.zeros((side, side), bool)
    if face_hole is not None:
        scaled_hole = cv2.resize(face_hole.astype(np.uint8), (width, width), interpolation=cv2.INTER_NEAREST)
        hole[y:y + width, x:x + width] = scaled_hole > 0
    else:
        quarter = width // 4
        hole[y + quarter:y + width - quarter, x + quarter:x + width - quarter] = True
    return canvas, hole, (x, y, width)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else float("inf")


def run(cli: str, src: Path, out: Path, *extra: str, cwd: Path | None = None) -> None:
    command = [cli, "inpaint", str(src), str(out), "--overwrite", "--device", "cpu", *extra]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode not in (0, 1) or not (out / "summary.json").is_file():
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", default="/work/data/datahq256/test", help="held-out face squares")
    parser.add_argument("--count", type=int, default=40, help="faces per canvas size")
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--after", default=str(Path(sys.executable).parent / "facefill"), help="this facefill CLI")
    parser.add_argument("--before", help="another facefill CLI to compare (e.g. main's .venv/bin/facefill)")
    parser.add_argument("--weights", action="append", default=[],
                        help="also fill with this weights file (this CLI; repeatable): a candidate default")
    parser.add_argument("--work", default="/tmp/facefill-photos")
    parser.add_argument("--pictures", help="also write README pictures (input | mask | fill) here")
    parser.add_argument("--out", help="JSON results (default: WORK/results.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masks", help="a stored mask kind of the faces' set (e.g. sunglasses): each face's own "
                                        "mask from FACES/../masks/KIND/ instead of the centre quarter")
    args = parser.parse_args()

    files = sorted(Path(args.faces).glob("*.png")) + sorted(Path(args.faces).glob("*.jpg"))
    mask_dir = Path(args.faces).parent / "masks" / args.masks if args.masks else None
    if mask_dir is not None:
        files = [f for f in files if (mask_dir / f"{f.stem}.png").is_file()]
    if len(files) < args.count:
        sys.exit(f"{args.faces}: fewer than {args.count} faces")
    rng = np.random.default_rng(args.seed)
    work = Path(args.work)
    results = {"faces": args.faces, "count": args.count, "rows": []}
    for side in (int(s) for s in args.sizes.split(",")):
        src = work / f"in-{side}"
        src.mkdir(parents=True, exist_ok=True)
        truth, on_faces = {}, 0
        for index in range(args.count):
            face = np.asarray(Image.open(files[index]).convert("RGB"))
            face_hole = np.asarray(Image.open(mask_dir / f"{files[index].stem}.png").convert("L")) > 127 if mask_dir else None
            image, hole, box = make_photo(face, side, rng, face_hole)
            stem = f"photo{index:03d}"
            truth[stem] = (image, hole, box)
            painted = image.copy()
            painted[hole] = 0
            Image.fromarray(painted).save(src / f"{stem}.png")
            Image.fromarray(hole.astype(np.uint8) * 255).save(src / f"{stem}_mask.png")
            on_faces += bool(assign_to_faces(painted, hole))
        results.setdefault("holes_on_a_detected_face", {})[side] = on_faces
        print(f"{side} px: the hole lies on a detected face in {on_faces} of {args.count} photos", file=sys.stderr)
        pipelines = {"after (this branch)": (args.after, ()), "telea": (args.after, ("--method", "telea"))}
        if args.before:
            pipelines["before (main)"] = (args.before, ())
        for weights in args.weights:
            pipelines[f"weights {Path(weights).stem}"] = (args.after, ("--weights", weights))
        for label, (cli, extra) in pipelines.items():
            out = work / f"out-{side}-{label.replace(' ', '-').replace('(', '').replace(')', '')}"
            cwd = Path(cli).resolve().parents[2] if label.startswith("before") else None
            run(cli, src, out, *extra, cwd=cwd)
            face_psnr, hole_psnr = [], []
            for stem, (image, hole, (x, y, width)) in truth.items():
                filled = np.asarray(Image.open(out / f"{stem}.png").convert("RGB"))
                face_psnr.append(psnr(filled[y:y + width, x:x + width], image[y:y + width, x:x + width]))
                hole_psnr.append(psnr(filled[hole], image[hole]))
            summary = json.loads((out / "summary.json").read_text())
            row = {"size": side, "pipeline": label, "method": summary["method"], "weights": summary.get("weights"),
                   "images": len(face_psnr), "psnr_face": float(np.mean(face_psnr)),
                   "psnr_hole": float(np.mean(hole_psnr))}
            results["rows"].append(row)
            print(f"{side:5d} px  {label:22s} {row['method']:14s} face {row['psnr_face']:6.2f} dB  "
                  f"hole {row['psnr_hole']:6.2f} dB")
            if args.pictures and label.startswith("after"):
                write_picture(Path(args.pictures), side, src, out, "photo000", truth["photo000"][2])
    out_path = Path(args.out) if args.out else work / "results.json"
    out_path.write_text(json.dumps(results, indent=2))
    print(markdown(results["rows"]))


def write_picture(folder: Path, side: int, src: Path, out: Path, stem: str, box: tuple, panel: int = 300) -> None:
    """docs/photo-<side>.jpg: the input, its mask, the fill, and the fill's face at full
    resolution (``box``: x, y, width of the face square), side by side, each ``panel`` px."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y, width = box
    filled = Image.open(out / f"{stem}.png").convert("RGB")
    panels = [Image.open(src / f"{stem}.png").convert("RGB"), Image.open(src / f"{stem}_mask.png").convert("RGB"),
              filled, filled.crop((x, y, x + width, y + width))]
    strip = Image.new("RGB", (4 * panel + 12, panel), "white")
    for i, image in enumerate(panels):
        strip.paste(image.resize((panel, panel), Image.Resampling.LANCZOS), (i * (panel + 4), 0))
    strip.save(folder / f"photo-{side}.jpg", quality=88)


def markdown(rows: list[dict]) -> str:
    lines = ["| canvas | pipeline | method | PSNR face (dB) | PSNR hole (dB) |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['size']} px | {r['pipeline']} | {r['method']} | {r['psnr_face']:.2f} | {r['psnr_hole']:.2f} |"
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
