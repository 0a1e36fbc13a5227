"""``facefill prepare``: rank faces by sharpness, crop, resize, split, and store fixed eval masks.

Layout written to ``DATA`` (``config.out``)::

    train/<stem>.png           lossless RGB, size x size
    train-NNN.npz              with --pack instead of train/: WebP images in shards of at most 48 MiB
    test/<stem>.png
    masks/<kind>/<stem>.png    one per test image and kind, L mode, 255 = hole
    manifest.json              settings, counts, sharpness scores, split, mask areas, skipped files

Two passes keep memory flat whatever the number of images: the first decodes, crops and scores
every file; the second decodes the kept ones again, resizes and writes them. Re-running with the
same arguments writes the same bytes; files a previous run left in the managed folders that the
new split does not contain are removed.
"""
from __future__ import annotations

import csv
import io
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from facefill import __version__
from facefill.config import PrepareConfig
from facefill.data.masks import MASK_KINDS, make_mask, mask_area
from facefill.fileio import write_bytes_atomic, write_image_atomic, write_json_atomic
from facefill.imaging import mask_image, resize_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROPS = ("celeba", "detect", "center")
CELEBA_SIZE = (178, 218)          # width, height of aligned CelebA
CELEBA_TOP = 20                   # the face square starts 20 rows down: rows 20..198
DETECT_MARGIN = 1.6               # the Haar box (brows to mouth) enlarged to take in the whole face
DETECT_MAX_SIDE = 640             # detection runs on a copy no larger than this
DETECT_RAISE = 0.1                # ... and its centre moved up by this fraction of its height
MIN_SIDE = 8                      # smaller images are skipped
PACK_FORMAT = "npz shards: stems (str), offsets (int64), bytes (uint8: the WebP images end to end)"
SHARD_OVERHEAD = 4096              # room kept in each shard for the zip and array headers
MAX_WARNINGS = 10                 # per-file crop notes logged (all go to the manifest)
NO_DETECTOR = ("this OpenCV has no Haar face detector (cv2.CascadeClassifier, removed in OpenCV 5); "
               "every image uses the centre square")


@dataclass
class Source:
    path: Path
    rel: str                      # path relative to SRC, POSIX
    stem: str                     # unique output stem
    box: tuple[int, int, int, int] | None = None   # left, top, right, bottom of the face square
    score: float | None = None
    note: str | None = None       # e.g. detection fell back to the centre square


# ------------------------------------------------------------------------------------ listing

def list_images(src: Path, exclude: Path | None = None) -> list[Path]:
    """Image files under ``src``, recursively, sorted by relative path; ``exclude`` is skipped."""
    files = []
    for path in src.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        if path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(src).as_posix())


def unique_stems(rels: list[str]) -> list[str]:
    """File stems, made unique: clashing ones become their relative path joined by '_'."""
    def plain(rel):
        return Path(rel).stem

    def joined(rel):
        return "_".join(Path(rel).with_suffix("").parts)

    def with_suffix(rel):
        return "_".join(Path(rel).parts).replace(".", "_")

    stems = [plain(r) for r in rels]
    for rule in (joined, with_suffix):
        counts: dict[str, int] = {}
        for stem in stems:
            counts[stem] = counts.get(stem, 0) + 1
        stems = [rule(r) if counts[s] > 1 else s for r, s in zip(rels, stems)]
    seen: dict[str, int] = {}
    result = []
    for stem in stems:                     # last resort: a counter
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        result.append(stem if n == 0 else f"{stem}_{n + 1}")
    return result


def read_identities(path) -> dict[str, str]:
    """``file,identity`` CSV -> {file: identity}; the header is optional."""
    mapping: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as error:
        raise ValueError(f"{path}: cannot read identities ({error.strerror})") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["file", "identity"]:
        rows = rows[1:]
    for number, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise ValueError(f"{path}: line {number}: expected file,identity")
        mapping[row[0].strip().replace("\\", "/")] = row[1].strip()
    if not mapping:
        raise ValueError(f"{path}: no file,identity rows")
    return mapping


# ------------------------------------------------------------------------------------ images

def decode(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB with EXIF orientation applied; raises ValueError with a reason."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            array = np.asarray(image.convert("RGB"))
    except ValueError:
        raise
    except Image.DecompressionBombError as error:
        raise ValueError(f"image too large ({error})") from None
    except Exception as error:  # noqa: BLE001 - every decoder failure becomes a reason
        reason = "not an image or unsupported format" if "cannot identify" in str(error) else str(error)
        raise ValueError(f"cannot decode: {reason}") from None
    if min(array.shape[:2]) < MIN_SIDE:
        raise ValueError(f"too small ({array.shape[1]}x{array.shape[0]})")
    return array


def center_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def celeba_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The aligned-CelebA face square: 178x178 from row 20 of a 178x218 image (scaled for
    images with CelebA's shape at another resolution); the centre square otherwise."""
    cw, ch = CELEBA_SIZE
    if abs(width * ch - height * cw) <= max(cw, ch) and width < height:
        side = width
        top = min(round(CELEBA_TOP * height / ch), height - side)
        return 0, top, side, top + side
    return center_box(width, height)


_local = threading.local()


def _cascade():
    classifier = getattr(_local, "cascade", None)
    if classifier is None:
        classifier = _local.cascade = _make_cascade()
    return classifier


def _make_cascade():
    """A Haar frontal-face cascade per thread (detectMultiScale is not thread-safe); False if
    this OpenCV lacks it (OpenCV 5 moved CascadeClassifier and its data out of the main wheel)."""
    if not hasattr(cv2, "CascadeClassifier"):
        return False
    data = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = Path(data) / "haarcascade_frontalface_default.xml"
    if not path.is_file():
        return False
    classifier = cv2.CascadeClassifier(str(path))
    return False if classifier.empty() else classifier


def detector_available() -> bool:
    return bool(_cascade())


def detect_box(image: np.ndarray) -> tuple[tuple[int, int, int, int], str | None]:
    """The biggest Haar face enlarged by ``DETECT_MARGIN`` and clipped to a square inside the
    image; the centre square and a note when no face (or no detector) is found."""
    height, width = image.shape[:2]
    classifier = _cascade()
    if not classifier:
        return center_box(width, height), NO_DETECTOR
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width))
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    least = max(16, round(0.12 * min(gray.shape)))
    faces = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(least, least))
    if len(faces) == 0:
        return center_box(width, height), "no face detected; centre square"
    x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda f: (f[2] * f[3], -f[1], -f[0]))
    cx, cy = (x + w / 2) / scale, (y + h / 2 - DETECT_RAISE * h) / scale
    side = min(round(max(w, h) / scale * DETECT_MARGIN), width, height)
    left = int(min(max(round(cx - side / 2), 0), width - side))
    top = int(min(max(round(cy - side / 2), 0), height - side))
    return (left, top, left + side, top + side), None


def crop_box(image: np.ndarray, crop: str) -> tuple[tuple[int, int, int, int], str | None]:
    height, width = image.shape[:2]
    if crop == "celeba":
        return celeba_box(width, height), None
    if crop == "detect":
        return detect_box(image)
    return center_box(width, height), None


def sharpness(face: np.ndarray) -> float:
    """Variance of the Laplacian of the grey face: higher is sharper."""
    gray = cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def _cut(image: np.ndarray, box) -> np.ndarray:
    left, top, right, bottom = box
    return image[top:bottom, left:right]


# ------------------------------------------------------------------------------------ splits

def split_images(stems: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded permutation of the sorted stems; the first round(f * n) go to test."""
    ordered = sorted(stems)
    n = len(ordered)
    n_test = round(test_fraction * n)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test = {ordered[i] for i in order[:n_test]}
    return [s for s in ordered if s not in test], [s for s in ordered if s in test]


def split_identities(identity_of: dict[str, str], test_fraction: float,
                     seed: int) -> tuple[list[str], list[str]]:
    """Identities in a seeded order, each added to test when it brings the test count closer to
    round(f * images); train and test share no identity."""
    groups: dict[str, list[str]] = {}
    for stem, identity in identity_of.items():
        groups.setdefault(identity, []).append(stem)
    identities = sorted(groups)
    target = round(test_fraction * len(identity_of))
    test_ids: set[str] = set()
    count = 0
    for index in np.random.default_rng(seed).permutation(len(identities)):
        identity = identities[index]
        size = len(groups[identity])
        if abs(count + size - target) < abs(count - target) and len(test_ids) < len(identities) - 1:
            test_ids.add(identity)
            count += size
    train = sorted(s for s, i in identity_of.items() if i not in test_ids)
    test = sorted(s for s, i in identity_of.items() if i in test_ids)
    return train, test


def mask_seed(seed: int, kind: str, index: int) -> np.random.Generator:
    """The eval-mask rng of test image ``index`` (in sorted order) for ``kind``."""
    return np.random.default_rng([seed, MASK_KINDS.index(kind), index])


# ------------------------------------------------------------------------------------ helpers

def _check(config: PrepareConfig) -> None:
    if config.size < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE}, got {config.size}")
    if config.keep is not None and config.keep < 1:
        raise ValueError(f"keep must be at least 1, got {config.keep}")
    if not 0 <= config.test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {config.test_fraction}")
    if config.crop not in CROPS:
        raise ValueError(f"unknown crop {config.crop!r}; known: {', '.join(CROPS)}")
    unknown = [k for k in config.masks if k not in MASK_KINDS]
    if unknown:
        raise ValueError(f"unknown mask kind(s) {', '.join(unknown)}; known kinds: {', '.join(MASK_KINDS)}")
    if config.workers < 1:
        raise ValueError(f"workers must be at least 1, got {config.workers}")
    if not 0 <= config.pack_quality <= 100:
        raise ValueError(f"pack quality must be in [0, 100], got {config.pack_quality}")
    if not config.shard_mib > 0:
        raise ValueError(f"shard size must be positive, got {config.shard_mib}")


def _map(function, items, workers: int, description: str) -> list:
    """``function`` over ``items`` in a thread pool with a progress bar; results in input order."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    results = [None] * len(items)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=len(items))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(function, item): i for i, item in enumerate(items)}
            for future, index in futures.items():
                results[index] = future.result()
                progress.advance(task)
    return results


def encode_packed(face: np.ndarray, quality: int) -> bytes:
    """RGB uint8 -> lossy WebP bytes (a 128 px face takes about 4 KB at quality 90)."""
    ok, data = cv2.imencode(".webp", cv2.cvtColor(face, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode WebP")
    return data.tobytes()


def write_shards(out: Path, split: str, items: list[tuple[str, bytes]], shard_mib: float) -> list[dict]:
    """``items`` (stem, encoded bytes) in order as ``SPLIT-NNN.npz`` files (``stems``, ``offsets``,
    ``bytes``; no pickles) of at most ``shard_mib`` MiB each, written atomically."""
    limit = int(shard_mib * 1024 * 1024)
    groups, current, used = [], [], SHARD_OVERHEAD
    for stem, data in items:
        cost = len(data) + 8 + 4 * len(stem) + 4
        if current and used + cost > limit:
            groups.append(current)
            current, used = [], SHARD_OVERHEAD
        if SHARD_OVERHEAD + cost > limit:
            raise ValueError(f"{stem}: one packed image is larger than --shard-mib {shard_mib}")
        current.append((stem, data))
        used += cost
    if current:
        groups.append(current)
    shards = []
    for number, group in enumerate(groups):
        stems = np.array([stem for stem, _ in group])
        offsets = np.cumsum([0] + [len(data) for _, data in group]).astype(np.int64)
        blob = np.frombuffer(b"".join(data for _, data in group), np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, stems=stems, offsets=offsets, bytes=blob)
        name = f"{split}-{number:03d}.npz"
        write_bytes_atomic(out / name, buffer.getvalue())
        shards.append({"file": name, "images": len(group), "bytes": buffer.getbuffer().nbytes})
    return shards


def _remove_stale_shards(out: Path, keep: set[str]) -> None:
    for path in out.glob("train-[0-9][0-9][0-9].npz"):
        if path.name not in keep:
            path.unlink()


def _remove_stale(folder: Path, keep: set[str]) -> None:
    if not folder.is_dir():
        return
    for path in folder.glob("*.png"):
        if path.stem not in keep:
            path.unlink()
    if folder.name in MASK_KINDS and not any(folder.iterdir()):
        folder.rmdir()


# ------------------------------------------------------------------------------------ prepare

def prepare(config: PrepareConfig) -> dict:
    """Build a prepared data folder from the face images under ``config.src``; returns the manifest."""
    _check(config)
    src, out = Path(config.src), Path(config.out)
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: not a folder")
    files = list_images(src, exclude=out.resolve() if out.exists() else None)
    if not files:
        raise ValueError(f"{config.src}: no images found")
    if config.crop == "detect" and not detector_available():
        logger.warning("OpenCV %s: %s", cv2.__version__, NO_DETECTOR)

    rels = [f.relative_to(src).as_posix() for f in files]
    sources = [Source(path, rel, stem) for path, rel, stem in zip(files, rels, unique_stems(rels))]
    skipped: list[dict] = []
    identity_of: dict[str, str] = {}
    if config.identities:
        table = read_identities(config.identities)
        listed = []
        for source in sources:
            identity = table.get(source.rel, table.get(source.path.name))
            if identity is None:
                skipped.append({"file": source.rel, "reason": "not in the identities file"})
            else:
                identity_of[source.stem] = identity
                listed.append(source)
        sources = listed

    # pass 1: decode, crop, score
    def score(source: Source):
        try:
            image = decode(source.path)
        except ValueError as error:
            return str(error)
        source.box, source.note = crop_box(image, config.crop)
        source.score = sharpness(_cut(image, source.box))
        return None

    reasons = _map(score, sources, config.workers, "scoring")
    for source, reason in zip(sources, reasons):
        if reason is not None:
            skipped.append({"file": source.rel, "reason": reason})
    scored = sorted((s for s in sources if s.score is not None), key=lambda s: (-s.score, s.stem))
    kept = scored if config.keep is None else scored[:config.keep]
    dropped = len(scored) - len(kept)
    if config.crop == "detect" and not detector_available():
        notes = [{"file": None, "note": NO_DETECTOR}]
    else:
        notes = [{"file": s.rel, "note": s.note} for s in kept if s.note]
        for note in notes[:MAX_WARNINGS]:
            logger.warning("%s: %s", note["file"], note["note"])
        if len(notes) > MAX_WARNINGS:
            logger.warning("%d more face-crop notes in the manifest", len(notes) - MAX_WARNINGS)

    # pass 2: decode again, crop, resize, write
    by_stem = {s.stem: s for s in kept}
    if config.identities:
        identities = {s: identity_of[s] for s in by_stem}
        train, test = split_identities(identities, config.test_fraction, config.seed)
    else:
        train, test = split_images(list(by_stem), config.test_fraction, config.seed)
    split_of = {**{s: "train" for s in train}, **{s: "test" for s in test}}
    size = config.size

    packed: dict[str, bytes] = {}

    def write(stem: str):
        source = by_stem[stem]
        try:
            image = decode(source.path)
        except ValueError as error:           # the file changed since pass 1
            return str(error)
        face = resize_rgb(np.ascontiguousarray(_cut(image, source.box)), (size, size))
        if config.pack and split_of[stem] == "train":
            packed[stem] = encode_packed(face, config.pack_quality)
        else:
            write_image_atomic(out / split_of[stem] / f"{stem}.png", Image.fromarray(face))
        return None

    for folder in ("test",) if config.pack else ("train", "test"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    failures = _map(write, train + test, config.workers, "writing")
    for stem, reason in zip(train + test, failures):
        if reason is not None:
            skipped.append({"file": by_stem[stem].rel, "reason": reason})
            (out / split_of[stem] / f"{stem}.png").unlink(missing_ok=True)
    lost = {stem for stem, reason in zip(train + test, failures) if reason is not None}
    train, test = [s for s in train if s not in lost], [s for s in test if s not in lost]
    kept = [s for s in kept if s.stem not in lost]

    # fixed evaluation masks for the test split
    masks: dict[str, dict] = {}
    for kind in config.masks:
        def make(item, kind=kind):
            index, stem = item
            mask = make_mask(kind, mask_seed(config.seed, kind, index), size)
            write_image_atomic(out / "masks" / kind / f"{stem}.png", mask_image(mask))
            return mask_area(mask)

        areas = _map(make, list(enumerate(test)), config.workers, f"masks: {kind}")
        masks[kind] = {"count": len(areas), "mean_area": round(float(np.mean(areas)), 6) if areas else None}

    _remove_stale(out / "train", set() if config.pack else set(train))
    shards = write_shards(out, "train", [(s, packed[s]) for s in train], config.shard_mib) if config.pack else []
    _remove_stale_shards(out, {shard["file"] for shard in shards})
    _remove_stale(out / "test", set(test))
    for kind in MASK_KINDS:
        _remove_stale(out / "masks" / kind, set(test) if kind in config.masks else set())

    skipped.sort(key=lambda item: item["file"])
    manifest = {
        "source": str(config.src),
        "size": size,
        "crop": config.crop,
        "seed": config.seed,
        "keep": config.keep,
        "test_fraction": config.test_fraction,
        "identities": str(config.identities) if config.identities else None,
        "counts": {"found": len(files), "kept": len(kept), "train": len(train), "test": len(test),
                   "skipped": len(skipped), "dropped": dropped},
        "sharpness": {
            "measure": "variance of the Laplacian of the grey face crop, before resizing",
            "threshold": round(kept[-1].score, 4) if kept else None,
            "scores": {s.stem: round(s.score, 4) for s in scored},
        },
        "split": {"by": "identity" if config.identities else "image", "train": train, "test": test},
        "masks": masks,
        "skipped": skipped,
        "notes": notes,
        "files": {s.stem: s.rel for s in sorted(kept, key=lambda s: s.stem)},
        "facefill_version": __version__,
    }
    if config.pack:
        manifest["pack"] = {"format": PACK_FORMAT, "quality": config.pack_quality, "shard_mib": config.shard_mib,
                            "train": shards}
    if config.identities:
        manifest["split"]["identities"] = {"train": len({identity_of[s] for s in train}),
                                           "test": len({identity_of[s] for s in test})}
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


__all__ = ["prepare", "list_images", "unique_stems", "read_identities", "decode", "celeba_box", "center_box",
           "detect_box", "crop_box", "sharpness", "split_images", "split_identities", "mask_seed",
           "IMAGE_SUFFIXES"]
