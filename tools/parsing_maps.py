"""Write the CelebAMask-HQ label maps of a prepared set's train split at the set's size, as small
grey PNGs, for a machine without ../shared (training there points FACEFILL_PARSING_DIR at OUT).

    python tools/parsing_maps.py DATA PARSING_SRC OUT
"""
import sys
from pathlib import Path

from PIL import Image

from facefill.data.dataset import parsing_at, parsing_file, read_manifest


def main(data: str, source: str, out: str) -> None:
    manifest = read_manifest(data)
    size = int(manifest["size"])
    Path(out).mkdir(parents=True, exist_ok=True)
    written = 0
    for stem in manifest["split"]["train"]:
        path = parsing_file(source, manifest["files"], stem)
        if path.is_file():
            Image.fromarray(parsing_at(path, size), "L").save(Path(out) / path.name, optimize=True)
            written += 1
    print(f"{out}: {written} label maps at {size} px")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip())
    main(*sys.argv[1:])
