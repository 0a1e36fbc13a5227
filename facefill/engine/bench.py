"""Benchmarks: throughput, latency and peak memory of each method, alone and in the whole pipeline.

Method alone: ``inpainter.inpaint`` on a deterministic batch already on the device (a smooth
random field, a centred square hole of 25 % of the area), ``warmup`` untimed runs, then
``repeat`` timed ones (CUDA synchronised around each). Reported per (method, batch size):

- ``images_per_s``: batch size x runs / total timed seconds;
- ``latency_ms_median``, ``latency_ms_p90``: per batch;
- ``cpu_peak_rss_delta_mb``: the process's peak resident memory during the timed runs minus its
  resident memory before them (Linux: the peak is reset through /proc/self/clear_refs first; where
  that is refused, the growth of ``ru_maxrss``, a lower bound);
- ``cuda_peak_mb`` / ``cuda_peak_delta_mb`` on CUDA: ``torch.cuda.max_memory_allocated`` during the
  runs, absolute and above what was allocated before them.

Methods with a fixed native size run at that size (``size`` records it); others at ``config.size``.

Whole pipeline: ``pipeline_images`` PNGs at ``config.size`` with ``<stem>_mask.png`` beside them,
filled by ``facefill.engine.inpaint.run_inpaint`` (batch size = the largest of ``batch_sizes``,
overwrite) after one untimed warm-up on a few of them; the timed run includes the engine's own
start-up (resolving and loading the method, its thread pool). The engine overhead is
``pipeline seconds per image - method-alone seconds per image`` (at that batch size), and as a
percentage of the pipeline's seconds per image: the share of end-to-end time spent outside the
method (decoding, fitting, compositing, encoding, writing).

Methods are named and weights files (``weights``) added or pinned exactly as ``facefill eval``
does it (``resolve_methods``).

Speed/quality sweep (``sweep``, instead of the above): for each method / weights file and each
setting (sampling steps for diffusion methods, latent-search iterations for wgan, or ``ddpm``:
ancestral DDPM over all T timesteps; ``sweep_options``), the first ``limit`` test images of a
prepared data folder are filled with their stored masks in batches of ``batch_size``, with eval's
filling and metrics (``score_method``): ``warmup`` untimed batches, then one timed pass. Each row
(``trade_off`` in the JSON, and a Markdown table beside it) has the wall time of the filling alone
(``seconds``, ``images_per_second``, ``seconds_per_image``), the mean ``psnr``/``ssim`` (and the
hole metrics), and the peak memory of the timed pass.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from facefill import __version__
from facefill.config import BenchConfig, EvalConfig, InpaintConfig, split_list
from facefill.data.augment import DeviceBatches, check_mask_kind, finish_loader_batch
from facefill.data.dataset import EpochSampler, FaceDataset, TrainingImages
from facefill.data.folders import list_images
from facefill.data.prepare import center_box
from facefill.devices import resolve_device
from facefill.engine.evaluate import METRICS, load_test_split, mean_metrics, resolve_methods, score_method
from facefill.engine.train import DATA_ON
from facefill.imaging import read_rgb, resize_rgb, to_uint8
from facefill.inference.options import FillOptions, sweep_options
from facefill.registry import create_method, get_method_class, list_methods
from facefill.report.tables import format_value, markdown_table, write_json, write_markdown

log = logging.getLogger(__name__)
MIB = 1024 * 1024


# -------------------------------------------------------------------------------------------- inputs

def synthetic_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` deterministic face-free but photo-like images, Bx3xSxS in [0, 1]: a smooth random
    colour field, some mid-frequency structure and a little grain, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 5, 5, generator=generator)
    middle = torch.rand(count, 3, max(min(size // 4, 24), 2), max(min(size // 4, 24), 2), generator=generator)
    grain = torch.randn(count, 3, size, size, generator=generator)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    detail = F.interpolate(middle - 0.5, size=(size, size), mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * field + 0.25 * detail + 0.02 * grain).clamp(0, 1)


def center_masks(count: int, size: int, fraction: float = 0.25) -> torch.Tensor:
    """Bx1xSxS, 1 in a centred square covering ``fraction`` of the image."""
    side = max(1, round(size * math.sqrt(fraction)))
    top = (size - side) // 2
    masks = torch.zeros(count, 1, size, size)
    masks[:, :, top:top + side, top:top + side] = 1.0
    return masks


# -------------------------------------------------------------------------------------------- memory

def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class PeakRSS:
    """Peak resident memory of this process over a ``with`` block, in MiB above the start."""

    def __enter__(self):
        self.method = "ru_maxrss"
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            if _proc_status_kib("VmHWM") is not None:
                self.method = "vmhwm"
        except OSError:
            pass
        if self.method == "vmhwm":
            self.start = _proc_status_kib("VmRSS") or 0
        else:
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return self

    def __exit__(self, *exc):
        end = (_proc_status_kib("VmHWM") if self.method == "vmhwm"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) or 0
        self.delta_mb = max(end - self.start, 0) / 1024.0
        return False


class PeakMemory:
    """Over a ``with`` block: ``PeakRSS`` and, on CUDA, ``torch.cuda.max_memory_allocated``
    (absolute, and above what was allocated at the start); ``fields()`` gives the row's keys."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_base = torch.cuda.memory_allocated(self.device)
        self.rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        self.rss.__exit__(*exc)
        self.cuda_peak_mb = self.cuda_peak_delta_mb = None
        if self.cuda:
            peak_bytes = torch.cuda.max_memory_allocated(self.device)
            self.cuda_peak_mb = peak_bytes / MIB
            self.cuda_peak_delta_mb = max(peak_bytes - self.cuda_base, 0) / MIB
        return False

    def fields(self) -> dict:
        return {"cpu_peak_rss_delta_mb": self.rss.delta_mb, "cpu_peak_rss_method": self.rss.method,
                "cuda_peak_mb": self.cuda_peak_mb, "cuda_peak_delta_mb": self.cuda_peak_delta_mb}


# ----------------------------------------------------------------------------------------- measuring

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_method(inpainter, images: torch.Tensor, masks: torch.Tensor, warmup: int, repeat: int,
                options: FillOptions | None = None) -> dict:
    """Warm up, then time ``repeat`` calls of ``inpainter.inpaint``; returns the row's measurements."""
    device = images.device
    with torch.no_grad():
        for _ in range(warmup):
            inpainter.inpaint(images, masks, options)
        _synchronize(device)
        latencies = []
        with PeakMemory(device) as peak:
            for _ in range(repeat):
                start = time.perf_counter()
                output = inpainter.inpaint(images, masks, options)
                _synchronize(device)
                latencies.append(time.perf_counter() - start)
                del output
    batch = images.shape[0]
    total = sum(latencies)
    return {"runs": repeat,
            "images_per_s": batch * repeat / total if total > 0 else float("inf"),
            "seconds_per_image": total / (batch * repeat),
            "latency_ms_median": 1000.0 * float(np.median(latencies)),
            "latency_ms_p90": 1000.0 * float(np.percentile(latencies, 90)),
            "latency_ms_min": 1000.0 * min(latencies),
            **peak.fields()}


def _count(value) -> int:
    if value is None:
        return 0
    if isinstance(value, (list, tuple, set, dict)):
        return len(value)
    return int(value)


def write_pipeline_inputs(folder, count: int, size: int, seed: int = 0, source=None) -> list[str]:
    """``count`` PNGs ``bench_NNNN.png`` with ``bench_NNNN_mask.png`` (white = hole, the centre
    quarter) in ``folder``: synthetic face-free images, or with ``source`` the first ``count`` photos
    of that folder (cycled if fewer), each cut to its centre square and resized to ``size``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mask = (center_masks(1, size)[0, 0].numpy() > 0.5).astype(np.uint8) * 255
    photos = source_photos(source, count, size) if source else None
    images = None if photos else synthetic_images(count, size, seed)
    stems = []
    for index in range(count):
        stem = f"bench_{index:04d}"
        pixels = photos[index % len(photos)] if photos else to_uint8(images[index])
        Image.fromarray(pixels).save(folder / f"{stem}.png")
        Image.fromarray(mask).save(folder / f"{stem}_mask.png")
        stems.append(stem)
    return stems


def source_photos(source, count: int, size: int) -> list[np.ndarray]:
    """The centre squares of the first ``count`` photos of ``source`` at ``size`` px (RGB uint8)."""
    paths = list_images(source)[:count]
    if not paths:
        raise ValueError(f"{source}: no images for the pipeline measurement")
    photos = []
    for path in paths:
        rgb = read_rgb(path)
        left, top, right, bottom = center_box(rgb.shape[1], rgb.shape[0])
        photos.append(resize_rgb(np.ascontiguousarray(rgb[top:bottom, left:right]), (size, size)))
    return photos


def time_pipeline(name: str, config: BenchConfig, input_dir: Path, warm_dir: Path | None, work: Path,
                  batch_size: int, count: int, weights: str | None = None) -> dict:
    """Time ``run_inpaint`` filling ``input_dir`` with method ``name`` (or the ``weights`` file)."""
    from facefill.engine.inpaint import run_inpaint  # looked up per call: tests stand in a module

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)

    def settings(source, tag):
        return InpaintConfig(input_dir=str(source), output_dir=str(work / f"out-{safe}-{tag}"),
                             method=None if weights else name, weights=weights,
                             device=config.device, batch_size=batch_size, overwrite=True, seed=config.seed,
                             amp=config.amp,
                             summary=str(work / f"summary-{safe}-{tag}.json"))

    if warm_dir is not None:
        run_inpaint(settings(warm_dir, "warm"))
    start = time.perf_counter()
    summary = run_inpaint(settings(input_dir, "timed"))
    seconds = time.perf_counter() - start
    shutil.rmtree(work / f"out-{safe}-timed", ignore_errors=True)
    summary = summary if isinstance(summary, dict) else {}
    return {"method": name, "images": count, "batch_size": batch_size, "size": config.size,
            "seconds": seconds, "images_per_s": count / seconds if seconds > 0 else float("inf"),
            "seconds_per_image": seconds / count, "done": _count(summary.get("done", count)),
            "failed": _count(summary.get("failed"))}


# ------------------------------------------------------------------------------------------ metadata

def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name or platform.machine() or 'CPU'} ({os.cpu_count()} CPUs)"


def parse_sweep(values) -> tuple[str, ...]:
    """``--sweep``: "25,50,100,ddpm" (or a sequence of such items) -> ("25", "50", "100", "ddpm"):
    positive integers (sampling steps / latent-search iterations) and the word ``ddpm``, in
    order, repeats dropped."""
    items = split_list(values) if isinstance(values, str) else tuple(str(v).strip() for v in values)
    settings = []
    for item in items:
        word = item.lower()
        if word != "ddpm":
            try:
                steps = int(word)
            except ValueError:
                raise ValueError(f"--sweep takes positive integers (steps / iterations) and 'ddpm', "
                                 f"got {item!r}") from None
            if steps < 1:
                raise ValueError(f"--sweep steps / iterations must be at least 1, got {item!r}")
            word = str(steps)
        settings.append(word)
    if not settings:
        raise ValueError("--sweep names no setting; e.g. --sweep 25,50,100,ddpm")
    return tuple(dict.fromkeys(settings))


def _validate(config: BenchConfig) -> None:
    if config.train:
        check_mask_kind(config.train_masks)
        trainable_names(config.methods)
        if config.data_on not in DATA_ON:
            raise ValueError(f"--data-on must be one of {', '.join(DATA_ON)}, got {config.data_on!r}")
        if config.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {config.workers}")
    elif not config.methods and not config.weights:
        raise ValueError("no methods to benchmark: give --methods and/or --weights")
    if config.sweep:
        parse_sweep(config.sweep)
        if config.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {config.batch_size}")
        if config.limit is not None and config.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {config.limit}")
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive integers, got {config.batch_sizes}")
    if config.size < 4:
        raise ValueError(f"--size must be at least 4 pixels, got {config.size}")
    if config.repeat < 1 or config.warmup < 0 or config.pipeline_images < 0:
        raise ValueError("repeat must be >= 1, warmup and pipeline_images >= 0")


def _print_tables(console, result: dict) -> None:
    from rich.table import Table

    if result.get("trade_off"):
        _print_trade_off(console, result)
    if not result["rows"]:
        return
    table = Table(title=f"facefill bench - {result['device_name']}, torch {result['torch']}, "
                        f"{result['threads']} threads")
    columns = [("method", None), ("size", None), ("batch", None), ("img/s", 1), ("median ms", 2),
               ("p90 ms", 2), ("CPU peak MiB", 1)]
    if result["device"].startswith("cuda"):
        columns.append(("CUDA peak MiB", 1))
    for index, (title, _) in enumerate(columns):
        table.add_column(title, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in result["rows"]:
        values = [row["method"], row["size"], row["batch_size"], row["images_per_s"], row["latency_ms_median"],
                  row["latency_ms_p90"], row["cpu_peak_rss_delta_mb"], row["cuda_peak_mb"]]
        table.add_row(*[str(v) if d is None else format_value(v, d) for v, (_, d) in zip(values, columns)])
    console.print(table)
    if result["pipeline"]:
        table = Table(title=f"whole pipeline ({result['pipeline'][0]['images']} images at "
                            f"{result['pipeline'][0]['size']} px)")
        for index, title in enumerate(("method", "batch", "img/s", "method-alone img/s", "overhead ms/img",
                                       "overhead %")):
            table.add_column(title, justify="left" if index == 0 else "right", no_wrap=index == 0)
        for row in result["pipeline"]:
            table.add_row(row["method"], str(row["batch_size"]), format_value(row["images_per_s"], 1),
                          format_value(row["method_images_per_s"], 1),
                          format_value(1000.0 * row["overhead_s_per_image"], 2),
                          format_value(row["overhead_pct"], 1))
        console.print(table)
    elif result.get("pipeline_skipped"):
        console.print(f"[yellow]whole pipeline skipped: {result['pipeline_skipped']}[/yellow]")


# -------------------------------------------------------------------------------- trade-off sweep

TRADE_OFF_NOTE = ("Seconds: wall time of the filling alone (test images already decoded and on the "
                  "device; CUDA synchronised), after {warmup} untimed warm-up batch(es) per setting; img/s = "
                  "images / seconds. PSNR (dB) and SSIM: as `facefill eval`, over the whole image with the "
                  "known pixels kept. Setting: sampling steps (DDIM) for diffusion methods, latent-search "
                  "iterations for wgan; `ddpm` is ancestral DDPM over all T timesteps. Peak memory covers the "
                  "timed pass (CPU: resident memory above the start, decoding and scoring included).")


def _trade_off_columns(result: dict) -> list[tuple[str, str, int]]:
    """(row key, title, decimals) of the trade-off table."""
    columns = [("method", "Method", 0), ("setting", "Setting", 0), ("images", "Images", 0),
               ("seconds", "Seconds", 2), ("images_per_second", "img/s", 2),
               ("seconds_per_image", "s/img", 4),
               ("psnr", "PSNR", 2), ("ssim", "SSIM", 4), ("cpu_peak_rss_delta_mb", "CPU peak MiB", 1)]
    if any(row.get("eta") is not None for row in result["trade_off"]):  # a DDIM sampler's eta
        columns.insert(2, ("eta", "eta", 2))
    if result["device"].startswith("cuda"):
        columns.append(("cuda_peak_mb", "CUDA peak MiB", 1))
    return columns


def trade_off_markdown(result: dict) -> str:
    """The sweep's Markdown report: where it ran, then one table row per (method, setting)."""
    rows = result["trade_off"]
    first = rows[0]
    columns = _trade_off_columns(result)
    weights = [f"- `{name}`: `{path}`" for name, path in
               dict.fromkeys((r["method"], r["weights"]) for r in rows if r.get("weights"))]
    lines = ["# facefill bench: speed/quality trade-off", "",
             f"Data: `{first['data']}` (first {first['images']} test images, {first['size']} px); masks: "
             f"`{first['masks']}`; batch size {first['batch_size']}; device: {result['device_name']} "
             f"(`{result['device']}`); torch {result['torch']}, {result['threads']} threads; "
             f"{result['date']}.",
             "", markdown_table([title for _, title, _ in columns],
                                [[row[key] for key, _, _ in columns] for row in rows],
                                [digits for _, _, digits in columns],
                                align=["l", "l"] + ["r"] * (len(columns) - 2)),
             TRADE_OFF_NOTE.format(warmup=first["warmup_batches"])]
    if weights:
        lines += ["", "Weights:", "", *weights]
    return "\n".join(lines) + "\n"


def _print_trade_off(console, result: dict) -> None:
    from rich.table import Table

    rows = result["trade_off"]
    columns = _trade_off_columns(result)
    table = Table(title=f"speed/quality trade-off - {rows[0]['data']}, {rows[0]['masks']} masks, "
                        f"{rows[0]['images']} images, {result['device_name']}")
    for index, (_, title, _) in enumerate(columns):
        table.add_column(title, justify="left" if index < 2 else "right", no_wrap=index == 0)
    for row in rows:
        table.add_row(*[str(row[key]) if index < 2 else format_value(row[key], digits)
                        for index, (key, _, digits) in enumerate(columns)])
    console.print(table)


def _check_setting(entry, setting: str) -> None:
    """Apply ``setting`` to the entry's method once, so a method that ignores it (or a step count
    its schedule cannot take) fails before anything is timed."""
    try:
        options = sweep_options(entry.inpainter, setting)
    except ValueError as error:
        raise ValueError(f"--sweep {setting}: {error}") from None
    scheduler = getattr(entry.inpainter, "sampling_scheduler", None)
    try:
        if callable(scheduler):
            scheduler(options)
    except ValueError as error:
        raise ValueError(f"--sweep {setting}: {entry.name}: {error}") from None


def run_trade_off(config: BenchConfig, device: torch.device, console) -> list[dict]:
    """The ``--sweep``: for each method / weights file and each setting, fill the first
    ``config.limit`` test images of ``config.data`` with their stored ``config.masks`` masks in
    batches of ``config.batch_size`` (eval's filling and scoring), timing the filling alone after
    ``config.warmup`` untimed batches; one row per (method, setting)."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    settings = parse_sweep(config.sweep)
    items, shape, size = load_test_split(config.data, config.masks, config.limit)
    entries = resolve_methods(EvalConfig(data=config.data, masks=config.masks, methods=config.methods,
                                         weights=config.weights, amp=config.amp), device, size)
    for entry in entries:
        for setting in settings:
            _check_setting(entry, setting)

    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for entry in entries:
            for setting in settings:
                options = sweep_options(entry.inpainter, setting, FillOptions(seed=config.seed, amp=config.amp))
                applied = {"sampler": options.sampler, "steps": options.steps}
                label = escape(f"{entry.name} ({setting})")  # the progress bar's description is markup
                run = dataclasses.replace(entry, name=label)
                torch.manual_seed(config.seed)
                for _ in range(config.warmup):
                    score_method(dataclasses.replace(run, name=f"{label} warm-up"), items[:config.batch_size],
                                 device, config.batch_size, progress=progress, shape=shape, options=options)
                torch.manual_seed(config.seed)
                with PeakMemory(device) as peak:
                    scored, seconds_per_image, _ = score_method(run, items, device, config.batch_size,
                                                                progress=progress, shape=shape, options=options)
                seconds = seconds_per_image * len(items)
                means = mean_metrics(scored)
                eta = getattr(entry.inpainter, "eta", None) if applied["sampler"] == "ddim" else None
                rows.append({"method": entry.name, "weights": entry.weights, "source": entry.source,
                             "setting": setting, **applied, "eta": eta, "device": str(device), "data": str(config.data),
                             "masks": config.masks, "limit": config.limit, "images": len(items), "size": size,
                             "native_size": getattr(entry.inpainter, "size", None),
                             "batch_size": config.batch_size, "warmup_batches": config.warmup,
                             "amp": config.amp,
                             "seconds": seconds,
                             "images_per_second": len(items) / seconds if seconds > 0 else float("inf"),
                             "seconds_per_image": seconds_per_image,
                             **{key: means[key] for key in METRICS},
                             **peak.fields()})
            entry.inpainter = None  # free the model before the next one runs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def markdown_path(out) -> Path:
    """Where the trade-off table goes: beside the JSON, same name, ``.md``."""
    out = Path(out)
    path = out.with_suffix(".md")
    return path if path != out else out.with_name(out.name + ".trade_off.md")


# ------------------------------------------------------------------------------------ training throughput

def matmul_peak_tflops(device: torch.device, dtype=torch.bfloat16, size: int | None = None,
                       repeat: int = 5) -> float:
    """The device's measured matmul rate in ``dtype`` (TFLOP/s): the best of ``repeat`` square matmuls."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _synchronize(device)
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12


def count_flops(function) -> int | None:
    """FLOPs torch's FlopCounterMode sees in ``function()``; None where it cannot follow the step
    (it fails on double backward, e.g. wgan's gradient penalty)."""
    try:
        with FlopCounterMode(display=False) as counter:
            function()
    except RuntimeError as error:
        log.warning("FLOPs not counted: %s", str(error).splitlines()[0])
        return None
    return counter.get_total_flops()


def trainable_names(names) -> tuple[str, ...]:
    if not names:
        return tuple(n for n in list_methods() if get_method_class(n).trainable)
    refused = [n for n in names if not get_method_class(n).trainable]
    if refused:
        raise ValueError(f"bench --train: {', '.join(refused)} cannot be trained")
    return tuple(names)


class LoaderBatches:
    """``facefill train --data-on workers``: a DataLoader whose CPU workers flip each image and
    draw its numpy mask, the batch copied to the device and augmented there, endlessly."""

    def __init__(self, images: np.ndarray, config: BenchConfig, device: torch.device, batch_size: int,
                 channels_last: bool):
        dataset = FaceDataset(images, config.size, config.train_masks, seed=config.seed)
        self.sampler = EpochSampler(np.ones(len(images)), config.seed, batch=batch_size)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, drop_last=True, num_workers=config.workers,
            pin_memory=device.type == "cuda", persistent_workers=config.workers > 0)
        self.device, self.channels_last = device, channels_last
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.iterator = iter(self.loader)

    def batch(self, number: int) -> dict:
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.sampler.epoch += 1
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        return finish_loader_batch(batch, self.device, self.generator, True, self.channels_last)


def time_training(name: str, config: BenchConfig, device: torch.device, batch_size: int) -> dict:
    """Training steps of ``name`` (default settings at ``config.size``) as ``facefill train`` runs
    them: a synthetic set, batches, augmentation and masks made on the device (``data_on``
    "device") or by DataLoader workers (``workers``), bf16 autocast with ``amp``,
    ``channels_last``, ``compile`` if asked. Step times include making the batch."""
    torch.manual_seed(config.seed)
    method = create_method(name, size=config.size).to(device)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    if channels_last:
        method.to(memory_format=torch.channels_last)
    method.configure_optimizers()
    if config.compile:
        for module in method.children():
            module.compile()
    on_device = config.data_on == "device"
    count = (4 if on_device else 16) * batch_size   # the loader restarts its workers' queue each epoch
    images = synthetic_images(count, config.size, config.seed).mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    if on_device:
        data = TrainingImages(images, np.ones(count), None, np.full(count, -1), images[:0], [])
        batches = DeviceBatches(data, device, config.train_masks, batch_size, config.seed, frame=True,
                                colour=True, channels_last=channels_last)
    else:
        batches = LoaderBatches(images, config, device, batch_size, channels_last)
    method.train()

    def step(number):
        batch = batches.batch(number)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp):
            method.training_step(batch, number)

    for number in range(max(1, config.warmup)):
        step(number)
    flops = count_flops(lambda: step(0))
    _synchronize(device)
    times = []
    with PeakMemory(device) as peak:
        for number in range(config.repeat):
            start = time.perf_counter()
            step(number)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    data_times = []
    for number in range(config.repeat):
        start = time.perf_counter()
        batches.batch(number)
        _synchronize(device)
        data_times.append(time.perf_counter() - start)
    step_s, data_s = float(np.median(times)), float(np.median(data_times))
    return {"method": name, "size": config.size, "batch_size": batch_size, "device": str(device),
            "amp": config.amp, "channels_last": channels_last, "compile": config.compile,
            "data_on": config.data_on, "workers": None if on_device else config.workers,
            "masks": config.train_masks, "steps": config.repeat,
            "images_per_s": batch_size * len(times) / sum(times), "step_ms_median": 1000 * step_s,
            "step_ms_min": 1000 * min(times), "data_ms_median": 1000 * data_s, "data_share": data_s / step_s,
            "gflop_per_step": flops / 1e9 if flops else None,
            "achieved_tflops": flops / step_s / 1e12 if flops else None,
            "parameters": sum(p.numel() for p in method.parameters()), **peak.fields()}


def run_train_bench(config: BenchConfig, device: torch.device, console, save=None) -> list[dict]:
    """One row per (trainable method, batch size); a row that runs out of device memory says so and
    the others go on. ``save(rows)`` after each row keeps what was measured if the run is cut short."""
    rows = []
    peaks = {"bf16": matmul_peak_tflops(device), "fp32": matmul_peak_tflops(device, torch.float32)}
    for name in trainable_names(config.methods):
        for batch_size in config.batch_sizes:
            with console.status(f"{name}: training at batch {batch_size}, {config.size} px"):
                try:
                    row = time_training(name, config, device, batch_size)
                except torch.OutOfMemoryError:
                    row = {"method": name, "size": config.size, "batch_size": batch_size, "data_on": config.data_on,
                           "workers": None if config.data_on == "device" else config.workers,
                           "error": "out of device memory", "images_per_s": None, "achieved_tflops": None}
                    log.warning("%s at batch %d: out of device memory", name, batch_size)
            achieved = row["achieved_tflops"]
            row["peak_bf16_tflops"], row["peak_fp32_tflops"] = peaks["bf16"], peaks["fp32"]
            row["fraction_of_bf16_peak"] = achieved / peaks["bf16"] if achieved else None
            row["peak_dtype"] = "bf16" if config.amp else "fp32"  # the dtype the step's matmuls ran in
            row["fraction_of_peak"] = achieved / peaks[row["peak_dtype"]] if achieved else None
            rows.append(row)
            if save:
                save(rows)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _print_train_table(console, result: dict) -> None:
    from rich.table import Table

    first = result["train"][0]
    table = Table(title=f"facefill bench --train - {result['device_name']}; matmul peak bf16 "
                        f"{first['peak_bf16_tflops']:.3f}, fp32 {first['peak_fp32_tflops']:.3f} TFLOP/s; "
                        f"% of the {first['peak_dtype']} peak")
    columns = [("method", None), ("size", None), ("batch", None), ("data", None), ("img/s", 1), ("step ms", 1),
               ("data ms", 1), ("GFLOP/step", 1), ("% of peak", 2), ("CUDA peak MiB", 0)]
    for index, (title, _) in enumerate(columns):
        table.add_column(title, justify="left" if index == 0 else "right", no_wrap=index == 0)
    for row in result["train"]:
        if row.get("error"):
            table.add_row(row["method"], str(row["size"]), str(row["batch_size"]), row["error"])
            continue
        share = None if row["fraction_of_peak"] is None else 100 * row["fraction_of_peak"]
        data = "dev" if row["data_on"] == "device" else f"{row['workers']} wk"
        values = [row["method"], row["size"], row["batch_size"], data, row["images_per_s"], row["step_ms_median"],
                  row["data_ms_median"], row["gflop_per_step"], share, row["cuda_peak_mb"]]
        table.add_row(*[str(v) if d is None or v is None else format_value(v, d) for v, (_, d) in zip(values, columns)])
    console.print(table)


# ---------------------------------------------------------------------------------------------- run

def measure_methods(config: BenchConfig, device: torch.device,
                    console) -> tuple[list[dict], list[dict], str | None]:
    """Every method / weights file alone at every batch size, then in the whole pipeline; returns
    (rows, pipeline rows, why the pipeline was skipped or None)."""
    entries = resolve_methods(EvalConfig(methods=config.methods, weights=config.weights, amp=config.amp),
                              device, config.size)
    rows = []
    method_sizes, method_weights = {}, {}
    for entry in entries:
        name, inpainter = entry.name, entry.inpainter
        size = int(getattr(inpainter, "size", None) or config.size)
        method_sizes[name] = size
        method_weights[name] = entry.weights if entry.source == "weights" else None
        for batch_size in config.batch_sizes:
            images = synthetic_images(batch_size, size, config.seed).to(device)
            masks = center_masks(batch_size, size).to(device)
            torch.manual_seed(config.seed)
            with console.status(f"{name}: batch {batch_size} at {size} px"):
                measured = time_method(inpainter, images, masks, config.warmup, config.repeat,
                                       FillOptions(seed=config.seed, amp=config.amp))
            rows.append({"method": name, "weights": entry.weights, "size": size,
                         "native_size": getattr(inpainter, "size", None),
                         "batch_size": batch_size, "device": str(device), "amp": config.amp, **measured})
            del images, masks
        entry.inpainter = inpainter = None  # free the model before the next one runs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    pipeline, skipped = [], None
    largest = max(config.batch_sizes)
    if config.pipeline_images == 0:
        skipped = "pipeline_images is 0"
    else:
        with tempfile.TemporaryDirectory(prefix="facefill-bench-") as tmp:
            work = Path(tmp)
            write_pipeline_inputs(work / "in", config.pipeline_images, config.size, config.seed,
                                  config.pipeline_from)
            warm_dir = None
            if config.warmup > 0:
                warm_count = min(config.pipeline_images, largest, 4)
                warm_dir = work / "warm"
                write_pipeline_inputs(warm_dir, warm_count, config.size, config.seed + 1)
            for name in method_sizes:
                with console.status(f"{name}: whole pipeline, {config.pipeline_images} images"):
                    row = time_pipeline(name, config, work / "in", warm_dir, work, largest,
                                        config.pipeline_images, weights=method_weights[name])
                alone = next(r for r in rows if r["method"] == name and r["batch_size"] == largest)
                overhead = row["seconds_per_image"] - alone["seconds_per_image"]
                row.update(inputs=config.pipeline_from or "synthetic (no faces)",
                           method_size=method_sizes[name], method_images_per_s=alone["images_per_s"],
                           method_seconds_per_image=alone["seconds_per_image"], overhead_s_per_image=overhead,
                           overhead_pct=100.0 * overhead / row["seconds_per_image"])
                pipeline.append(row)
    return rows, pipeline, skipped


def bench_result(config: BenchConfig, device: torch.device, rows, pipeline, skipped, trade_off, train_rows,
               partial: bool = False) -> dict:
    """What ``bench`` writes: the machine, the settings, every table and the definitions;
    ``partial`` while --train rows are still being measured."""
    return {"partial": partial, "device": str(device), "device_name": device_description(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "facefill_version": __version__, "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "config": dataclasses.asdict(config), "rows": rows, "pipeline": pipeline,
            "pipeline_skipped": skipped, "trade_off": trade_off, "train": train_rows,
            "definitions": {
                "images_per_s": "batch size x timed runs / total timed seconds (method alone, inputs on device)",
                "latency_ms": "wall time of one inpaint call on one batch (median, 90th percentile)",
                "cpu_peak_rss_delta_mb": "peak RSS during the timed runs minus RSS before them",
                "cuda_peak_mb": "torch.cuda.max_memory_allocated during the timed runs",
                "overhead_s_per_image": "pipeline s/image - method-alone s/image at the pipeline's batch size",
                "overhead_pct": "overhead_s_per_image / pipeline s/image x 100",
                "trade_off": "per (method, setting): the first `limit` test images of `data` filled with "
                             "their stored `masks` masks; seconds = filling alone after warm-up; "
                             "psnr/ssim = eval's means",
                "train": "per (method, batch): `repeat` timed training steps after `warmup`, each making its "
                         "batch (data_on device: gather, augmentation and masks on the device; workers: "
                         "DataLoader workers flip and mask each image on the CPU, augmentation on the "
                         "device) and running training_step; "
                         "images_per_s = batch x steps / their seconds; data_ms = batch making alone; "
                         "gflop_per_step = torch FlopCounterMode over one step (matmuls and convolutions, "
                         "forward and backward); fraction_of_peak = achieved / the matmul rate "
                         "measured in the same command in the step's dtype (peak_dtype: bf16 with --amp, else "
                         "fp32); fraction_of_bf16_peak = achieved / the bf16 rate"}}


def run_bench(config: BenchConfig) -> dict:
    """Benchmark every method at every batch size, then the whole pipeline; or, with
    ``config.sweep``, only the speed/quality sweep (``trade_off``, also written as Markdown beside
    the JSON). Write ``config.out`` (JSON) and return what it holds."""
    from rich.console import Console

    _validate(config)
    device = resolve_device(config.device)
    console = Console()
    train_rows = []
    if config.train:
        rows, pipeline, skipped, trade_off = [], [], "--train: training throughput only", []

        def save(done):
            write_json(config.out, bench_result(config, device, rows, pipeline, skipped, trade_off, done,
                                                partial=True))
        train_rows = run_train_bench(config, device, console, save)
    elif config.sweep:
        rows, pipeline, skipped = [], [], "--sweep: the trade-off sweep replaces the synthetic measurements"
        trade_off = run_trade_off(config, device, console)
    else:
        rows, pipeline, skipped = measure_methods(config, device, console)
        trade_off = []
    result = bench_result(config, device, rows, pipeline, skipped, trade_off, train_rows)
    if trade_off:
        result["trade_off_markdown"] = str(markdown_path(config.out))
    write_json(config.out, result)
    if trade_off:
        write_markdown(result["trade_off_markdown"], trade_off_markdown(result))
    _print_tables(console, result)
    if train_rows:
        _print_train_table(console, result)
    console.print(f"wrote {config.out}" + (f" and {result['trade_off_markdown']}" if trade_off else ""))
    return result
