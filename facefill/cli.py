"""The ``facefill`` command line: each command turns options into a config and calls one function."""
from __future__ import annotations

import json
import logging
import sys

import click

from facefill import __version__
from facefill import config as cfg

EPILOG = "Masks: white (255) = hole; binarised at 127; --invert-mask for the other convention."
MASK_KINDS_HELP = ("center, random-box, irregular, irregular-thin, irregular-medium, "
                   "irregular-thick, random (20-30 % strokes), sunglasses, surgical-mask, "
                   "box (10-50 % of the area anywhere), large (40-60 %)")


class UsageFailure(click.ClickException):
    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


def _run(function, *args):
    """Turn expected failures (bad input, missing files) into a one-line error, exit code 2."""
    from facefill.checkpoint import WeightsError

    try:
        return function(*args)
    except (ValueError, FileNotFoundError, NotADirectoryError, WeightsError, KeyError) as error:
        message = str(error) if not isinstance(error, KeyError) else str(error).strip("'\"")
        raise UsageFailure(message) from None


def _config_file(path):
    return cfg.load_toml(path) if path else {}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facefill")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose):
    """facefill: restore occluded faces with classical, GAN and diffusion inpainting.

    \b
    Typical session:
      facefill prepare SRC data128 --size 128     # crops, splits, fixed eval masks
      facefill train --method dense-gan --data data128
      facefill inpaint photos/ filled/            # shipped weights by default
      facefill eval --data data128 --masks center
      facefill bench
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@main.command("methods")
def methods_command():
    """List every method: native size, trainable, shipped weights."""
    from rich.console import Console
    from rich.table import Table

    from facefill.checkpoint import shipped_cards
    from facefill.registry import get_method_class, list_methods

    cards = shipped_cards()
    table = Table(title="facefill methods")
    for column in ("method", "native size", "trainable", "shipped weights", "centre PSNR"):
        table.add_column(column)
    for name in list_methods():
        cls = get_method_class(name)
        mine = [c for c in cards if c["method"] == name]
        native = ", ".join(str(c["size"]) for c in mine) or ("any" if not cls.trainable else "-")
        psnr = ", ".join(f"{c.get('metrics', {}).get('center', {}).get('psnr', float('nan')):.2f}"
                         for c in mine) or "-"
        table.add_row(name, native, "yes" if cls.trainable else "no",
                      ", ".join(c["file"] for c in mine) or ("not needed" if not cls.trainable else "none"),
                      psnr)
    Console().print(table)


# methods.base.SAMPLERS; spelled out so that `--help` need not import torch
sampler_option = click.option("--sampler", type=click.Choice(["ddim", "ddpm"]),
                              help="Diffusion sampler: ddim, or ddpm (ancestral; all T steps unless --steps).")

amp_option = click.option("--amp", is_flag=True,
                          help="bf16 autocast while filling, on CUDA or a CPU with bf16 instructions (1.8x "
                               "faster for ddpm-ffc on such a CPU); scores may differ slightly from float32.")


@main.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--size", default=128, show_default=True, help="Output side in pixels.")
@click.option("--keep", type=int, help="Keep only the N sharpest images (variance of the Laplacian).")
@click.option("--test-fraction", default=0.2, show_default=True)
@click.option("--identities", type=click.Path(exists=True, dir_okay=False),
              help="CSV file,identity for an identity-disjoint split (CelebA identities.csv).")
@click.option("--crop", type=click.Choice(["celeba", "detect", "center"]), default="celeba", show_default=True,
              help="celeba: aligned-CelebA face square; detect: OpenCV Haar cascade; center: centre square.")
@click.option("--masks", default="center,random-box,irregular", show_default=True,
              help=f"Fixed evaluation mask kinds for the test split: {MASK_KINDS_HELP}.")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--pack", is_flag=True,
              help="Write the train split as a few shards (train-NNN.npz, WebP images) instead of PNG files.")
@click.option("--pack-quality", default=90, show_default=True, help="WebP quality of packed images.")
@click.option("--shard-mib", default=48.0, show_default=True, help="Largest shard, MiB.")
def prepare(src, data, size, keep, test_fraction, identities, crop, masks, seed, workers, pack, pack_quality,
            shard_mib):
    """Rank SRC's faces by sharpness, crop, resize, split, and store fixed eval masks in DATA.

    --test-fraction 0 makes a train-only set (e.g. celeba-crops, which has no identities)."""
    from facefill.data.prepare import prepare as run_prepare

    config = cfg.PrepareConfig(src=src, out=data, size=size, keep=keep, test_fraction=test_fraction,
                               identities=identities, crop=crop, masks=cfg.split_list(masks),
                               seed=seed, workers=workers, pack=pack, pack_quality=pack_quality,
                               shard_mib=shard_mib)
    manifest = _run(run_prepare, config)
    counts = manifest["counts"]
    for skipped in manifest["skipped"]:
        click.echo(f"skipped: {skipped['file']}: {skipped['reason']}", err=True)
    click.echo(f"{data}: {counts['train']} train, {counts['test']} test, {counts['skipped']} skipped")
    if counts["train"] + counts["test"] == 0:
        raise UsageFailure(f"{src}: no usable face images")
    if counts["skipped"]:
        sys.exit(1)


@main.command()
@click.option("--method", help="A trainable method (see `facefill methods`); with --resume, the checkpoint's.")
@click.option("--data", multiple=True,
              help="Prepared data folder or pack (facefill prepare), as PATH or PATH:WEIGHT; repeat to train "
                   "on several sets (WEIGHT multiplies how often each of its images is drawn).  [default: data128]")
@click.option("--size", type=int, help="Training resolution; default: the data's size.")
@click.option("--masks", help=f"{MASK_KINDS_HELP}; a comma-separated list of them (each sample's kind drawn "
                             "uniformly); full (center, box, irregular, random, sunglasses, surgical-mask, "
                             "large); or mix (center, random-box, irregular)  [default: center]")
@click.option("--epochs", type=int)
@click.option("--steps", type=int, help="Optimisation steps (overrides --epochs).")
@click.option("--time-limit", type=float, help="Stop cleanly after this many minutes, with a checkpoint.")
@click.option("--batch-size", type=int, help="[default: 64]")
@click.option("--lr", type=float, help="Learning rate; default: the paper's. With --resume, the rate from here on "
              "(the optimiser's moments are kept): a step decay.")
@click.option("--device", help="auto | cpu | cuda  [default: auto]")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast (CUDA, or a CPU with bf16 support).")
@click.option("--ema", type=float, help="EMA decay for the inference networks (e.g. 0.999).")
@click.option("--ema-bn-batches", type=click.IntRange(min=0),
              help="With --ema: re-estimate the averaged networks' BatchNorm statistics (methods with one "
                   "feed-forward generator) on this many training batches before each validation and checkpoint (the live networks' statistics "
                   "do not fit averaged weights); 0: keep the live ones.  [default: 50]")
@click.option("--data-on", type=click.Choice(["device", "workers"]),
              help="device: the set decoded once onto the training device, batches, masks and augmentation "
                   "made there; workers: DataLoader workers on the CPU.  [default: device]")
@click.option("--workers", type=int, help="Data-loading workers with --data-on workers. [default: 2]")
@click.option("--augment/--no-augment", default=None,
              help="Random scale (0.8-1.25), shift and colour jitter of every image (flips always).")
@click.option("--channels-last/--no-channels-last", default=None, help="[default: on CUDA]")
@click.option("--compile", is_flag=True, default=None, help="torch.compile the networks (slow start).")
@click.option("--out", help="Run folder. [default: runs/train]")
@click.option("--resume", is_flag=True, default=None,
              help="Continue from the run folder's last readable checkpoint, with its settings unless given.")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False),
              help="Start from this weights file's generator, or from this run checkpoint's networks "
                   "(discriminator and EMA generator included), with fresh optimisers: to fine-tune. "
                   "From a weights file (no discriminator) a GAN fine-tune loses the fills' detail "
                   "even with a discriminator retrained first: prefer a run checkpoint, and judge by "
                   "sharpness as well as PSNR.")
@click.option("--part-mib", type=float, help="Write checkpoints in parts of at most this many MiB.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file: [train] keys and [method] settings.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a method setting (or a train key), e.g. --set dense=false.")
@click.option("--export", help="Write inference weights (and card) here at the end.")
@click.option("--val-every", type=int)
@click.option("--ckpt-every", type=int)
@click.option("--seed", type=int)
def train(method, config_file, sets, **flags):
    """Train a method on prepared data, with checkpoints, validation and logs."""
    from facefill.engine.train import stored_settings
    from facefill.engine.train import train as run_train
    from facefill.registry import get_method_class

    flags["data"] = flags["data"] or None

    def build():
        file_values = _config_file(config_file)
        set_values = cfg.parse_sets(sets)
        train_values = {**file_values.get("train", {})}
        method_values = {}
        resume = next((v for v in (flags["resume"], set_values.get("resume"), train_values.get("resume"))
                       if v is not None), False)
        if resume:  # the checkpoint's settings, under anything given now
            out = flags["out"] or set_values.get("out") or train_values.get("out") or cfg.TrainConfig.out
            stored = stored_settings(out)
            method_values = dict(stored.pop("method_settings", {}))
            stored = {k: v for k, v in stored.items() if k not in ("resume", "out", "init_from", "device")}
            train_values = {**stored, **train_values}
        name = method or train_values.get("method")
        if not name:
            raise ValueError("--method is required (or --resume a run folder that has a checkpoint)")
        if not get_method_class(name).trainable:
            raise ValueError(f"method {name!r} needs no training")
        train_values["method"] = name
        method_values.update(file_values.get("method", {}))
        config, extras = cfg.build(cfg.TrainConfig, train_values, set_values, flags)
        method_values.update(extras)
        return cfg.TrainConfig(**{**cfg.config_dict(config),
                                  "method_settings": tuple(sorted(method_values.items()))})

    summary = _run(run_train, _run(build))
    click.echo(json.dumps(summary, indent=2, default=str))


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--data", help="Evaluate on this prepared data folder's test split and record it in the card.")
@click.option("--masks", default="center,random-box,irregular", show_default=True,
              help="Stored mask kinds to evaluate with --data (those present).")
@click.option("--note", "notes", multiple=True, help="A remark for the card (repeatable).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Store this method setting in the weights (inference settings, e.g. --set eta=1.0 "
                   "for ddpm-ffc); the card records it.")
@click.option("--storage", type=click.Choice(["float16", "int8"]),
              help="How the weights are stored: float16 (half of float32), or int8 with a float16 scale per "
                   "output channel (a quarter; check the card's metrics). [default: float16, or the "
                   "weights file's own]")
@amp_option
def export(checkpoint, weights, data, masks, notes, sets, storage, amp):
    """Write the inference-only weights file and its JSON card from a training checkpoint.

    CHECKPOINT may also be a weights file: it is copied with its training record, and with
    --data its metrics are measured again on this machine (e.g. for weights trained elsewhere)."""
    from facefill.engine.train import export_checkpoint

    settings = _run(cfg.parse_sets, sets)
    card = _run(export_checkpoint, checkpoint, weights, data, cfg.split_list(masks), notes, amp, settings,
                storage)
    parameters = card.get("parameters")
    click.echo(f"wrote {weights}" + (f" ({parameters:,} parameters)" if isinstance(parameters, int) else ""))


@main.command()
@click.argument("input_dir", metavar="IN", type=click.Path(exists=True))
@click.argument("output_dir", metavar="OUT", type=click.Path(file_okay=False))
@click.option("--method", help="Method name; default: the best shipped learned method, else telea.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="A weights file (.pt).")
@click.option("--mask-dir", type=click.Path(exists=True, file_okay=False),
              help="Masks with the same stem as each image.")
@click.option("--mask", type=click.Path(exists=True, dir_okay=False), help="One mask for every image.")
@click.option("--masks", help=f"Generate masks of this kind: {MASK_KINDS_HELP}.")
@click.option("--invert-mask", is_flag=True, help="Masks use black = hole.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--batch-size", default=8, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Decode/encode threads.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (default: skip them).")
@click.option("--save-comparison", is_flag=True, help="Also write <stem>_compare.png (masked | filled).")
@click.option("--steps", type=int, help="Sampling steps for diffusion methods.")
@sampler_option
@amp_option
@click.option("--summary", type=click.Path(dir_okay=False), help="JSON summary path [default: OUT/summary.json].")
@click.option("--aligned", is_flag=True,
              help="Images are face crops in the model's framing: skip face detection.")
@click.option("--dilate", default=0, show_default=True, help="Grow each hole by N pixels before filling.")
@click.option("--feather", default=0, show_default=True,
              help="Soft edge of N pixels inside the dilated hole (the given hole is always replaced).")
@click.option("--ext", type=click.Choice(["same", "png", "jpg", "webp"]), default="same", show_default=True,
              help="Output format; same: the input's (PNG for formats not written back).")
@click.option("--suffix", default="", help="Added to each output's stem, e.g. _filled.")
@click.option("--quality", type=click.IntRange(1, 100),
              help="JPEG and WebP quality [default: JPEG 95, WebP lossless].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=64_000_000, show_default=True,
              help="Refuse larger images (width x height, read from the header before decoding).")
@click.option("--seed", default=0, show_default=True)
def inpaint(**options):
    """Fill every image in IN (a folder, or one image file) and write the results to OUT.

    Masks come from <stem>_mask.png beside each image, --mask-dir, --mask, --masks, or, with
    none of these, from detecting flat-filled occluders (a near-uniform region over a face).
    Faces are detected, each hole is filled in the face's crop at the model's size and pasted
    back at full resolution: only hole pixels (grown by --dilate) change. Exit code: 0 all done,
    1 some files failed, 2 usage error, 130 interrupted (OUT/summary.json lists what was done).
    """
    if sum(bool(options[k]) for k in ("mask_dir", "mask", "masks")) > 1:
        raise UsageFailure("give at most one of --mask-dir, --mask, --masks")
    try:
        from facefill.engine.inpaint import run_inpaint

        summary = _run(run_inpaint, cfg.InpaintConfig(**options))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if summary.get("interrupted"):
        sys.exit(130)
    if summary["failed"]:
        sys.exit(1)


@main.command("eval")
@click.option("--data", default="data128", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--masks", default="center", show_default=True, help="Stored mask kind in DATA/masks/.")
@click.option("--methods", default="telea,navier-stokes,biharmonic", show_default=True,
              help="Comma-separated; learned methods use their shipped weights.")
@click.option("--weights", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Weights file(s) to score (repeatable).")
@click.option("--report", default="reports/eval", show_default=True, help="Report folder.")
@click.option("--limit", type=int, help="Score only the first N test images.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--sample-grid", default=8, show_default=True, help="Images shown in the HTML report's grid.")
@click.option("--steps", type=int, help="Sampling steps (diffusion) or latent-search iterations (wgan).")
@sampler_option
@amp_option
@click.option("--seed", default=0, show_default=True)
@click.option("--framing", type=click.Choice(("aligned", "shifted")), default="aligned", show_default=True,
              help="shifted: each test face and its hole rescaled (0.8-1.25x) and moved (up to 20 % of the "
                   "side) as training's --augment does, fixed per image by --seed: faces framed unlike the "
                   "training crops.")
def evaluate(data, masks, methods, weights, report, limit, device, batch_size, sample_grid, steps, sampler,
             amp, seed, framing):
    """Score methods on DATA's test split with its stored masks: PSNR, SSIM, L1, L2.

    \b
    Example:
      facefill eval --data data128 --masks irregular --methods telea,dense-gan --framing shifted
    """
    from facefill.engine.evaluate import run_eval

    config = cfg.EvalConfig(data=data, masks=masks, methods=cfg.split_list(methods), weights=tuple(weights),
                            report=report, limit=limit, device=device, batch_size=batch_size,
                            sample_grid=sample_grid, steps=steps, sampler=sampler, amp=amp, seed=seed,
                            framing=framing)
    _run(run_eval, config)


@main.command()
@click.option("--methods", help="Comma-separated; learned methods use their shipped weights.  "
                                "[default: telea,navier-stokes,biharmonic; none when --weights is given]")
@click.option("--weights", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Weights file(s) to bench (repeatable), added or pinned as in `facefill eval`.")
@click.option("--size", default=128, show_default=True)
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--repeat", default=5, show_default=True, help="Timed runs per batch size.")
@click.option("--warmup", default=1, show_default=True, help="Untimed runs (batches with --sweep) first.")
@click.option("--pipeline-images", default=32, show_default=True,
              help="Images for the whole-pipeline (decode, fill, encode) measurement; 0 skips it.")
@click.option("--pipeline-from", type=click.Path(exists=True, file_okay=False),
              help="Photos for the whole-pipeline measurement (the first --pipeline-images, centre square "
                   "at --size, centre-quarter hole), e.g. a prepared set's test/ folder.  [default: "
                   "synthetic images without faces: face detection's worst case]")
@click.option("--sweep", metavar="LIST",
              help="Speed/quality trade-off instead of the synthetic measurements: comma-separated settings, "
                   "e.g. 25,50,100,ddpm (integer: DDIM sampling steps, or wgan latent-search iterations; "
                   "ddpm: ancestral DDPM over all T steps), each scored on --data's test split (PSNR, SSIM).")
@click.option("--data", default="data128", show_default=True, type=click.Path(file_okay=False),
              help="--sweep: prepared data folder.")
@click.option("--masks", default="center", show_default=True,
              help="--sweep: stored mask kind in DATA/masks/.")
@click.option("--limit", default=256, show_default=True, help="--sweep: fill the first N test images.")
@click.option("--batch-size", default=32, show_default=True, help="--sweep: images per batch.")
@click.option("--out", default="reports/bench.json", show_default=True,
              help="JSON results; with --sweep also a Markdown table beside it (.md).")
@click.option("--train", "train_mode", is_flag=True,
              help="Training throughput instead: images/s, step time, peak memory and the fraction of the "
                   "device's measured bf16 matmul peak, per trainable method (--methods; default all) and "
                   "--batch-sizes, at --size; --repeat timed steps.")
@click.option("--train-masks", default="center", show_default=True, help="--train: mask kind.")
@click.option("--compile", is_flag=True, help="--train: torch.compile the networks.")
@click.option("--data-on", type=click.Choice(("device", "workers")), default="device", show_default=True,
              help="--train: batches, masks and augmentation made on the device, or by DataLoader workers "
                   "on the CPU (the loop before GPU-side data; as `facefill train --data-on`).")
@click.option("--workers", default=8, show_default=True, help="--train --data-on workers: loader processes.")
@click.option("--channels-last/--no-channels-last", default=None,
              help="--train: channels-last memory format.  [default: on CUDA]")
@amp_option
@click.option("--seed", default=0, show_default=True)
def bench(methods, weights, size, batch_sizes, device, repeat, warmup, pipeline_images, pipeline_from, sweep,
          data, masks, limit, batch_size, out, train_mode, train_masks, compile, data_on, workers, channels_last,
          amp, seed):
    """Throughput, latency (median, p90) and peak memory per method, alone and in the pipeline;
    or, with --sweep, speed against quality over sampling settings.

    \b
    Examples:
      facefill bench --weights ddpm-ffc-128.pt --sweep 25,50,100,ddpm --data data128 --device cuda
      facefill bench --train --batch-sizes 256 --amp --device cuda      # every method, GPU-side data
      facefill bench --train --batch-sizes 256 --data-on workers --no-channels-last   # the loop before
    """
    from facefill.engine.bench import parse_sweep, run_bench

    def build():
        sizes = tuple(int(b) for b in cfg.split_list(batch_sizes))
        if methods is not None:
            names = cfg.split_list(methods)
        elif train_mode:  # every trainable method
            names = ()
        else:  # the default methods, or only the weights files when some are given
            names = () if weights else cfg.BenchConfig.methods
        settings = parse_sweep(sweep) if sweep is not None else ()
        return cfg.BenchConfig(methods=names, weights=tuple(weights), size=size, batch_sizes=sizes,
                               device=device, repeat=repeat, warmup=warmup, pipeline_images=pipeline_images,
                               pipeline_from=pipeline_from,
                               out=out, seed=seed, sweep=settings, data=data, masks=masks, limit=limit,
                               batch_size=batch_size, amp=amp, train=train_mode, train_masks=train_masks,
                               compile=compile, data_on=data_on, workers=workers, channels_last=channels_last)

    _run(run_bench, _run(build))


@main.command()
@click.option("--paper", default="all", show_default=True,
              help="two-stage, dense-gan, ddpm-ffc, wgan, glcic, or all (comma-separated for several).")
@click.option("--data-root", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Prepared data sets (data128, data64, datahq256); a missing one is prepared here from "
                   "--shared.")
@click.option("--data", "data", multiple=True, metavar="SET=PATH",
              help="Use this prepared folder for a data set, e.g. --data data128=~/faces/data128 (repeatable).")
@click.option("--shared", type=click.Path(file_okay=False),
              help="Raw face data to prepare missing sets from.  [default: ../shared/data beside the repository]")
@click.option("--limit", type=int, help="Score at most N images per paper and mask kind (default: each "
                                        "paper's own sample for slow methods, else the whole test split).")
@click.option("--report", default="reports/reproduce", show_default=True, help="Report folder.")
@click.option("--results", type=click.Path(dir_okay=False),
              help="Markdown file whose generated section gets the tables.  [default: weights/RESULTS.md]")
@click.option("--no-results", is_flag=True, help="Write only the report folder.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@amp_option
@click.option("--seed", default=0, show_default=True)
def reproduce(paper, data_root, data, shared, limit, report, results, no_results, device, batch_size, amp, seed):
    """Run each seed paper's protocol on the shipped weights and put facefill's numbers beside
    the paper's, with the difference: report folder (Markdown, JSON) and weights/RESULTS.md.

    \b
    Example:
      facefill reproduce --paper all --data-root data
    """
    from facefill.engine.reproduce import run_reproduce
    from facefill.papers import select_papers

    def build():
        papers = tuple(p.key for p in select_papers(paper))
        overrides = []
        for item in data:
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"--data expects SET=PATH, got {item!r}")
            overrides.append((name.strip(), path.strip()))
        return cfg.ReproduceConfig(papers=papers, data_root=data_root, data=tuple(overrides), shared=shared,
                                   limit=limit, report=report, results="" if no_results else results,
                                   device=device, batch_size=batch_size, amp=amp, seed=seed)

    summary = _run(run_reproduce, _run(build))
    if summary["failures"]:
        sys.exit(1)
