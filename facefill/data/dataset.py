"""Training data: prepared sets (folders or packs) decoded once into uint8 arrays; several sets
with sampling weights; the per-item dataset of the data-loader-workers path."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from facefill.data.masks import FACE_PART_KINDS, MASK_KINDS, default_parsing_dir, load_parsing, make_mask
from facefill.imaging import read_rgb, resize_rgb

MIX_KINDS = ("center", "random-box", "irregular")
FULL_KINDS = ("center", "box", "irregular", "random", "sunglasses", "surgical-mask", "large")
MIXTURES = {"mix": MIX_KINDS, "full": FULL_KINDS}


def mask_mixture(spec: str) -> tuple[str, ...]:
    """The kinds a training ``--masks`` value draws each sample's kind from, uniformly: ``mix``,
    ``full``, one kind of data/masks.py, or a comma-separated list of them (repeat one to weight it)."""
    if spec in MIXTURES:
        return MIXTURES[spec]
    kinds = tuple(kind.strip() for kind in str(spec).split(","))
    for kind in kinds:
        if kind not in MASK_KINDS:
            raise ValueError(f"--masks {spec}: unknown mask kind {kind!r}; known: {', '.join(MASK_KINDS)}, "
                             f"a comma-separated list of them, or {' or '.join(MIXTURES)}")
    return kinds


def pick_kind(spec: str, rng: np.random.Generator) -> str:
    """One sample's kind from ``spec``'s mixture (no draw when it holds one kind)."""
    kinds = mask_mixture(spec)
    return kinds[rng.integers(len(kinds))] if len(kinds) > 1 else kinds[0]


def list_split(data: str | Path, split: str) -> list[Path]:
    folder = Path(data) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; run `facefill prepare SRC {data}` first")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise ValueError(f"{folder}: no images")
    return files


def read_manifest(data, required: bool = True) -> dict:
    """DATA/manifest.json (written by ``facefill prepare``); a missing one is an error, or ``{}``
    where it is not ``required`` (eval of a plain folder of test images and masks)."""
    path = Path(data) / "manifest.json"
    if not path.is_file():
        if not required:
            return {}
        raise FileNotFoundError(f"{path}: not found; run `facefill prepare SRC {data}` first")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable manifest ({error})") from None


def parse_data_spec(spec: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:WEIGHT``: the weight multiplies how often each of its images is drawn."""
    path, sep, weight = str(spec).rpartition(":")
    if sep and path:
        try:
            value = float(weight)
        except ValueError:
            return str(spec), 1.0
        if not value > 0:
            raise ValueError(f"--data {spec}: the sampling weight must be positive")
        return path, value
    return str(spec), 1.0


# ------------------------------------------------------------------------------------ packs

def decode_bytes(data: bytes, name: str = "") -> np.ndarray:
    """JPEG/WebP/PNG bytes -> HxWx3 uint8 RGB."""
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        raise ValueError(f"{name}: cannot decode a packed image")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def read_shard(path: Path) -> tuple[list[str], list[bytes]]:
    """A pack shard (.npz, no pickles): ``stems``, ``offsets`` and the concatenated ``bytes``."""
    try:
        with np.load(path, allow_pickle=False) as shard:
            stems, offsets, blob = shard["stems"], shard["offsets"], shard["bytes"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a readable pack shard ({error.__class__.__name__})") from None
    return [str(s) for s in stems], [blob[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]


def load_split(data, split: str, size: int, workers: int = 4) -> tuple[np.ndarray, list[str]]:
    """Every image of ``data``'s ``split`` as one NxSxSx3 uint8 array (resized to ``size`` when
    the set's own size differs) and their stems; a packed split or a folder alike."""
    manifest = read_manifest(data)
    shards = (manifest.get("pack") or {}).get(split)
    if shards is not None:
        stems, blobs = [], []
        for shard in shards:
            names, items = read_shard(Path(data) / shard["file"])
            stems += names
            blobs += items
        decode = lambda pair: _fit(decode_bytes(pair[1], f"{data}/{pair[0]}"), size)  # noqa: E731
        items = list(zip(stems, blobs))
    else:
        files = list_split(data, split)
        stems = [f.stem for f in files]
        decode = lambda path: _fit(read_rgb(path), size)  # noqa: E731
        items = files
    if not items:
        raise ValueError(f"{data}: no {split} images")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        images = list(pool.map(decode, items))
    return np.stack(images), stems


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    return image if image.shape[:2] == (size, size) else resize_rgb(image, (size, size))


# ------------------------------------------------------------------------------------ several sets

@dataclass
class TrainingImages:
    """The training images of one or more sets, their sampling weights, and the validation slice."""
    images: np.ndarray            # NxSxSx3 uint8
    weights: np.ndarray           # N, float64: relative probability of each image being drawn
    parsing: np.ndarray | None    # MxSxS uint8 label maps for images that have one
    parsing_index: np.ndarray     # N int64: row of ``parsing`` or -1
    val_images: np.ndarray        # VxSxSx3 uint8
    sources: list[dict]           # per set: path, weight, images, val images


def load_training_images(specs, size: int, val_images: int, parsing_dir=None) -> TrainingImages:
    """Each set's train split; the last ``val_images`` of the first set's train split (at most a
    fifth of it) are held out for validation. Test splits are never read."""
    arrays, weights, sources, stems_all = [], [], [], []
    val = np.zeros((0, size, size, 3), np.uint8)
    for number, spec in enumerate(specs):
        path, weight = parse_data_spec(spec)
        images, stems = load_split(path, "train", size)
        if number == 0:
            count = min(val_images, len(images) // 5)
            if count:
                images, val, stems = images[:-count], images[-count:], stems[:-count]
        arrays.append(images)
        weights.append(np.full(len(images), weight))
        stems_all += [(path, s) for s in stems]
        sources.append({"data": path, "weight": weight, "train_images": len(images),
                        "val_images": len(val) if number == 0 else 0})
    parsing, index = _parsing_maps(stems_all, size, parsing_dir)
    return TrainingImages(np.concatenate(arrays), np.concatenate(weights), parsing, index, val, sources)


def parsing_file(folder, files: dict, stem: str) -> Path:
    """A prepared image's label map: its source file's stem (``files``: the manifest's) as a PNG."""
    return Path(folder) / (Path(files.get(stem, stem)).stem + ".png")


def parsing_at(path, size: int) -> np.ndarray:
    """A label map resized to ``size`` x ``size`` (nearest: labels are not blended)."""
    labels = load_parsing(str(path))
    if labels.shape != (size, size):
        labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return labels


def _parsing_maps(stems, size: int, parsing_dir) -> tuple[np.ndarray | None, np.ndarray]:
    """CelebAMask-HQ label maps for the images whose source file has one (same stem)."""
    folder = Path(parsing_dir) if parsing_dir else default_parsing_dir()
    index = np.full(len(stems), -1, np.int64)
    if not folder.is_dir():
        return None, index
    files = {}
    for data in {path for path, _ in stems}:
        manifest = read_manifest(data)
        if "celeba-hq" in str(manifest.get("source", "")) or manifest.get("parsing"):
            files[data] = manifest.get("files", {})
    maps = []
    for number, (data, stem) in enumerate(stems):
        if data not in files:
            continue
        candidate = parsing_file(folder, files[data], stem)
        if candidate.is_file():
            index[number] = len(maps)
            maps.append(parsing_at(candidate, size))
    return (np.stack(maps) if maps else None), index


# ------------------------------------------------------------------------------------ loader path

def item_seed(seed: int, epoch: int, position: int) -> list[int]:
    """The randomness of one drawn item depends only on (seed, epoch, position in the epoch), so
    data-loader workers and resuming part-way into an epoch see the same flips and holes."""
    return [seed, epoch, position]


class FaceDataset(Dataset):
    """Images (uint8 array or files) at ``size``, random horizontal flips, masks of ``mask_kind``
    (a kind or a mixture, see :func:`mask_mixture`). Face-part kinds take each image's own map
    of ``parsing`` (``parsing_index`` as in :class:`TrainingImages`), else a random one of them;
    without ``parsing``, ``make_mask``'s default (a map of the shared folder, or geometric).

    An index may be an int (randomness from ``default_rng([seed, index])``: fixed, for
    validation) or an ``(index, seed_list)`` pair from :class:`EpochSampler` (training)."""

    def __init__(self, images, size: int, mask_kind: str = "center", flip: bool = True,
                 fixed_masks: bool = False, seed: int = 0, parsing: np.ndarray | None = None,
                 parsing_index: np.ndarray | None = None):
        if not isinstance(images, np.ndarray):
            images = np.stack([resize_rgb(read_rgb(f), (size, size)) for f in images])
        mask_mixture(mask_kind)
        self.images = images
        self.size, self.mask_kind, self.flip = size, mask_kind, flip
        self.fixed_masks, self.seed = fixed_masks, seed
        self.parsing = parsing
        self.parsing_index = np.full(len(images), -1) if parsing_index is None else parsing_index

    def __len__(self):
        return len(self.images)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, [self.seed, item])
        rng = np.random.default_rng(seed)
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(255.0)
        flipped = self.flip and rng.random() < 0.5
        if flipped:
            image = image.flip(-1)
        kind = pick_kind(self.mask_kind, rng)
        options = {}
        if kind in FACE_PART_KINDS and self.parsing is not None:
            options["parsing"] = self._labels(index, rng, flipped)
        mask = make_mask(kind, rng, self.size, **options)
        return {"image": image, "mask": torch.from_numpy(mask).float()[None]}

    def _labels(self, index: int, rng: np.random.Generator, flipped: bool) -> np.ndarray:
        """The image's own parsing map, else a random one of the set's, flipped with the image."""
        own = int(self.parsing_index[index])
        labels = self.parsing[own if own >= 0 else int(rng.integers(len(self.parsing)))]
        return np.ascontiguousarray(labels[:, ::-1]) if flipped else labels


def epoch_order(weights: np.ndarray, seed: int, epoch: int, count: int) -> np.ndarray:
    """``count`` image indices for one epoch: a seeded permutation when every weight is equal,
    else drawn with replacement in proportion to the weights."""
    rng = np.random.default_rng([seed, epoch, 7])
    if np.all(weights == weights[0]):
        return rng.permutation(len(weights))[:count]
    return rng.choice(len(weights), size=count, replace=True, p=weights / weights.sum())


class EpochSampler(torch.utils.data.Sampler):
    """The loader path's order: ``epoch_order`` split across ranks, from ``start`` (resume)."""

    def __init__(self, weights, seed: int, rank: int = 0, world: int = 1, batch: int = 1):
        self.weights, self.seed, self.rank, self.world = weights, seed, rank, world
        self.per_epoch = len(weights) // (world * batch) * batch
        self.epoch, self.start = 0, 0

    def __iter__(self):
        order = epoch_order(self.weights, self.seed, self.epoch, self.per_epoch * self.world)
        for position in range(self.rank + self.start * self.world, len(order), self.world):
            yield int(order[position]), item_seed(self.seed, self.epoch, position)

    def __len__(self):
        return max(0, self.per_epoch - self.start)
