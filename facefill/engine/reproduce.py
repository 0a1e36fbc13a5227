"""``facefill reproduce``: each seed paper's protocol scored on the shipped weights.

For every paper in ``facefill.papers``: find (or prepare) its data set, take its test images and
stored masks, fill them with the paper's method and the methods it is compared with, and put
the means beside the paper's numbers with the difference (facefill minus paper). Filling and
scoring are ``engine.evaluate``'s (``resolve_methods``, ``score_method``, ``mean_metrics``), so a
number here is what ``facefill eval`` gives on the same images; ``report.reproduce`` renders.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
from pathlib import Path

import torch

from facefill import __version__
from facefill.checkpoint import weights_dir
from facefill.config import EvalConfig, PrepareConfig, ReproduceConfig
from facefill.data.dataset import read_manifest
from facefill.data.prepare import prepare
from facefill.devices import resolve_device
from facefill.engine.evaluate import (CSV_COLUMNS, eval_items, mean_metrics, resolve_methods,
                                      score_method)
from facefill.inference.options import FillOptions
from facefill.papers import DATASETS, Paper, Reported, select_papers
from facefill.report.reproduce import paper_markdown, report_markdown, update_results
from facefill.report.tables import write_csv, write_json, write_markdown

log = logging.getLogger(__name__)

PER_IMAGE_COLUMNS = ("paper", "masks", *CSV_COLUMNS)


# ------------------------------------------------------------------------------------------- data

def shared_data_dir(config: ReproduceConfig) -> Path:
    """``--shared``, else ``../shared/data`` beside the repository."""
    return Path(config.shared) if config.shared else Path(__file__).resolve().parents[3] / "shared" / "data"


def check_data_overrides(config: ReproduceConfig) -> None:
    known = set(DATASETS) | {spec.folder for spec in DATASETS.values()}
    for name, _ in config.data:
        if name not in known:
            raise ValueError(f"--data {name}=...: unknown data set; known: {', '.join(sorted(known))}")


def data_path(key: str, config: ReproduceConfig) -> Path:
    """Where data set ``key`` is: a ``--data`` override (by key or folder name), else DATA_ROOT/<folder>."""
    spec = DATASETS[key]
    overrides = dict(config.data)
    for name in (key, spec.folder):
        if name in overrides:
            return Path(overrides[name])
    return Path(config.data_root) / spec.folder


def prepare_config(key: str, out: Path, shared: Path) -> PrepareConfig:
    spec = DATASETS[key]
    return PrepareConfig(src=str(shared / spec.source), out=str(out), size=spec.size, crop=spec.crop,
                         masks=spec.masks, identities=str(shared / spec.identities) if spec.identities else None)


def prepare_command(config: PrepareConfig) -> str:
    """The ``facefill prepare`` command line that builds ``config``'s data set."""
    words = ["facefill prepare", config.src, config.out, f"--size {config.size}", f"--crop {config.crop}",
             f"--masks {','.join(config.masks)}"]
    if config.identities:
        words.append(f"--identities {config.identities}")
    return " ".join(words)


def ensure_data(key: str, config: ReproduceConfig, console=None) -> Path:
    """The prepared data set ``key``; prepared from the shared raw data first when it is missing."""
    path = data_path(key, config)
    if (path / "test").is_dir():
        return path
    settings = prepare_config(key, path, shared_data_dir(config))
    if not Path(settings.src).is_dir():
        raise ValueError(f"{path}: no prepared data set, and {settings.src} is not there to prepare it from; "
                         f"run `{prepare_command(settings)}` or pass --data {DATASETS[key].folder}=PATH")
    if console is not None:
        console.print(f"preparing {path} (once): {prepare_command(settings)}", markup=False, highlight=False)
    prepare(settings)
    return path


def select_items(paper: Paper, data: Path, kind: str, limit: int | None):
    """The test items a paper scores on mask ``kind``: its sharpest fraction when the protocol
    asks for one, then the first ``limit`` by file name. Returns (items, counts): the test images
    with a mask, those the protocol takes, and those scored (fewer: a sample)."""
    items = eval_items(data, kind)
    total = len(items)
    if paper.sharpest:
        scores = (read_manifest(data, required=False).get("sharpness") or {}).get("scores") or {}
        if not scores:
            raise ValueError(f"{data / 'manifest.json'}: no sharpness scores (re-run facefill prepare)")
        count = max(1, round(paper.sharpest * total))
        ranked = sorted(items, key=lambda item: (-scores.get(item.stem, -math.inf), item.stem))
        items = sorted(ranked[:count], key=lambda item: item.stem)
    chosen = len(items)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        items = items[:limit]
    return items, {"test_images": total, "protocol_images": chosen, "scored": len(items)}


# ---------------------------------------------------------------------------------------- tables

def difference(measured: float | None, reported: float | None) -> float | None:
    """facefill minus paper; None when either is missing or not finite."""
    if measured is None or reported is None or not (math.isfinite(measured) and math.isfinite(reported)):
        return None
    return measured - reported


def standard_error(values) -> float | None:
    """The standard error of the mean of the finite ``values`` (None under two)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        return None
    mean = sum(finite) / len(finite)
    return math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) / len(finite))


def compare_row(metrics, method: str, kind: str, reported: Reported | None, means: dict | None,
                variant: str = "", images: int | None = None, note: str = "", psnr_se: float | None = None) -> dict:
    """One table row: the paper's values, facefill's and their differences for ``metrics``."""
    paper_values = {m: (reported.metrics.get(m) if reported else None) for m in metrics}
    measured = {m: (means.get(m) if means else None) for m in metrics}
    return {"method": method, "variant": variant, "masks": kind, "images": images,
            "paper": paper_values, "facefill": measured, "psnr_se": psnr_se,
            "difference": {m: difference(measured[m], paper_values[m]) for m in metrics},
            "source": reported.source if reported else None, "note": note}


def comparison_rows(paper: Paper, measured: dict, counts: dict) -> list[dict]:
    """Per mask kind: every scored method (the paper's numbers where it reports them), then the
    paper's ablation variants facefill does not ship (paper column only)."""
    rows = []
    for kind in paper.masks:
        for name in paper.methods:
            reported = next((r for r in paper.reported if r.method == name and r.masks == kind and not r.variant),
                            None)
            info = measured.get(name, {})
            scored = info.get("masks", {}).get(kind) or {}
            rows.append(compare_row(paper.metrics, name, kind, reported, scored.get("means"),
                                    images=counts.get(kind), note=info.get("error", ""),
                                    psnr_se=scored.get("psnr_se")))
        for reported in paper.reported:
            if reported.variant and reported.masks == kind:
                rows.append(compare_row(paper.metrics, reported.method, kind, reported, None, reported.variant,
                                        note=f"not shipped; train with configs/{reported.config}.toml"))
    return rows


def margins_over(paper: Paper, measured: dict, baseline: str = "telea") -> dict:
    """The paper's method minus ``baseline`` on the same images, per mask kind and metric."""
    own, base = measured.get(paper.method, {}).get("masks", {}), measured.get(baseline, {}).get("masks", {})
    return {kind: {m: difference(own[kind]["means"].get(m), base[kind]["means"].get(m)) for m in paper.metrics}
            for kind in paper.masks if kind in own and kind in base and paper.method != baseline}


# --------------------------------------------------------------------------------------- scoring

def load_entry(name: str, config: ReproduceConfig, device, size: int):
    """(MethodEntry, "") for ``name`` with its shipped weights for ``size``, or (None, why not)."""
    try:
        (entry,) = resolve_methods(EvalConfig(methods=(name,), device=config.device, amp=config.amp),
                                   device, size)
    except ValueError as error:  # WeightsError is one too
        return None, str(error)
    return entry, ""


def method_info(entry) -> dict:
    meta = entry.meta or {}
    info = {"source": entry.source, "native_size": getattr(entry.inpainter, "size", None), "masks": {}}
    if entry.weights:
        info.update(weights=Path(entry.weights).name, steps=meta.get("steps"), epochs=meta.get("epochs"),
                    trained_on=meta.get("device"))
    return info


def score_paper(paper: Paper, config: ReproduceConfig, device, progress=None, console=None):
    """Score one paper's protocol; returns (its result, its per-image rows)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    data = ensure_data(paper.data, config, console)
    size = int(read_manifest(data, required=False).get("size") or DATASETS[paper.data].size)
    limit = config.limit if config.limit is not None else paper.limit
    samples = {kind: select_items(paper, data, kind, limit) for kind in paper.masks}
    measured, per_image = {}, []
    for name in paper.methods:
        entry, error = load_entry(name, config, device, size)
        if entry is None:
            measured[name] = {"error": error}
            continue
        info = method_info(entry)
        for kind, (items, _) in samples.items():
            torch.manual_seed(config.seed)  # stochastic methods score the same way every run
            rows, seconds, _ = score_method(entry, items, device, config.batch_size, progress=progress,
                                            options=FillOptions(seed=config.seed, amp=config.amp))
            info["masks"][kind] = {"means": mean_metrics(rows), "psnr_se": standard_error([r["psnr"] for r in rows]),
                                   "seconds_per_image": seconds, "count": len(rows)}
            per_image += [{"paper": paper.key, "masks": kind, **row} for row in rows]
        entry.inpainter = None  # free the model before the next one loads
        measured[name] = info
    counts = {kind: len(items) for kind, (items, _) in samples.items()}
    images = {kind: sample_counts for kind, (_, sample_counts) in samples.items()}
    result = {"paper": paper.key, "title": paper.title, "method": paper.method, "protocol": paper.protocol,
              "notes": list(paper.notes), "data": str(data), "data_folder": data.name, "size": size,
              "metrics": list(paper.metrics), "sharpest": paper.sharpest, "limit": limit,
              "images": images,
              "methods": measured, "table": comparison_rows(paper, measured, counts),
              "over_telea": margins_over(paper, measured), "wall_seconds": time.perf_counter() - start,
              "cpu_seconds": time.process_time() - cpu_start}
    return result, per_image


def run_reproduce(config: ReproduceConfig) -> dict:
    """Score every selected paper, write the report folder (README.md, one <paper>.md each,
    results.json, per_image.csv) and rewrite their blocks of ``config.results``; a paper that
    cannot run (no data, no source to prepare it from) is listed in ``failures``, the others go on."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    papers = select_papers(",".join(config.papers))
    check_data_overrides(config)
    if config.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.limit is not None and config.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {config.limit}")
    device = resolve_device(config.device)
    console, errors = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    results, failures, per_image = [], [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    for paper in papers:
        with Progress(*columns, console=console, transient=True) as progress:
            try:
                result, rows = score_paper(paper, config, device, progress, console)
            except (ValueError, FileNotFoundError, NotADirectoryError) as error:
                failures.append({"paper": paper.key, "error": str(error)})
                errors.print(f"error: {paper.key}: {error}", markup=False, highlight=False)
                continue
        results.append(result)
        per_image += rows
        console.print(paper_markdown(result, run_info(config, device)), markup=False, highlight=False)

    summary = {**run_info(config, device), "wall_seconds": time.perf_counter() - start,
               "cpu_seconds": time.process_time() - cpu_start, "papers": results, "failures": failures}
    report = Path(config.report)
    write_json(report / "results.json", summary)
    write_csv(report / "per_image.csv", per_image, PER_IMAGE_COLUMNS)
    for result in results:
        write_markdown(report / f"{result['paper']}.md", paper_markdown(result, summary))
    write_markdown(report / "README.md", report_markdown(summary))
    results_path = None if config.results == "" else Path(config.results or weights_dir() / "RESULTS.md")
    if results_path is not None and results:
        update_results(results_path, summary)
    console.print(f"report: {report}" + (f"; tables written into {results_path}" if results_path and results
                                         else ""), markup=False, highlight=False)
    return {**summary, "report": str(report), "results_file": str(results_path) if results_path else None}


def run_info(config: ReproduceConfig, device) -> dict:
    """How the numbers were taken, for the report's header lines."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    return {"date": _dt.datetime.now().isoformat(timespec="seconds"), "device": name,
            "threads": torch.get_num_threads(), "facefill_version": __version__, "seed": config.seed,
            "limit": config.limit, "amp": config.amp}
