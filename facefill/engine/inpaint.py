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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facefill import fileio
from facefill.checkpoint import best_shipped
from facefill.config import InpaintConfig
from facefill.data import folders
from facefill.devices import resolve_device
from facefill.inference.fitting import PasteSettings, crop_box, fill_batch
from facefill.inference.loading import load_inpainter
from facefill.inference.options import FillOptions, warn_unused

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
    compare: Path | None = None   # where --save-comparison writes (distinct per input)


@dataclass
class _Loaded:
    item: _Item
    decoded: object           # folders.DecodedImage
    hole: np.ndarray


class _Run:
    """State of one ``run_inpaint`` call: results per item, output locks, notes."""

    def __init__(self, config: InpaintConfig, items: list[_Item]):
        self.config = config
        self.items = items
        self.status: dict[int, tuple[str, str | None]] = {}   # index -> (done|skipped|failed, reason)
        self.notes: dict[str, str] = {}
        self.locks: dict[int, Path] = {}                      # index -> the output's lock file
        self.interrupted = False

    def _settle(self, item: _Item, state: str, reason: str | None = None) -> None:
        self.status[item.index] = (state, reason)
        fileio.release_lock(self.locks.pop(item.index, None))

    def fail(self, item: _Item, reason: str) -> None:
        self._settle(item, "failed", reason)
        log.debug("%s: %s", item.path, reason)

    def done(self, item: _Item) -> None:
        self._settle(item, "done")

    def skip(self, item: _Item, note: str | None = None) -> None:
        self._settle(item, "skipped")
        if note:
            self.note(item, note)

    def note(self, item: _Item, text: str) -> None:
        self.notes[item.name] = f"{self.notes[item.name]}; {text}" if item.name in self.notes else text

    def release_all(self) -> None:
        for lock in self.locks.values():
            fileio.release_lock(lock)
        self.locks.clear()

    def claim(self, items: list[_Item]) -> list[_Item]:
        """Lock each item's output; skip those another live process is writing and those whose
        output appeared meanwhile (written by another run). Returns the items this run fills."""
        claimed = []
        for item in items:
            try:
                lock, owner = fileio.try_lock(item.output)
            except OSError as error:  # a read-only or full OUT
                self.fail(item, f"cannot write {item.output}: {error.strerror or error}")
                continue
            if lock is None:
                self.skip(item, f"skipped: another facefill process (pid {owner}) "
                                f"is writing {item.output.name}")
            elif item.output.exists() and not self.config.overwrite:
                self.locks[item.index] = lock
                self.skip(item, f"skipped: {item.output.name} was written by another run meanwhile")
            else:
                self.locks[item.index] = lock
                claimed.append(item)
        return claimed


def _load(item: _Item, config: InpaintConfig):
    """Decode one image and get its hole (in a worker thread)."""
    try:
        decoded = folders.decode_image(item.path, config.max_pixels)
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
    item, decoded = loaded.item, loaded.decoded
    try:
        if filled is None:  # no hole: the input itself, byte for byte when the format allows
            filled = decoded.rgb
            if item.output.suffix.lower() == item.path.suffix.lower():
                fileio.write_bytes_atomic(item.output, item.path.read_bytes())
                filled = None
        if filled is not None:
            fmt = folders.output_format(item.output.name)
            data = folders.encode_output(decoded, filled, fmt, config.quality)
            fileio.write_bytes_atomic(item.output, data)
        if config.save_comparison:
            after = decoded.rgb if filled is None else filled
            compare = comparison_image(decoded.rgb, loaded.hole, after)
            fileio.write_image_atomic(item.compare, folders.to_pil(compare), format="PNG")
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
        card = best_shipped(image_size, getattr(inpainter, "name", None))
        return card["path"] if card else None
    return None


def _check_options(config: InpaintConfig) -> None:
    if config.quality is not None and not 1 <= config.quality <= 100:
        raise ValueError(f"--quality must be between 1 and 100, got {config.quality}")
    if config.max_pixels is not None and config.max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {config.max_pixels}")
    if any(c in config.suffix for c in "/\\\0"):
        raise ValueError(f"--suffix {config.suffix!r}: no path separators")


def _compare_names(outputs: list[Path]) -> list[str]:
    """``<output stem>_compare.png``; outputs sharing a stem (e.jpg, e.png) add their extension."""
    shared = Counter(out.stem for out in outputs)
    return [f"{out.stem}{'_' + out.suffix.lstrip('.').lower() if shared[out.stem] > 1 else ''}"
            f"{folders.COMPARE_SUFFIX}.png" for out in outputs]


def _plan(config: InpaintConfig):
    """List inputs, pair masks, decide outputs; usage errors raise ValueError/FileNotFoundError.
    Returns the items, failures known up front (index -> reason) and the ignored entries."""
    _check_options(config)
    source, output_dir = Path(config.input_dir), Path(config.output_dir)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir}: exists and is not a folder")
    if source.is_dir() and output_dir.exists() and output_dir.resolve() == source.resolve():
        raise ValueError(f"{output_dir}: the output folder must differ from the input folder")
    images, ignored = folders.list_inputs(source)
    if not images:
        left_out = (f" ({len(ignored)} left out, e.g. {_quoted(ignored[0][0])}: {ignored[0][1]})"
                    if ignored else "")
        raise ValueError(f"{source}: no images found{left_out}")
    specs = folders.pair_masks(images, mask_dir=config.mask_dir, mask=config.mask, masks=config.masks)
    outputs = [output_dir / folders.output_name(path, config.ext, config.suffix) for path in images]
    compares = _compare_names(outputs)
    items, owners, collisions = [], {}, {}
    for index, (path, spec, output) in enumerate(zip(images, specs, outputs)):
        if output.resolve() == path.resolve():
            raise ValueError(f"{output}: the output would replace its input; choose another OUT or --suffix")
        if output.name in owners:
            collisions[index] = f"output {output.name} would overwrite the output of {owners[output.name]}"
        owners.setdefault(output.name, path.name)
        items.append(_Item(index, path, path.name, output, spec, output_dir / compares[index]))
    rank, world = _rank_and_world()
    if world > 1:  # under torchrun each process fills its own share of the files
        items = items[rank::world]
        collisions = {i.index: collisions[i.index] for i in items if i.index in collisions}
        ignored = ignored if rank == 0 else []
    return items, collisions, ignored


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def run_inpaint(config: InpaintConfig) -> dict:
    """Fill every image of ``config.input_dir`` (a folder, or one image file) into
    ``config.output_dir``; return the summary.

    Bad files (undecodable, over ``max_pixels``, wrong-size mask, no mask and no occluder, a
    failed write) are recorded in ``summary["failed"]`` and the batch goes on; existing outputs
    are skipped unless ``config.overwrite``, as are outputs another live process holds the lock
    of (``.<name>.lock``). Entries named like images that are not filled are listed in
    ``summary["ignored"]``. On Ctrl-C the summary of what was done is written with
    ``interrupted: true``. The summary is also written to ``config.summary`` (default
    ``OUT/summary.json``) atomically."""
    start = time.perf_counter()
    options = FillOptions(steps=config.steps, sampler=config.sampler, seed=config.seed, amp=config.amp)
    settings = PasteSettings(config.aligned, config.dilate, config.feather)
    items, collisions, ignored = _plan(config)
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
    removed = fileio.remove_stale_temporaries(output_dir)
    if removed:
        log.info("removed %d stale temporary file(s) left by a killed run", len(removed))
    torch.manual_seed(config.seed)

    try:
        _fill_all(run, todo, inpainter, device, options, settings)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        run.release_all()

    seconds = time.perf_counter() - start
    summary = _summary(run, config, inpainter, device, image_size, seconds, ignored)
    rank, world = _rank_and_world()
    default_name = f"summary-rank{rank}.json" if world > 1 else "summary.json"
    summary_path = Path(config.summary) if config.summary else output_dir / default_name
    try:
        fileio.write_json_atomic(summary_path, summary)
    except OSError as error:
        log.warning("cannot write the summary %s: %s", summary_path, error.strerror or error)
    _report(summary, items, run)
    return summary


def _fill_all(run: _Run, todo: list[_Item], inpainter, device, options: FillOptions,
              settings: PasteSettings) -> None:
    """Decode (threads), fill (batches) and write (threads) every item of ``todo``."""
    config = run.config
    batch = max(1, int(config.batch_size))
    workers = max(1, int(config.workers))
    writes: list[tuple[_Item, futures.Future]] = []
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="facefill-io")

    def settle(limit: int) -> None:
        while len(writes) > limit:
            item, future = writes.pop(0)
            reason = future.result()
            run.fail(item, reason) if reason else run.done(item)
            progress.advance(task)

    def start(chunk: list[_Item]):
        claimed = run.claim(chunk)
        for _ in range(len(chunk) - len(claimed)):
            progress.advance(task)
        return claimed, [pool.submit(_load, item, config) for item in claimed]

    try:
        with _progress(len(todo)) as progress:
            task = progress.add_task("inpainting", total=len(todo))
            chunks = [todo[i:i + batch] for i in range(0, len(todo), batch)]
            current = start(chunks[0]) if chunks else ([], [])
            for number in range(len(chunks)):
                chunk, pending = current
                loaded_results = [future.result() for future in pending]
                if number + 1 < len(chunks):  # decode the next chunk while this one is filled
                    current = start(chunks[number + 1])
                ready, empty = [], []
                for item, result in zip(chunk, loaded_results):
                    if isinstance(result, str):
                        run.fail(item, result)
                        progress.advance(task)
                        continue
                    if result.decoded.frames > 1:
                        run.note(item, f"{result.decoded.frames} frames: only the first frame was filled")
                    if not result.hole.any():
                        run.note(item, EMPTY_MASK_NOTE)
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
    finally:  # after Ctrl-C: let the queued writes (and a chunk's decoding) finish and record them
        pool.shutdown(wait=True)
        for item, future in writes:
            if future.done() and not future.cancelled() and future.exception() is None:
                reason = future.result()
                run.fail(item, reason) if reason else run.done(item)


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


def _summary(run: _Run, config: InpaintConfig, inpainter, device, image_size, seconds: float,
             ignored=()) -> dict:
    done, skipped, failed, not_processed, sources = [], [], [], [], {}
    for item in run.items:
        state, reason = run.status.get(item.index, ("failed", "not processed"))
        if state == "done":
            done.append(item.name)
        elif state == "skipped":
            skipped.append(item.name)
        elif item.index not in run.status and run.interrupted:
            not_processed.append(item.name)
            continue
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
        "ignored": [{"file": name, "reason": reason} for name, reason in ignored],
        "seconds": round(seconds, 3),
        "images_per_second": round(len(done) / seconds, 3) if seconds > 0 else None,
        "mask_sources": sources,
    }
    smaller = getattr(inpainter, "smaller_scale", None)   # faces under the default's size go to it
    if smaller is not None:
        summary["weights_below_its_size"] = getattr(smaller, "weights_path", None)
    if run.interrupted:
        summary.update(interrupted=True, not_processed=not_processed)
    if run.notes:
        summary["notes"] = dict(run.notes)
    return summary


def _quoted(name) -> str:
    """A file name for a one-line report: as is, or quoted with escapes when it holds a newline
    or another unprintable character."""
    text = str(name)
    return text if text.isprintable() else repr(text)


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _report(summary: dict, items: list[_Item], run: _Run) -> None:
    """One line of totals, then one ``failed: <file>: <reason>`` line per failure and one
    ``note: <file>: <note>`` line per note, to stderr; names with a newline are quoted."""
    paths = {item.name: item.path for item in items}
    rate = summary["images_per_second"]
    ignored = f", {len(summary['ignored'])} ignored" if summary["ignored"] else ""
    line = (f"{summary['method']}: {len(summary['done'])} done, {len(summary['skipped'])} skipped, "
            f"{len(summary['failed'])} failed{ignored} in {summary['seconds']:.1f} s"
            + (f" ({rate:.2f} images/s)" if rate else "") + f" -> {_quoted(summary['output_dir'])}")
    print(line, file=sys.stderr)
    for failure in summary["failed"]:
        name = _quoted(paths.get(failure["file"], failure["file"]))
        print(f"failed: {name}: {_one_line(failure['reason'])}", file=sys.stderr)
    for name, note in summary.get("notes", {}).items():
        if note != EMPTY_MASK_NOTE:
            print(f"note: {_quoted(paths.get(name, name))}: {_one_line(note)}", file=sys.stderr)
    for entry in summary["ignored"]:
        print(f"ignored: {_quoted(entry['file'])}: {entry['reason']}", file=sys.stderr)
    if run.interrupted:
        print(f"interrupted: {len(summary['not_processed'])} not processed; run the same command "
              f"again to continue", file=sys.stderr)


__all__ = ["crop_box", "fill_batch", "fill_image",
           "comparison_image", "run_inpaint", "EMPTY_MASK_NOTE"]
