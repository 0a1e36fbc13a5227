"""Batch inpainting: read -> the inference pipeline -> write (DESIGN.md).

``run_inpaint(config)`` fills every image of a folder and returns the summary it also writes as
JSON. Fitting to the model, faces and pasting back are :mod:`facefill.inference.fitting`'s
(``fill_batch``, shared with ``eval``, ``bench`` and the Python API).
"""
from __future__ import annotations

import concurrent.futures as futures
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facefill import fileio
from facefill.config import InpaintConfig
from facefill.inference.fitting import PasteSettings, crop_box, fill_batch
from facefill.inference.options import FillOptions

log = logging.getLogger(__name__)

EMPTY_MASK_NOTE = "mask has no hole: copied through unchanged"


# ------------------------------------------------------------------------------------- filling

def fill_image(inpainter, image_uint8: np.ndarray, mask_bool: np.ndarray, device="cpu",
               options: FillOptions | None = None, settings: PasteSettings = PasteSettings()) -> np.ndarray:
    """Fill one HxWx3 uint8 image's hole (HxW bool) through the one pipeline (:func:`fill_batch`)."""
    return fill_batch(inpainter, [image_uint8], [mask_bool], device, 1, options, settings)[0]


def comparison_image(image: np.ndarray, mask: np.ndarray, filled: np.ndarray, gap: int = 4) -> np.ndarray:
    """Side by side: the input with its hole tinted red | the filled image (white gap between)."""
    shown = image.astype(np.float32)
    shown[mask] = shown[mask] * 0.4 + np.array([255.0, 0.0, 0.0]) * 0.6
    spacer = np.full((image.shape[0], gap, 3), 255, np.uint8)
    return np.concatenate([shown.round().astype(np.uint8), spacer, filled], axis=1)


# ---------------------------------------------------------------------------------- the command

@dataclass
class _Item:
    index: int
    path: Path
    name: str                 # the file's name in IN: how the summary refers to it
    output: Path
    spec: object              # folders.MaskSpec


@dataclass
class _Loaded:
    item: _Item
    decoded: object           # folders.DecodedImage
    hole: np.ndarray


class _Run:
    """State of one ``run_inpaint`` call: results per item, thread pool, progress."""

    def __init__(self, config: InpaintConfig, items: list[_Item]):
        self.config = config
        self.items = items
        self.status: dict[int, tuple[str, str | None]] = {}   # index -> (done|skipped|failed, reason)
        self.notes: dict[str, str] = {}

    def fail(self, item: _Item, reason: str) -> None:
        self.status[item.index] = ("failed", reason)
        log.debug("%s: %s", item.path, reason)

    def done(self, item: _Item) -> None:
        self.status[item.index] = ("done", None)


def _load(item: _Item, config: InpaintConfig):
    """Decode one image and get its hole (in a worker thread)."""
    from facefill.data import folders

    try:
        decoded = folders.decode_image(item.path)
        hole = folders.load_mask(item.spec, decoded.rgb, index=item.index, seed=config.seed,
                                 invert=config.invert_mask)
        return _Loaded(item, decoded, hole)
    except folders.FileFailure as failure:
        return failure.reason
    except Exception as error:  # never a traceback for one bad file
        log.debug("loading %s failed", item.path, exc_info=True)
        return f"cannot read ({error.__class__.__name__}: {error})"


def _write(loaded: _Loaded, filled: np.ndarray | None, config: InpaintConfig) -> str | None:
    """Encode and write one output (and its comparison) atomically; a reason on failure."""
    from facefill.data import folders

    item, decoded = loaded.item, loaded.decoded
    try:
        if filled is None:  # no hole: the input itself, byte for byte when the format allows
            filled = decoded.rgb
            if item.output.suffix.lower() == item.path.suffix.lower():
                fileio.write_bytes_atomic(item.output, item.path.read_bytes())
                filled = None
        if filled is not None:
            fmt = folders.output_format(item.output.name)
            image = folders.to_pil(filled, decoded.alpha if folders.keeps_alpha(fmt) else None)
            fileio.write_image_atomic(item.output, image, format=fmt, **folders.encode_options(fmt, decoded))
        if config.save_comparison:
            after = decoded.rgb if filled is None else filled
            compare = comparison_image(decoded.rgb, loaded.hole, after)
            fileio.write_image_atomic(item.output.parent / f"{item.path.stem}_compare.png",
                                      folders.to_pil(compare), format="PNG")
        return None
    except OSError as error:
        detail = error.strerror or str(error) or error.__class__.__name__
        return f"cannot write {item.output}: {detail}"
    except Exception as error:
        log.debug("writing %s failed", item.output, exc_info=True)
        return f"cannot encode {item.output.name} ({error.__class__.__name__}: {error})"


def _progress(total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("inpainting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not sys.stderr.isatty() or total == 0)


def _weights_path(config: InpaintConfig, inpainter, image_size) -> str | None:
    if config.weights:
        return str(config.weights)
    path = getattr(inpainter, "weights_path", None)
    if path:
        return str(path)
    if getattr(inpainter, "trainable", False):
        from facefill.checkpoint import best_shipped

        card = best_shipped(image_size, getattr(inpainter, "name", None))
        return card["path"] if card else None
    return None


def _plan(config: InpaintConfig):
    """List inputs, pair masks, decide outputs; usage errors raise ValueError/FileNotFoundError."""
    from facefill.data import folders

    input_dir, output_dir = Path(config.input_dir), Path(config.output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: no such folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir}: exists and is not a folder")
    if output_dir.exists() and output_dir.resolve() == input_dir.resolve():
        raise ValueError(f"{output_dir}: the output folder must differ from the input folder")
    images = folders.list_images(input_dir)
    if not images:
        raise ValueError(f"{input_dir}: no images found")
    specs = folders.pair_masks(images, mask_dir=config.mask_dir, mask=config.mask, masks=config.masks)
    items, owners = [], {}
    collisions = {}
    for index, (path, spec) in enumerate(zip(images, specs)):
        output = output_dir / folders.output_name(path)
        if output.name in owners:
            collisions[index] = f"output {output.name} would overwrite the output of {owners[output.name]}"
        owners.setdefault(output.name, path.name)
        items.append(_Item(index, path, path.name, output, spec))
    rank, world = _rank_and_world()
    if world > 1:  # under torchrun each process fills its own share of the files
        items = items[rank::world]
        collisions = {i.index: collisions[i.index] for i in items if i.index in collisions}
    return items, collisions


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_inpaint(config: InpaintConfig) -> dict:
    """Fill every image of ``config.input_dir`` into ``config.output_dir``; return the summary.

    Bad files (undecodable, wrong-size mask, no mask and no occluder, a failed write) are
    recorded in ``summary["failed"]`` and the batch goes on; existing outputs are skipped
    unless ``config.overwrite``. The summary is also written to ``config.summary`` (default
    ``OUT/summary.json``) atomically."""
    from facefill.data import folders
    from facefill.devices import resolve_device
    from facefill.inference.loading import load_inpainter
    from facefill.inference.options import warn_unused

    start = time.perf_counter()
    options = FillOptions(steps=config.steps, sampler=config.sampler, seed=config.seed, amp=config.amp)
    settings = PasteSettings(config.aligned, config.dilate, config.feather)
    items, collisions = _plan(config)
    run = _Run(config, items)
    output_dir = Path(config.output_dir)
    device = resolve_device(config.device)

    todo = []
    for item in items:
        if item.index in collisions:
            run.fail(item, collisions[item.index])
        elif item.output.exists() and not config.overwrite:
            run.status[item.index] = ("skipped", None)
        else:
            todo.append(item)

    first = next((s for s in (folders.image_size(i.path) for i in items) if s), None)
    image_size = min(first) if first else None
    inpainter = load_inpainter(config.method, config.weights, device, image_size).inpainter
    warn_unused(inpainter, options)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)

    batch = max(1, int(config.batch_size))
    workers = max(1, int(config.workers))
    with futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facefill-io") as pool, \
            _progress(len(todo)) as progress:
        task = progress.add_task("inpainting", total=len(todo))
        writes: list[tuple[_Item, futures.Future]] = []

        def settle(limit: int) -> None:
            while len(writes) > limit:
                item, future = writes.pop(0)
                reason = future.result()
                run.fail(item, reason) if reason else run.done(item)
                progress.advance(task)

        chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
        pending = [pool.submit(_load, item, config) for item in chunks[0]] if chunks else []
        for number, chunk in enumerate(chunks):
            loaded_results = [future.result() for future in pending]
            if number + 1 < len(chunks):  # decode the next chunk while this one is filled
                pending = [pool.submit(_load, item, config) for item in chunks[number + 1]]
            ready, empty = [], []
            for item, result in zip(chunk, loaded_results):
                if isinstance(result, str):
                    run.fail(item, result)
                    progress.advance(task)
                elif not result.hole.any():
                    run.notes[item.name] = EMPTY_MASK_NOTE
                    empty.append(result)
                else:
                    ready.append(result)
            filled = _fill_chunk(inpainter, ready, device, batch, run, options, settings)
            for loaded in empty:
                writes.append((loaded.item, pool.submit(_write, loaded, None, config)))
            for loaded, image in zip(ready, filled):
                if image is not None:
                    writes.append((loaded.item, pool.submit(_write, loaded, image, config)))
                else:
                    progress.advance(task)
            settle(4 * batch)
        settle(0)

    seconds = time.perf_counter() - start
    summary = _summary(run, config, inpainter, device, image_size, seconds)
    rank, world = _rank_and_world()
    default_name = f"summary-rank{rank}.json" if world > 1 else "summary.json"
    summary_path = Path(config.summary) if config.summary else output_dir / default_name
    try:
        fileio.write_json_atomic(summary_path, summary)
    except OSError as error:
        log.warning("cannot write the summary %s: %s", summary_path, error.strerror or error)
    _report(summary, items, run)
    return summary


def _fill_chunk(inpainter, ready: list[_Loaded], device, batch: int, run: _Run, options: FillOptions,
                settings: PasteSettings) -> list:
    """Fill a chunk; if the batch fails, retry image by image so one bad input fails alone."""
    if not ready:
        return []
    try:
        return fill_batch(inpainter, [r.decoded.rgb for r in ready], [r.hole for r in ready], device, batch,
                          options, settings)
    except Exception as error:
        if len(ready) == 1:
            run.fail(ready[0].item, f"inpainting failed ({error.__class__.__name__}: {error})")
            log.debug("inpainting %s failed", ready[0].item.path, exc_info=True)
            return [None]
        log.debug("batch failed (%s); retrying one image at a time", error)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return [_fill_chunk(inpainter, [r], device, 1, run, options, settings)[0] for r in ready]


def _summary(run: _Run, config: InpaintConfig, inpainter, device, image_size, seconds: float) -> dict:
    done, skipped, failed, sources = [], [], [], {}
    for item in run.items:
        state, reason = run.status.get(item.index, ("failed", "not processed"))
        if state == "done":
            done.append(item.name)
        elif state == "skipped":
            skipped.append(item.name)
        else:
            failed.append({"file": item.name, "reason": reason})
        if state != "skipped":
            sources[item.name] = item.spec.source
    summary = {
        "method": getattr(inpainter, "name", None) or inpainter.__class__.__name__,
        "weights": _weights_path(config, inpainter, image_size),
        "device": str(device),
        "input_dir": str(config.input_dir),
        "output_dir": str(config.output_dir),
        "done": done,
        "skipped": skipped,
        "failed": failed,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(done) / seconds, 3) if seconds > 0 else None,
        "mask_sources": sources,
    }
    if run.notes:
        summary["notes"] = dict(run.notes)
    return summary


def _report(summary: dict, items: list[_Item], run: _Run) -> None:
    """One line of totals, then one ``failed: <file>: <reason>`` line per failure, to stderr."""
    paths = {item.name: item.path for item in items}
    rate = summary["images_per_second"]
    line = (f"{summary['method']}: {len(summary['done'])} done, {len(summary['skipped'])} skipped, "
            f"{len(summary['failed'])} failed in {summary['seconds']:.1f} s"
            + (f" ({rate:.2f} images/s)" if rate else "") + f" -> {summary['output_dir']}")
    print(line, file=sys.stderr)
    for failure in summary["failed"]:
        print(f"failed: {paths.get(failure['file'], failure['file'])}: {failure['reason']}", file=sys.stderr)


__all__ = ["crop_box", "fill_batch", "fill_image",
           "comparison_image", "run_inpaint", "EMPTY_MASK_NOTE"]
