"""Write the CelebAMask-HQ label maps of a prepared set's train split at the set's size, as small
grey PNGs, for a machine without ../shared (training there points FACEFILL_PARSING_DIR at OUT).

    python tools/parsing_maps.py DATA PARSING_SRC OUT
"""
import json
import sys
from pathlib import Path

import cv2
from PIL import Image

from facefill.data.masks import load_parsing


def main(data: str, source: str, out: str) -> None:
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    size = int(manifest["size"])
    Path(out).mkdir(parents=True, exist_ok=True)
    written = 0
    for stem in manifest["split"]["train"]:
        name = Path(manifest["files"].get(stem, stem)).stem + ".png"
        path = Path(source) / name
        if path.is_file():
            labels = cv2.resize(load_parsing(str(path)), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
            Image.fromarray(labels, "L").save(Path(out) / name, optimize=True)
            written += 1
    print(f"{out}: {written} label maps at {size} px")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip())
    main(*sys.argv[1:])
