"""Scoring methods on a prepared data set's test split with its stored masks.

Metrics are computed per image on the composited 8-bit output (known pixels kept, the method's
fill in the hole), as the papers score saved images:

- ``psnr``, ``ssim``: the whole image (skimage; SSIM with a 7-pixel window, smaller for tiny
  images), as the inpainting papers report them;
- ``psnr_hole``: PSNR of the mean squared error over hole pixels only;
- ``ssim_hole``: the mean of the SSIM map over hole pixels;
- ``l1``, ``l2``: 100 x the mean absolute / squared error over hole pixels, in % of the [0, 1]
  range (the "mean L1/L2 loss" of the context-encoder and dense-GAN papers);
- ``sharpness``: the variance of the Laplacian of the output's grey levels over the hole eroded by
  2 px (so the 3x3 Laplacian sees fill pixels only, never the seam) divided by that of the
  original over the same pixels: near 0 for a blurry fill, near 1 for one as detailed as the
  original, above 1 for noise; NaN when the eroded hole is empty or the original is flat there;
- ``area``: the hole's fraction of the image.

An image without a hole has NaN hole metrics, left out of the means (as is any non-finite value,
e.g. the infinite PSNR of an image that comes back unchanged). Means are also given per
mask-area bin (0-10 %, 10-20 %, ..., 90-100 %).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from facefill.config import EvalConfig
from facefill.data.augment import reframe_pair
from facefill.data.dataset import read_manifest
from facefill.inference.fitting import PasteSettings, fill_batch
from facefill.inference.options import FillOptions, warn_unused

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "psnr_hole", "ssim_hole", "l1", "l2", "sharpness")
CSV_COLUMNS = ("method", "stem", "area", *METRICS)
AREA_BIN_COUNT = 10
AREA_BINS = tuple(f"{10 * i}-{10 * (i + 1)}%" for i in range(AREA_BIN_COUNT))
EVAL_SETTINGS = PasteSettings(aligned=True)  # as `facefill inpaint --aligned`
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# (key, column title, decimals) of the summary tables
SUMMARY_COLUMNS = (("psnr", "PSNR", 2), ("ssim", "SSIM", 4), ("psnr_hole", "PSNR (hole)", 2),
                   ("ssim_hole", "SSIM (hole)", 4), ("l1", "L1 %", 2), ("l2", "L2 %", 3),
                   ("sharpness", "Sharpness", 3))
SHARPNESS_EROSION = 2   # px taken off the hole's edge before the Laplacian's variance is measured
GREY_WEIGHTS = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------- metrics

def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """10 log10(range^2 / MSE); inf for a zero error, NaN for a NaN error."""
    if math.isnan(mse):
        return float("nan")
    if mse <= 0:
        return float("inf")
    return float(10.0 * math.log10(data_range ** 2 / mse))


def ssim_window(height: int, width: int, default: int = 7) -> int | None:
    """skimage's default 7-pixel window, shrunk to the largest odd size that fits a tiny image;
    None when the image is under 3 pixels on a side (no SSIM then)."""
    side = min(height, width, default)
    if side % 2 == 0:
        side -= 1
    return side if side >= 3 else None


def grey(image: np.ndarray) -> np.ndarray:
    """Luma (ITU-R 601 weights) of an HxWx3 image; an HxW image as it is; float64."""
    image = np.asarray(image, dtype=np.float64)
    return image @ np.asarray(GREY_WEIGHTS) if image.ndim == 3 else image


def sharpness(output: np.ndarray, target: np.ndarray, hole: np.ndarray) -> float:
    """var(Laplacian(output)) / var(Laplacian(target)) over the hole eroded by ``SHARPNESS_EROSION``
    px (grey levels, 3x3 Laplacian); NaN when fewer than two pixels remain or the target is flat."""
    side = 2 * SHARPNESS_EROSION + 1
    inner = cv2.erode(np.asarray(hole, dtype=np.uint8), np.ones((side, side), np.uint8)).astype(bool)
    if inner.sum() < 2:
        return float("nan")
    fill_variance = cv2.Laplacian(grey(output), cv2.CV_64F, ksize=1)[inner].var()
    original_variance = cv2.Laplacian(grey(target), cv2.CV_64F, ksize=1)[inner].var()
    if original_variance <= 1e-12:
        return float("nan")
    return float(fill_variance / original_variance)


def image_metrics(output: np.ndarray, target: np.ndarray, hole: np.ndarray) -> dict[str, float]:
    """Every metric for one image: ``output`` and ``target`` are HxWx3 (or HxW) floats in [0, 1]
    (converted to float64), ``hole`` an HxW bool array (True = hole)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    output = np.asarray(output, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    hole = np.asarray(hole, dtype=bool)
    if output.shape != target.shape or hole.shape != target.shape[:2]:
        raise ValueError(f"shape mismatch: output {output.shape}, target {target.shape}, hole {hole.shape}")
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(target, output, data_range=1.0))
    window = ssim_window(*target.shape[:2])
    channel_axis = -1 if target.ndim == 3 else None
    if window is None:
        ssim, ssim_map = float("nan"), None
    else:
        ssim, ssim_map = structural_similarity(target, output, channel_axis=channel_axis, data_range=1.0,
                                               win_size=window, full=True)
        ssim = float(ssim)
    metrics = {"area": float(hole.mean()), "psnr": psnr, "ssim": ssim}
    if hole.any():
        difference = output[hole] - target[hole]  # (pixels, channels)
        squared = float(np.mean(difference ** 2))
        metrics.update(psnr_hole=psnr_from_mse(squared),
                       ssim_hole=float(ssim_map[hole].mean()) if ssim_map is not None else float("nan"),
                       l1=100.0 * float(np.mean(np.abs(difference))), l2=100.0 * squared,
                       sharpness=sharpness(output, target, hole))
    else:
        metrics.update(psnr_hole=float("nan"), ssim_hole=float("nan"), l1=float("nan"), l2=float("nan"),
                       sharpness=float("nan"))
    return metrics


def area_bin(area: float) -> int:
    """The mask-area bin of a hole fraction: 0 for [0, 10 %), ..., 9 for [90 %, 100 %]."""
    return int(min(max(math.floor(area * AREA_BIN_COUNT + 1e-9), 0), AREA_BIN_COUNT - 1))


def _finite_mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def mean_metrics(rows: list[dict]) -> dict[str, float]:
    """Means of ``area`` and every metric over ``rows``, each over its finite values only."""
    return {key: _finite_mean([row.get(key) for row in rows]) for key in ("area", *METRICS)}


def area_bin_metrics(rows: list[dict]) -> list[dict]:
    """One entry per area bin (all ten, empty ones with count 0 and no means)."""
    grouped: list[list[dict]] = [[] for _ in range(AREA_BIN_COUNT)]
    for row in rows:
        grouped[area_bin(row["area"])].append(row)
    return [{"bin": label, "low": index / AREA_BIN_COUNT, "high": (index + 1) / AREA_BIN_COUNT,
             "count": len(members), "means": mean_metrics(members) if members else None}
            for index, (label, members) in enumerate(zip(AREA_BINS, grouped))]


# ------------------------------------------------------------------------------------------ filling

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_tensor_batch(inpainter, images: torch.Tensor, masks: torch.Tensor,
                      options: FillOptions | None = None) -> torch.Tensor:
    """Fill a batch (images Bx3xHxW in [0, 1], masks Bx1xHxW, 1 = hole) through inpaint's own
    pipeline (``fill_batch`` with ``aligned``: test splits are face crops in the training
    framing), so the scores are those of the images ``facefill inpaint --aligned`` writes.
    Returns the 8-bit composite as floats: known pixels exactly as given (8-bit), the fill in
    the hole."""
    device = images.device
    arrays = images.detach().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    holes = (masks[:, 0] > 0.5).cpu().numpy()
    filled = fill_batch(inpainter, list(arrays), list(holes), device, len(arrays), options, EVAL_SETTINGS)
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).to(device).float().div(255.0)


# ------------------------------------------------------------------------------------------- inputs

FRAMINGS = ("aligned", "shifted")


@dataclass
class EvalItem:
    stem: str
    image: Path
    mask: Path
    reframe_seed: int | None = None    # shifted framing: the seed of this face's scale and shift


def eval_items(data, masks: str, limit: int | None = None, framing: str = "aligned",
               seed: int = 0) -> list[EvalItem]:
    """The first ``limit`` test images (sorted by stem) that have a stored mask of kind ``masks``;
    with ``framing`` "shifted", each face and its hole are moved by a scale and shift fixed by
    ``seed`` and the stem (``reframe_pair``)."""
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}, got {framing!r}")
    data = Path(data)
    test_dir, mask_dir = data / "test", data / "masks" / masks
    if not test_dir.is_dir():
        raise ValueError(f"{test_dir}: no test split in {data}; create it with `facefill prepare SRC {data}`")
    if not mask_dir.is_dir():
        kinds = sorted(p.name for p in (data / "masks").iterdir() if p.is_dir()) if (data / "masks").is_dir() else []
        available = f" (stored kinds: {', '.join(kinds)})" if kinds else " (no masks stored)"
        raise ValueError(f"{mask_dir}: no stored {masks!r} masks{available}; create them with "
                         f"`facefill prepare SRC {data} --masks {masks}`")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    images = sorted((p for p in test_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                    key=lambda p: p.stem)
    items, unmasked = [], 0
    for image in images:
        mask = mask_dir / f"{image.stem}.png"
        if mask.is_file():
            reframe_seed = zlib.crc32(f"{seed}/{image.stem}".encode()) if framing == "shifted" else None
            items.append(EvalItem(image.stem, image, mask, reframe_seed))
            if limit is not None and len(items) >= limit:
                break
        else:
            unmasked += 1
    if unmasked:
        log.warning("%d test image(s) have no %r mask and are skipped", unmasked, masks)
    if not items:
        raise ValueError(f"{test_dir}: no test image has a mask in {mask_dir}")
    return items


def _load_pair(item: EvalItem, shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    from facefill.imaging import read_mask, read_rgb

    image, mask = read_rgb(item.image), read_mask(item.mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{item.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, "
                         f"image {item.image.name} is {image.shape[1]}x{image.shape[0]}")
    if shape is not None and image.shape[:2] != shape:
        raise ValueError(f"{item.image}: {image.shape[1]}x{image.shape[0]}, but the test split's images "
                         f"are {shape[1]}x{shape[0]} (re-run facefill prepare)")
    if item.reframe_seed is not None:
        image, mask = reframe_pair(image, mask, item.reframe_seed)
    return image, mask


def load_test_split(data, masks: str, limit: int | None = None, framing: str = "aligned",
                    seed: int = 0) -> tuple[list[EvalItem], tuple[int, int], int]:
    """What eval scores: the items (``eval_items``), the test images' (height, width), and the
    data's size (the manifest's, else the larger side) for choosing shipped weights."""
    items = eval_items(data, masks, limit, framing, seed)
    manifest = read_manifest(data, required=False)
    first_image, _ = _load_pair(items[0], None)
    shape = first_image.shape[:2]
    size = int(manifest.get("size") or max(shape))
    if manifest.get("size") and shape != (size, size):
        log.warning("manifest says %d px, test images are %dx%d", size, shape[1], shape[0])
    return items, shape, size


# ------------------------------------------------------------------------------------------ methods

@dataclass
class MethodEntry:
    name: str
    inpainter: object
    source: str                     # builtin | shipped | weights
    weights: str | None = None
    meta: dict = field(default_factory=dict)


def resolve_methods(config: EvalConfig, device, image_size: int | None) -> list[MethodEntry]:
    """The methods to score, in order: ``config.methods`` (a weights file for a named method pins
    it), then the other weights files, each named after its method, or ``<method>@<file stem>``
    when that name is taken."""
    from facefill.checkpoint import WeightsError, best_shipped, resolve_inpainter, weights_dir
    from facefill.registry import UnknownMethodError, get_method_class

    loaded = []
    for path in config.weights:
        inpainter = resolve_inpainter(None, str(path), device)
        loaded.append((Path(path), inpainter))
    pinned: dict[str, tuple[Path, object]] = {}
    for path, inpainter in loaded:
        pinned.setdefault(inpainter.name, (path, inpainter))

    entries: list[MethodEntry] = []
    for name in dict.fromkeys(config.methods):
        if name in pinned:
            path, inpainter = pinned[name]
            entries.append(MethodEntry(name, inpainter, "weights", str(path),
                                       dict(getattr(inpainter, "weights_meta", {}) or {})))
            continue
        try:
            cls = get_method_class(name)
        except UnknownMethodError as error:
            raise ValueError(str(error)) from None
        if not cls.trainable:
            entries.append(MethodEntry(name, resolve_inpainter(name, None, device, image_size), "builtin"))
            continue
        card = best_shipped(image_size, name)
        try:
            inpainter = resolve_inpainter(name, None, device, image_size)
        except WeightsError:
            raise ValueError(f"method {name!r} is learned and has no shipped weights in {weights_dir()}; "
                             f"train it (facefill train) and pass --weights FILE") from None
        entries.append(MethodEntry(name, inpainter, "shipped", card["path"] if card else None,
                                   dict(getattr(inpainter, "weights_meta", {}) or {})))

    taken = {entry.name for entry in entries}
    for path, inpainter in loaded:
        if any(entry.inpainter is inpainter for entry in entries):
            continue
        name = inpainter.name if inpainter.name not in taken else f"{inpainter.name}@{path.stem}"
        base, counter = name, 2
        while name in taken:
            name, counter = f"{base}-{counter}", counter + 1
        taken.add(name)
        entries.append(MethodEntry(name, inpainter, "weights", str(path),
                                   dict(getattr(inpainter, "weights_meta", {}) or {})))
    if not entries:
        raise ValueError("no methods to evaluate: give --methods and/or --weights")
    return entries


# -------------------------------------------------------------------------------------------- scoring

def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def score_method(entry: MethodEntry, items: list[EvalItem], device, batch_size: int,
                 keep: set[str] = frozenset(), progress=None, shape=None,
                 options: FillOptions | None = None) -> tuple[list[dict], float, dict]:
    """Fill and score every item; returns (per-image rows, seconds per image of filling alone,
    {stem: uint8 output} for the stems in ``keep``)."""
    rows, kept, seconds = [], {}, 0.0
    task = progress.add_task(entry.name, total=len(items)) if progress is not None else None
    for batch in _chunks(items, batch_size):
        pairs = [_load_pair(item, shape) for item in batch]
        images = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
        images = images.permute(0, 3, 1, 2).float().div_(255.0)
        masks = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device).float()[:, None]
        _synchronize(device)
        start = time.perf_counter()
        output = fill_tensor_batch(entry.inpainter, images, masks, options)
        _synchronize(device)
        seconds += time.perf_counter() - start
        output = output.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        del images, masks
        for item, (image, mask), filled in zip(batch, pairs, output):
            metrics = image_metrics(filled / 255.0, image / 255.0, mask)
            rows.append({"method": entry.name, "stem": item.stem, **metrics})
            if item.stem in keep:
                kept[item.stem] = filled.copy()
        if task is not None:
            progress.advance(task, len(batch))
    return rows, seconds / max(len(items), 1), kept


def _summary_rows(methods: dict) -> list[list]:
    return [[name] + [info["means"][key] for key, _, _ in SUMMARY_COLUMNS] + [info["seconds_per_image"]]
            for name, info in methods.items()]


def _bin_rows(methods: dict) -> list[list]:
    rows = []
    for name, info in methods.items():
        for entry in info["by_area_bin"]:
            if entry["count"]:
                rows.append([name, entry["bin"], entry["count"]]
                            + [entry["means"][key] for key, _, _ in SUMMARY_COLUMNS])
    return rows


SUMMARY_HEADERS = ["Method"] + [title for _, title, _ in SUMMARY_COLUMNS] + ["s/img"]
SUMMARY_DIGITS = [0] + [digits for _, _, digits in SUMMARY_COLUMNS] + [4]
BIN_HEADERS = ["Method", "Hole area", "Images"] + [title for _, title, _ in SUMMARY_COLUMNS]
BIN_DIGITS = [0, 0, 0] + [digits for _, _, digits in SUMMARY_COLUMNS]
METRIC_NOTE = ("PSNR (dB) and SSIM over the whole image with the known pixels kept; the hole columns "
               "over hole pixels only; L1 % and L2 % are 100 x the mean absolute and squared error over "
               "hole pixels (values in [0, 1]); Sharpness is the variance of the Laplacian of the fill "
               "over the hole eroded by 2 px divided by the original's (0 blurry, 1 as detailed as the "
               "original, above 1 noise); s/img is the method's filling time alone.")


def _summary_markdown(result: dict) -> str:
    from facefill.report.tables import markdown_table

    lines = ["# facefill evaluation", "",
             f"Data: `{result['data']}` ({result['count']} test images, {result['size']} px); "
             f"masks: `{result['masks']}` (mean hole area {100 * result['mean_area']:.1f} %); "
             f"framing: {result.get('framing', 'aligned')}; "
             f"device: {result['device']}.", "",
             markdown_table(SUMMARY_HEADERS, _summary_rows(result["methods"]), SUMMARY_DIGITS,
                            align=["l"] + ["r"] * (len(SUMMARY_HEADERS) - 1)),
             METRIC_NOTE, "", "## By hole area", "",
             markdown_table(BIN_HEADERS, _bin_rows(result["methods"]), BIN_DIGITS,
                            align=["l", "l"] + ["r"] * (len(BIN_HEADERS) - 2))]
    return "\n".join(lines)


def _masked_view(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    shown = image.copy()
    shown[mask] = 128
    return shown


def _report_html(result: dict, grid_items: list[EvalItem], fills: dict[str, dict[str, np.ndarray]]) -> str:
    import html as _html

    from facefill.report.html import html_page, html_table, image_grid_html

    body = [f"<p class=\"meta\">Data: <code>{_html.escape(result['data'])}</code> "
            f"({result['count']} test images, {result['size']} px); masks: "
            f"<code>{_html.escape(result['masks'])}</code> (mean hole area {100 * result['mean_area']:.1f} %); "
            f"device: {_html.escape(result['device'])}; {_html.escape(result['date'])}.</p>",
            "<h2>Summary</h2>", html_table(SUMMARY_HEADERS, _summary_rows(result["methods"]), SUMMARY_DIGITS),
            f"<p class=\"meta\">{_html.escape(METRIC_NOTE)}</p>",
            "<h2>By hole area</h2>", html_table(BIN_HEADERS, _bin_rows(result["methods"]), BIN_DIGITS)]
    if grid_items:
        names = list(result["methods"])
        rows = []
        for item in grid_items:
            image, mask = _load_pair(item, None)
            rows.append([image, _masked_view(image, mask)] + [fills.get(item.stem, {}).get(n) for n in names])
        body += [f"<h2>Samples (first {len(grid_items)})</h2>",
                 image_grid_html(rows, ["original", "masked"] + names, [item.stem for item in grid_items])]
    return html_page(f"facefill evaluation: {result['masks']} masks", body)


def _print_summary(console, result: dict) -> None:
    from rich.table import Table

    from facefill.report.tables import format_value

    table = Table(title=f"{result['data']} - {result['masks']} masks, {result['count']} images")
    for index, header in enumerate(SUMMARY_HEADERS):
        table.add_column(header, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in _summary_rows(result["methods"]):
        table.add_row(*[format_value(v, d) if i else str(v) for i, (v, d) in enumerate(zip(row, SUMMARY_DIGITS))])
    console.print(table)


def run_eval(config: EvalConfig) -> dict:
    """Score ``config.methods`` and ``config.weights`` on the data's test split with its stored
    ``config.masks`` masks; write metrics.json, per_image.csv, summary.md and report.html to
    ``config.report``; return what metrics.json holds plus the report paths."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from facefill import __version__
    from facefill.devices import resolve_device
    from facefill.fileio import write_text_atomic
    from facefill.report.tables import write_csv, write_json, write_markdown

    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {config.batch_size}")
    device = resolve_device(config.device)
    data = Path(config.data)
    items, shape, size = load_test_split(data, config.masks, config.limit, config.framing, config.seed)
    options = FillOptions(steps=config.steps, sampler=config.sampler, seed=config.seed, amp=config.amp)
    entries = resolve_methods(config, device, size)
    for entry in entries:
        warn_unused(entry.inpainter, options)

    grid_items = items[:max(config.sample_grid, 0)]
    keep = {item.stem for item in grid_items}
    fills: dict[str, dict[str, np.ndarray]] = {}
    per_image: list[dict] = []
    methods: dict[str, dict] = {}
    console = Console()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for entry in entries:
            torch.manual_seed(config.seed)  # stochastic samplers score the same way every run
            rows, seconds, kept = score_method(entry, items, device, config.batch_size, keep, progress, shape,
                                               options)
            for stem, filled in kept.items():
                fills.setdefault(stem, {})[entry.name] = filled
            per_image.extend(rows)
            info = {"source": entry.source, "native_size": getattr(entry.inpainter, "size", None),
                    "means": mean_metrics(rows), "by_area_bin": area_bin_metrics(rows),
                    "seconds_per_image": seconds}
            if entry.weights:
                info["weights"] = entry.weights
            if entry.meta:
                info["meta"] = entry.meta
            methods[entry.name] = info
            entry.inpainter = None  # free the model before the next one runs
            if device.type == "cuda":
                torch.cuda.empty_cache()

    areas = [row["area"] for row in per_image if row["method"] == entries[0].name]
    result = {"data": str(data), "masks": config.masks, "framing": config.framing, "size": size,
              "count": len(items),
              "mean_area": float(np.mean(areas)), "device": str(device),
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "facefill_version": __version__,
              "methods": methods, "config": dataclasses.asdict(config)}

    report = Path(config.report)
    paths = {"metrics": report / "metrics.json", "per_image": report / "per_image.csv",
             "summary": report / "summary.md", "html": report / "report.html"}
    write_json(paths["metrics"], result)
    write_csv(paths["per_image"], per_image, CSV_COLUMNS)
    write_markdown(paths["summary"], _summary_markdown(result))
    write_text_atomic(paths["html"], _report_html(result, grid_items, fills))
    _print_summary(console, result)
    console.print(f"report: {report}")
    return {**result, "report": {key: str(path) for key, path in paths.items()}}
