"""User folders for ``facefill inpaint``: listing, image/mask pairing, decoding, bad-file reporting.

Everything a user hands us goes through here. Nothing in this module raises a traceback for a
bad file: decoding and mask problems become :class:`FileFailure` with a one-line ``reason``, which
the engine records in its summary while the batch goes on.

Mask sources, in order of precedence (the first that applies wins):

1. an explicit option: ``--mask-dir D`` (``D/<stem>.*``, or ``D/<stem>_mask.*``), ``--mask FILE``
   (one mask for every image) or ``--masks KIND`` (generated, deterministic per image index);
2. ``<stem>_mask.<image suffix>`` beside the image;
3. detection of a flat-filled occluder (see :func:`detect_occluder`).

Mask files: white (> 127) = hole, binarised at 127 after converting any mode to grey (a mask
whose values are only 0 and 1 counts 1 as hole); ``invert`` flips the convention; transparent
pixels of a mask with alpha are never holes, inverted or not. Masks are in the image's displayed
orientation (EXIF rotation applied). A mask of another size but the same aspect ratio is resized
(nearest neighbour); any other size is refused.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from facefill.inference.faces import detect_faces

log = logging.getLogger(__name__)

#: Suffixes (lower case) read as images.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".webp", ".bmp", ".tif", ".tiff",
                            ".gif", ".ppm", ".pgm", ".pbm", ".pnm"})
#: Output format per input suffix; any other suffix -> PNG.
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".webp": "WEBP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
MASK_SUFFIX = "_mask"
COMPARE_SUFFIX = "_compare"

DECODE_REASON = "cannot decode image (truncated or not an image)"
NO_MASK_REASON = "no mask given and no flat-filled occluder found"

# Occluder detection settings (see detect_occluder for how they were tuned).
MASK_WARN_FRACTION = 0.6         # a mask covering more may be inverted: warn
OCCLUDER_MIN_FRACTION = 0.015
OCCLUDER_MIN_CONTRAST = 24
OCCLUDER_TOP_COLOURS = 8
OCCLUDER_DILATE = 2
OCCLUDER_TOLERANCE = 12         # a painted colour after JPEG (quality 75: 90 % of pixels within 5)
OCCLUDER_EDGE_TOLERANCE = 48    # ... and its blurred edge (quality 75: 99 % within 19, the rest up to 44+)
OCCLUDER_EDGE_GROWTH = 4        # pixels the edge may add around the near-uniform core
OCCLUDER_MIN_UNIFORM = 0.5      # share of a fill's pixels of exactly its colour, 4 pixels in from its edge
                                # (JPEG q75 boxes: 0.84-0.88; flat natural regions such as dark hair: <= 0.3)
OCCLUDER_MIN_SOLIDITY = 0.85    # a border-touching region without a face must be a bar or box


class FileFailure(Exception):
    """One input that cannot be processed; ``reason`` is the one-line text for the report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class DecodedImage:
    """A user image as the model sees it (RGB uint8) plus what the output must keep."""

    path: Path
    rgb: np.ndarray                  # HxWx3 uint8, EXIF orientation applied
    alpha: np.ndarray | None         # HxW uint8 when the input had transparency
    format: str | None               # PIL's name for the input format ("JPEG", "PNG", ...)
    mode: str                        # the input's PIL mode
    icc_profile: bytes | None = None
    # The input's own pixels where the 8-bit RGB view loses something: grey modes (HxW in their
    # dtype: 8/16/32-bit, float) and 16-bit RGB(A) PNG/TIFF (HxWx3 or HxWx4 uint16, RGB order).
    original: np.ndarray | None = None
    frames: int = 1                  # frames/pages in the file; only the first is filled

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]


@dataclass(frozen=True)
class MaskSpec:
    """Where one image's mask comes from: ``source`` is the summary's ``mask_sources`` value."""

    source: str                      # beside | mask-dir | mask | generated:<kind> | detected
    path: Path | None = None         # the mask file (beside, mask-dir, mask)
    kind: str | None = None          # the generated kind
    reason: str | None = None        # set when no mask can be found (mask-dir without the stem)


# --------------------------------------------------------------------------------------- listing

def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _files(folder: Path) -> list[Path]:
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no such folder") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"{folder}: not a folder") from None
    return [entry for entry in entries if entry.is_file()]


def list_images(folder) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name; ``*_mask.*``,
    ``*_compare.*`` and hidden files (such as atomic-write temporaries) are left out."""
    _files(Path(folder))  # "no such folder" / "not a folder"
    return list_inputs(folder)[0]


def _ignore_reason(path: Path) -> str | None:
    """Why an entry named like an image is not filled, or None for a photo to fill."""
    if path.is_symlink() and not path.exists():
        return "dangling symbolic link"
    if path.is_dir():
        return "a folder, not an image (folders are not searched)"
    if not path.is_file():
        return "not a regular file (a FIFO, socket or device)"
    stem = path.stem.lower()
    if stem.endswith(MASK_SUFFIX):
        return (f"named like a mask (*{MASK_SUFFIX}.*) but no image {path.stem[:-len(MASK_SUFFIX)]}.* "
                f"beside it: not filled; rename it to fill it")
    if stem.endswith(COMPARE_SUFFIX):
        return (f"named like a comparison output (*{COMPARE_SUFFIX}.*): not filled; "
                "rename it to fill it")
    return None


def list_inputs(source) -> tuple[list[Path], list[tuple[str, str]]]:
    """What ``facefill inpaint SOURCE`` fills: SOURCE itself when it is an image file, else its
    images (as :func:`list_images`), and ``(name, reason)`` for every other entry named like an
    image (a ``*_mask.*`` with no image of its stem, comparisons, dangling links, FIFOs, folders),
    so the summary can list them; the masks of images beside them are not listed."""
    source = Path(source)
    if source.is_file():
        if not source.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError(f"{source}: not an image file (known suffixes: "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))})")
        return [source], []
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such file or folder")
    entries = sorted((p for p in source.iterdir() if is_image_name(p)), key=lambda p: p.name)
    reasons = {entry: _ignore_reason(entry) for entry in entries}
    images = [entry for entry in entries if reasons[entry] is None]
    stems = {image.stem for image in images}
    ignored = [(entry.name, reason) for entry, reason in reasons.items() if reason is not None
               and not (entry.stem.lower().endswith(MASK_SUFFIX) and entry.is_file()
                        and entry.stem[:-len(MASK_SUFFIX)] in stems)]  # the mask of an image: used
    return images, ignored


def _index_by_stem(files, strip: str = "") -> dict[str, Path]:
    """stem -> file among image files; ``strip`` removes a stem suffix such as ``_mask``.
    Where several suffixes share a stem, PNG wins, then the first by name."""
    index: dict[str, Path] = {}
    for path in sorted(files, key=lambda p: (p.suffix.lower() != ".png", p.name)):
        if not is_image_name(path):
            continue
        stem = path.stem
        if strip:
            if not stem.lower().endswith(strip):
                continue
            stem = stem[: -len(strip)]
        index.setdefault(stem, path)
    return index


def pair_masks(images: list[Path], *, mask_dir=None, mask=None, masks: str | None = None) -> list[MaskSpec]:
    """One :class:`MaskSpec` per image, by the precedence in the module docstring."""
    options = (("--mask-dir", mask_dir), ("--mask", mask), ("--masks", masks))
    given = [name for name, value in options if value]
    if len(given) > 1:
        raise ValueError(f"give at most one of {', '.join(given)}")
    if masks:
        check_mask_kind(masks)
        return [MaskSpec(f"generated:{masks}", kind=masks) for _ in images]
    if mask:
        mask = Path(mask)
        if not mask.is_file():
            raise FileNotFoundError(f"{mask}: no such mask file")
        return [MaskSpec("mask", path=mask) for _ in images]
    if mask_dir:
        mask_dir = Path(mask_dir)
        inputs = {image.resolve() for image in images}
        # an input image is never a mask (--mask-dir may be the input folder: <stem>_mask.* then)
        files = [f for f in _files(mask_dir) if f.resolve() not in inputs and not _is_input_image_in(f, inputs)]
        same_stem, with_suffix = _index_by_stem(files), _index_by_stem(files, MASK_SUFFIX)
        specs = []
        for image in images:
            path = same_stem.get(image.stem) or with_suffix.get(image.stem)
            specs.append(MaskSpec("mask-dir", path=path) if path else
                         MaskSpec("mask-dir", reason=f"no mask {image.stem}.* in {mask_dir}"))
        return specs
    beside: dict[Path, dict[str, Path]] = {}
    specs = []
    for image in images:
        if image.parent not in beside:
            beside[image.parent] = _index_by_stem(_files(image.parent), MASK_SUFFIX)
        path = beside[image.parent].get(image.stem)
        specs.append(MaskSpec("beside", path=path) if path else MaskSpec("detected"))
    return specs


def _is_input_image_in(path: Path, inputs: set[Path]) -> bool:
    """Whether ``path`` sits in an input folder and is a photo to fill there."""
    return path.resolve().parent in {p.resolve().parent for p in inputs} and _ignore_reason(path) is None


def check_mask_kind(kind: str) -> None:
    from facefill.data.masks import MASK_KINDS

    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(MASK_KINDS)}")


# -------------------------------------------------------------------------------------- decoding

def _open(path: Path, what: str) -> Image.Image:
    """Open and fully load ``path`` with EXIF orientation applied, or raise FileFailure."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's EXIF/ICC chatter on odd files
            with Image.open(path) as opened:
                opened.load()
                try:
                    image = ImageOps.exif_transpose(opened)
                except Exception:  # a broken EXIF block: keep the pixels as stored
                    log.debug("%s: ignoring unreadable EXIF orientation", path)
                    image = opened.copy()
                if image is opened:
                    image = opened.copy()
                image.format = opened.format
                return image
    except Image.DecompressionBombError:
        raise FileFailure(f"{what} too large to decode safely") from None
    except FileNotFoundError:
        raise FileFailure(f"{what} vanished before it could be read") from None
    except PermissionError:
        raise FileFailure(f"{what} cannot be read (permission denied)") from None
    except Exception:  # UnidentifiedImageError, truncated data, SyntaxError, struct.error ...
        raise FileFailure(DECODE_REASON if what == "image" else f"cannot decode {what}") from None


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return image.mode in ("P", "L", "RGB") and "transparency" in image.info


def _grey_divisor(array: np.ndarray, mode: str) -> float:
    """What a high-depth grey value is divided by for its 8-bit view (and multiplied back by)."""
    if mode == "F":
        return 1 / 255.0 if array.size and np.nanmax(array) <= 1.0 else 1.0
    if mode.startswith("I;16") or (array.size and array.max() > 255):
        return 257.0  # 16-bit range
    return 1.0


def _grey16_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    divided = np.nan_to_num(array.astype(np.float64) / _grey_divisor(array, mode))
    return divided.round().clip(0, 255).astype(np.uint8)


def _grey_array(image: Image.Image) -> np.ndarray | None:
    """The grey channel in its own dtype for grey modes (1, L, LA, I;16*, I, F), else None."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "LA":
        return np.ascontiguousarray(np.asarray(image)[..., 0])
    if mode == "L" or mode.startswith("I") or mode == "F":
        return np.array(image)
    return None


def to_rgb_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode -> (HxWx3 uint8 RGB, HxW uint8 alpha or None).

    16-bit and 32-bit grey (``I;16``, ``I``, ``F``) are scaled to 8 bits, not clipped."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        grey = _grey16_to_uint8(np.asarray(image), mode)
        return np.repeat(grey[..., None], 3, axis=2), None
    if _has_alpha(image):
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    return np.asarray(image.convert("RGB")), None


def _probe(path: Path, max_pixels: int | None) -> tuple[int, bool]:
    """(frames, 16-bit RGB without EXIF rotation) from the header alone; refuses more than
    ``max_pixels`` pixels before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
                frames = int(getattr(image, "n_frames", 1) or 1)
                deep = (image.mode in ("RGB", "RGBA") and any(";16" in str(t.args) for t in image.tile)
                        and image.getexif().get(0x0112, 1) == 1)
    except Image.DecompressionBombError:
        raise FileFailure("image too large to decode safely") from None
    except Exception:  # _open names the problem
        return 1, False
    if max_pixels and width * height > max_pixels:
        raise FileFailure(f"image is {width}x{height} ({width * height / 1e6:.1f} MP), over the "
                          f"--max-pixels limit of {max_pixels / 1e6:g} MP; raise it to fill this image")
    return frames, deep


def _read_deep_rgb(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """A 16-bit RGB(A) file's pixels (PIL reads them as 8-bit), in RGB order, or None."""
    data = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[:2] != tuple(shape):
        return None
    order = [2, 1, 0, 3][: data.shape[2]]
    return np.ascontiguousarray(data[..., order])


def decode_image(path, max_pixels: int | None = None) -> DecodedImage:
    """Read a user image in any mode, EXIF orientation applied, or raise :class:`FileFailure`;
    images over ``max_pixels`` pixels are refused from their header, before decoding."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise FileFailure(f"{DECODE_REASON}: empty file")
    frames, deep = _probe(path, max_pixels)
    image = _open(path, "image")
    try:
        rgb, alpha = to_rgb_alpha(image)
    except Exception as error:
        reason = f"cannot convert image mode {image.mode} to RGB ({error.__class__.__name__})"
        raise FileFailure(reason) from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise FileFailure(DECODE_REASON)
    original = _read_deep_rgb(path, rgb.shape[:2]) if deep else _grey_array(image)
    return DecodedImage(path=path, rgb=rgb, alpha=alpha, format=image.format, mode=image.mode,
                        icc_profile=image.info.get("icc_profile"), original=original, frames=frames)


def image_size(path) -> tuple[int, int] | None:
    """(width, height) from the header, orientation applied; None when it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
                try:
                    if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                        width, height = height, width
                except Exception:
                    pass
                return width, height
    except Exception:
        return None


# ----------------------------------------------------------------------------------------- masks

def read_mask_file(path, shape: tuple[int, int] | None = None, invert: bool = False) -> np.ndarray:
    """A mask file in any mode -> HxW bool (True = hole), resized (nearest) to ``shape`` when
    only its scale differs; another aspect ratio is refused."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise FileFailure(f"cannot decode mask {path} (empty file)")
    image = _open(path, f"mask {path}")
    try:
        rgb, alpha = to_rgb_alpha(image)
    except Exception:
        raise FileFailure(f"cannot decode mask {path} (mode {image.mode})") from None
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    hole = mask_values_to_hole(grey, alpha, invert)
    if shape is not None:
        hole = fit_mask_shape(hole, tuple(shape), path)
    if hole.mean() > MASK_WARN_FRACTION:
        log.warning("mask %s covers %.0f %% of the image: is it inverted? (white = hole; --invert-mask "
                    "for black = hole)", path, 100 * hole.mean())
    return hole


def mask_values_to_hole(grey: np.ndarray, alpha: np.ndarray | None = None, invert: bool = False) -> np.ndarray:
    """Grey mask values -> hole: above 127 (a mask whose values are only 0 and 1 counts 1), flipped
    by ``invert``; transparent pixels (alpha <= 127) are never holes, inverted or not."""
    grey = np.asarray(grey)
    hole = grey >= 1 if grey.size and grey.max() == 1 else grey > 127
    if invert:
        hole = ~hole
    if alpha is not None:
        hole &= np.asarray(alpha) > 127
    return hole


def fit_mask_shape(hole: np.ndarray, shape: tuple[int, int], path) -> np.ndarray:
    """``hole`` at the image's (height, width): resized (nearest) when the aspect ratio matches
    (to within a pixel); a mask in the image's stored orientation (before EXIF rotation) or of
    another aspect ratio raises FileFailure."""
    height, width = hole.shape
    target_h, target_w = shape
    if (height, width) == (target_h, target_w):
        return hole
    sizes = f"mask {path} is {width}x{height}, image is {target_w}x{target_h}"
    if _same_aspect((height, width), shape):
        return cv2.resize(hole.astype(np.uint8), (target_w, target_h), interpolation=cv2.INTER_NEAREST) > 0
    if height != width and _same_aspect((width, height), shape):
        raise FileFailure(f"{sizes} as displayed: the mask matches the image turned by 90 degrees (its "
                          f"stored orientation?); masks are in the displayed orientation, EXIF rotation applied")
    raise FileFailure(f"{sizes}: a different aspect ratio")


def _same_aspect(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether ``size`` scaled to one side of ``target`` gives its other side (rounded)."""
    (height, width), (target_h, target_w) = size, target
    return round(height * target_w / width) == target_h or round(width * target_h / height) == target_w


def generated_mask(kind: str, seed: int, index: int, shape: tuple[int, int]) -> np.ndarray:
    """``make_mask(kind, default_rng([seed, index]), (h, w))``: the same holes on every run."""
    from facefill.data.masks import make_mask

    hole = np.asarray(make_mask(kind, np.random.default_rng([seed, index]), tuple(shape)), dtype=bool)
    if hole.shape != tuple(shape):
        raise FileFailure(f"generated {kind} mask is {hole.shape}, image is {tuple(shape)}")
    return hole


def detect_occluder(rgb: np.ndarray, *, min_fraction: float = OCCLUDER_MIN_FRACTION,
                    min_contrast: float = OCCLUDER_MIN_CONTRAST, top_colours: int = OCCLUDER_TOP_COLOURS,
                    dilate: int = OCCLUDER_DILATE, faces=None) -> np.ndarray | None:
    """The hole of flat-filled occluders (a painted box, sunglasses shape ...), or None.

    Candidates: for the ``top_colours`` most frequent colours (quantised to 32 levels a channel),
    the 4-connected regions of pixels within ``OCCLUDER_TOLERANCE`` of the colour (the largest
    channel difference), of at least ``min_fraction`` of the image, with at least
    ``OCCLUDER_MIN_UNIFORM`` of their pixels (4 pixels in from the edge) exactly of it. A JPEG
    keeps a painted fill near-uniform (at quality 75, 90 % of a box's pixels lie within 5 of its
    colour, 99 % within 19) but blurs its edge: a region that is not exactly one colour (95 % of
    its pixels) grows by up to ``OCCLUDER_EDGE_GROWTH`` pixels into pixels within
    ``OCCLUDER_EDGE_TOLERANCE`` of the colour. Natural photographs have flat regions
    too (clipped black or white backgrounds and hair, studio backdrops); they fade into their
    surroundings, while a painted fill stops at an edge: the median, over a 2-pixel ring around
    the grown region, of the largest channel difference from the colour must reach
    ``min_contrast``. Finally a region that reaches the image border must cover 15 % of the
    centre third of a detected face's box (a black or white background around a
    portrait never does); where no face is found (the occluder may hide it), a region reaching
    the border must be exactly one colour and solid (a lossless bar or box:
    ``OCCLUDER_MIN_SOLIDITY`` of its convex hull). The union of accepted regions is returned,
    dilated by ``dilate`` pixels.
    """
    rgb = np.asarray(rgb)
    height, width = rgb.shape[:2]
    min_area = max(1, int(np.ceil(min_fraction * height * width)))
    quantised = rgb >> 3
    packed = (quantised[..., 0].astype(np.int32) << 10) | (quantised[..., 1].astype(np.int32) << 5) | quantised[..., 2]
    bins, counts = np.unique(packed, return_counts=True)
    order = np.argsort(counts, kind="stable")[::-1][:top_colours]
    faces = detect_faces(rgb) if faces is None else faces
    found = np.zeros((height, width), bool)
    for i in order:
        if counts[i] < min_area // 4:
            break
        colour = np.median(rgb[packed == bins[i]], axis=0).round().astype(np.int16)
        distance = np.abs(rgb.astype(np.int16) - colour).max(axis=2)
        near = (distance <= OCCLUDER_TOLERANCE) & ~found
        count, labels, stats, _ = cv2.connectedComponentsWithStats(near.astype(np.uint8), connectivity=4)
        for label in np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1:
            core = labels == label
            if _uniformity(core, distance) < OCCLUDER_MIN_UNIFORM:
                continue
            lossless = np.mean(distance[core] == 0) >= 0.95  # a sharp edge: the dilation covers it
            region = core if lossless else _grow_edge(core, distance <= OCCLUDER_EDGE_TOLERANCE)
            if _stands_out(region, distance, min_contrast) and _over_a_face(region, faces, lossless):
                found |= region
    if not found.any():
        return None
    if dilate > 0:
        found = cv2.dilate(found.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=dilate) > 0
    return found


def _uniformity(core: np.ndarray, distance: np.ndarray) -> float:
    """The share of pixels of exactly the colour, away from the core's edge (JPEG blocks
    straddling a painted edge ring for 4 pixels or so)."""
    inner = cv2.erode(core.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    return float(np.mean(distance[inner if inner.any() else core] == 0))


def _grow_edge(region: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``region`` grown step by step (up to OCCLUDER_EDGE_GROWTH pixels) into ``allowed`` pixels,
    with holes inside it closed."""
    kernel = np.ones((3, 3), np.uint8)
    grown = region.astype(np.uint8)
    allowed = allowed.astype(np.uint8)
    for _ in range(OCCLUDER_EDGE_GROWTH):
        grown = cv2.dilate(grown, kernel) & (allowed | grown)
    closed = cv2.morphologyEx(grown, cv2.MORPH_CLOSE, kernel, iterations=2)
    return (closed | grown).astype(bool)


def _stands_out(region: np.ndarray, distance: np.ndarray, min_contrast: float) -> bool:
    kernel = np.ones((3, 3), np.uint8)
    ring = cv2.dilate(region.astype(np.uint8), kernel, iterations=2).astype(bool) & ~region
    return bool(ring.any()) and float(np.median(distance[ring])) >= min_contrast


def _over_a_face(region: np.ndarray, faces, lossless: bool) -> bool:
    """The border rules of :func:`detect_occluder`: a region inside the image may be anywhere
    (an occluder can hide the face from the detector, which may then find a false one)."""
    at_border = region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any()
    if not at_border:
        return True
    if not faces:
        return lossless and _solidity(region) >= OCCLUDER_MIN_SOLIDITY
    for face in faces:  # the centre third of the face box (eyes, nose, mouth)
        x, y, w, h = face.box
        box = region[max(0, int(y + h / 3)):int(y + 2 * h / 3), max(0, int(x + w / 3)):int(x + 2 * w / 3)]
        if box.size and box.mean() >= 0.15:
            return True
    return False


def _solidity(region: np.ndarray) -> float:
    points = cv2.findNonZero(region.astype(np.uint8))
    hull = cv2.contourArea(cv2.convexHull(points))
    return float(region.sum()) / max(hull, 1.0)


def load_mask(spec: MaskSpec, rgb: np.ndarray, *, index: int = 0, seed: int = 0,
              invert: bool = False) -> np.ndarray:
    """The HxW bool hole for one decoded image, or raise :class:`FileFailure`."""
    shape = rgb.shape[:2]
    if spec.reason:
        raise FileFailure(spec.reason)
    if spec.kind:
        return generated_mask(spec.kind, seed, index, shape)
    if spec.path is not None:
        return read_mask_file(spec.path, shape, invert)
    hole = detect_occluder(rgb)
    if hole is None:
        raise FileFailure(NO_MASK_REASON)
    return hole


# ---------------------------------------------------------------------------------------- output

#: ``--ext`` choices and the suffix each writes; ``same`` keeps the input's (PNG if unwritable).
OUTPUT_EXTENSIONS = {"same": None, "png": ".png", "jpg": ".jpg", "webp": ".webp"}


def output_name(image: Path, ext: str = "same", suffix: str = "") -> str:
    """``<stem><suffix><ext>``: the input's extension for formats written back as they came
    (``ext="same"``), else ``.png``; or the ``ext`` asked for."""
    if ext not in OUTPUT_EXTENSIONS:
        raise ValueError(f"--ext {ext!r}: use one of {', '.join(OUTPUT_EXTENSIONS)}")
    extension = OUTPUT_EXTENSIONS[ext] or (image.suffix if image.suffix.lower() in OUTPUT_FORMATS else ".png")
    return image.stem + suffix + extension


def output_format(name: str) -> str:
    """The format an output named ``name`` is written in (from its suffix; PNG if unknown)."""
    return OUTPUT_FORMATS.get(Path(name).suffix.lower(), "PNG")


def keeps_alpha(fmt: str) -> bool:
    """Whether ``fmt`` can hold the input's alpha channel (a ``.jpg`` that really held a PNG
    with transparency is written as a JPEG without it, so name and content agree)."""
    return fmt != "JPEG"


def encode_options(fmt: str, decoded: DecodedImage | None = None, quality: int | None = None) -> dict:
    """Save options per format: JPEG at ``quality`` (default 95), WebP lossless unless a
    ``quality`` below 100 is given, the input's ICC profile."""
    options: dict = {}
    if fmt == "JPEG":
        options.update(quality=min(95 if quality is None else quality, 100), subsampling=0)
    elif fmt == "WEBP":
        lossy = quality is not None and quality < 100
        options.update(lossless=not lossy, quality=quality if lossy else 95)
    elif fmt == "PNG":
        # zlib level 3: 2.2x faster than Pillow's default 6 on photos, files 4-10 % larger (lossless alike)
        options.update(compress_level=3)
    # Keep an RGB colour profile; a CMYK or grey one would not describe the RGB output.
    if (decoded is not None and decoded.icc_profile and fmt in ("JPEG", "PNG", "WEBP", "TIFF")
            and decoded.mode in ("RGB", "RGBA", "RGBa", "P", "PA")):
        options["icc_profile"] = decoded.icc_profile
    return options


def to_pil(rgb: np.ndarray, alpha: np.ndarray | None = None) -> Image.Image:
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    if alpha is not None:
        image.putalpha(Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8), mode="L"))
    return image


def _holds_grey(fmt: str, dtype: np.dtype) -> bool:
    """Whether ``fmt`` stores grey of this dtype: 8-bit anywhere, 16-bit in PNG/TIFF, more in TIFF."""
    if dtype == np.uint8:
        return True
    if dtype == np.uint16:
        return fmt in ("PNG", "TIFF")
    return fmt == "TIFF"


def compose_output(decoded: DecodedImage, filled: np.ndarray, fmt: str) -> Image.Image:
    """The output image: the input's own pixels (grey stays grey, 16-bit and float grey stay so
    where ``fmt`` can hold them), with only the pixels the fill changed (in its 8-bit RGB view)
    replaced; the alpha channel kept where ``fmt`` holds one."""
    alpha = decoded.alpha if keeps_alpha(fmt) else None
    grey = decoded.original
    if grey is None or grey.ndim != 2:
        return to_pil(filled, alpha)
    scale = _grey_divisor(grey, decoded.mode)
    if not _holds_grey(fmt, grey.dtype):
        grey, scale = decoded.rgb[..., 0], 1.0  # the 8-bit view, which this format can hold
    changed = _changed(decoded, filled)
    luma = np.asarray(Image.fromarray(np.ascontiguousarray(filled, dtype=np.uint8)).convert("L"))
    out = grey.copy()
    values = luma[changed].astype(np.float64) * scale
    out[changed] = values if out.dtype.kind == "f" else values.round().astype(out.dtype)
    image = Image.fromarray(out)
    if alpha is not None and image.mode == "L":
        image.putalpha(Image.fromarray(np.ascontiguousarray(alpha, dtype=np.uint8), mode="L"))
    return image


def _changed(decoded: DecodedImage, filled: np.ndarray) -> np.ndarray:
    """HxW bool: the pixels the fill changed in the 8-bit RGB view."""
    return np.any(np.asarray(filled) != decoded.rgb, axis=2)


def encode_output(decoded: DecodedImage, filled: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """The output file's bytes in ``fmt``: :func:`compose_output` with :func:`encode_options`,
    or, for a 16-bit RGB(A) input written as PNG or TIFF, its 16-bit pixels with the changed
    ones replaced (encoded by OpenCV: PIL writes no 16-bit RGB)."""
    deep = decoded.original
    if deep is not None and deep.ndim == 3 and fmt in ("PNG", "TIFF"):
        out = deep.copy()
        changed = _changed(decoded, filled)
        out[..., :3][changed] = np.asarray(filled)[changed].astype(np.uint16) * 257
        order = [2, 1, 0, 3][: out.shape[2]]
        ok, data = cv2.imencode(".png" if fmt == "PNG" else ".tiff", np.ascontiguousarray(out[..., order]))
        if not ok:
            raise ValueError(f"OpenCV could not encode a 16-bit {fmt}")
        return data.tobytes()
    buffer = io.BytesIO()
    compose_output(decoded, filled, fmt).save(buffer, format=fmt, **encode_options(fmt, decoded, quality))
    return buffer.getvalue()


__all__ = ["IMAGE_SUFFIXES", "OUTPUT_FORMATS", "DECODE_REASON", "NO_MASK_REASON", "FileFailure",
           "DecodedImage", "MaskSpec", "list_images", "pair_masks", "check_mask_kind", "decode_image",
           "image_size", "to_rgb_alpha", "read_mask_file", "generated_mask", "detect_occluder",
           "load_mask", "output_name", "output_format", "keeps_alpha", "encode_options", "to_pil",
           "list_inputs", "compose_output", "encode_output", "OUTPUT_EXTENSIONS"]
