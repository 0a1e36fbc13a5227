"""Plain typed configs. Precedence: defaults < --config file (TOML) < --set key=value < flags."""
from __future__ import annotations

import ast
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class PrepareConfig:
    src: str
    out: str
    size: int = 128
    keep: int | None = None            # keep the N sharpest images (variance of the Laplacian)
    test_fraction: float = 0.2
    identities: str | None = None      # CSV file,identity: identity-disjoint split
    crop: str = "celeba"               # celeba | detect | center
    masks: tuple[str, ...] = ("center",)
    seed: int = 0
    workers: int = 2
    pack: bool = False                 # the train split as a few shards (train-NNN.npz) instead of PNGs
    pack_quality: int = 90             # WebP quality of packed images
    shard_mib: float = 48.0            # largest shard


@dataclass(frozen=True)
class InpaintConfig:
    input_dir: str
    output_dir: str
    method: str | None = None          # None: the best shipped learned method, else telea
    weights: str | None = None
    mask_dir: str | None = None
    mask: str | None = None            # one mask file for every image
    masks: str | None = None           # a generated mask kind
    invert_mask: bool = False
    device: str = "auto"
    batch_size: int = 8
    workers: int = 2
    overwrite: bool = False
    save_comparison: bool = False
    seed: int = 0
    steps: int | None = None           # sampler steps for diffusion methods
    sampler: str | None = None         # ddim | ddpm (ancestral) for diffusion methods
    amp: bool = False                  # bf16 autocast while filling
    summary: str | None = None         # JSON summary path; default OUT/summary.json
    aligned: bool = False              # faces already cropped: no face detection
    dilate: int = 0                    # grow the hole by this many pixels before filling
    feather: int = 0                   # soft edge (pixels) inside the dilated hole
    ext: str = "same"                  # output extension: same | png | jpg | webp
    suffix: str = ""                   # added to each output's stem
    quality: int | None = None         # JPEG (default 95) and lossy WebP quality; None: lossless WebP
    max_pixels: int | None = 64_000_000  # refuse larger images from their header, before decoding


@dataclass(frozen=True)
class EvalConfig:
    data: str = "data128"
    masks: str = "center"
    methods: tuple[str, ...] = ("telea", "navier-stokes", "biharmonic")
    weights: tuple[str, ...] = ()      # weights files; each adds (or pins) its method
    report: str = "reports/eval"
    limit: int | None = None
    device: str = "auto"
    batch_size: int = 16
    sample_grid: int = 8               # images shown in the HTML grid
    steps: int | None = None           # sampler steps / optimisation iterations
    sampler: str | None = None         # ddim | ddpm (ancestral) for diffusion methods
    amp: bool = False                  # bf16 autocast while filling
    seed: int = 0
    framing: str = "aligned"           # or "shifted": each test face and hole rescaled and moved


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple[str, ...] = ("telea", "navier-stokes", "biharmonic")
    size: int = 128
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    device: str = "auto"
    repeat: int = 5
    warmup: int = 1
    pipeline_images: int = 32          # images for the whole-pipeline measurement
    pipeline_from: str | None = None   # photos for it (centre square at ``size``); None: synthetic
    out: str = "reports/bench.json"
    seed: int = 0
    weights: tuple[str, ...] = ()      # weights files; each adds (or pins) its method, as in eval
    # Speed/quality sweep (replaces the synthetic measurements when given): each setting is a
    # number of sampling steps / latent-search iterations, or "ddpm" (ancestral over all T).
    sweep: tuple[str, ...] = ()
    data: str = "data128"              # --sweep: prepared data folder whose test split is filled
    masks: str = "center"              # --sweep: stored mask kind in DATA/masks/
    limit: int = 256                   # --sweep: the first N test images
    batch_size: int = 32               # --sweep: images per filling batch
    amp: bool = False                  # bf16 autocast while filling (training steps with --train)
    train: bool = False                # training throughput of trainable methods instead
    train_masks: str = "center"        # --train: mask kind drawn on the device
    compile: bool = False              # --train: torch.compile the networks
    data_on: str = "device"            # --train: batches made on the device, or by DataLoader "workers"
    workers: int = 8                   # --train with data_on "workers"
    channels_last: bool | None = None  # --train: None = on CUDA


@dataclass(frozen=True)
class ReproduceConfig:
    papers: tuple[str, ...] = ("all",)  # facefill.papers keys, or "all"
    data_root: str = "data"            # prepared sets live (or are prepared) here
    data: tuple[tuple[str, str], ...] = ()  # (data set key or folder name, path) overrides
    shared: str | None = None          # raw data; default <repo>/../shared/data
    limit: int | None = None           # images per paper and mask kind; default: each paper's sample
    report: str = "reports/reproduce"
    results: str | None = None         # RESULTS.md whose generated section is rewritten; "" = none
    device: str = "auto"
    batch_size: int = 16
    amp: bool = False
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    method: str
    data: tuple[str, ...] = ("data128",)  # prepared sets (folders or packs), each PATH or PATH:WEIGHT
    size: int | None = None            # default: the data set's size
    masks: str = "center"              # a kind of data/masks.py, a comma list of them, full or mix
    epochs: int | None = None
    steps: int | None = None
    time_limit: float | None = None    # minutes of wall time; stop cleanly after
    batch_size: int = 64
    lr: float | None = None            # default: the method's paper value
    device: str = "auto"
    amp: bool = False
    ema: float | None = None           # EMA decay of the inference networks, e.g. 0.999
    ema_bn_batches: int = 50           # with ema: training batches that re-estimate the averaged networks'
                                       # BatchNorm statistics before each validation and checkpoint; 0: none
    workers: int = 2
    out: str = "runs/train"
    resume: bool = False
    seed: int = 0
    log_every: int = 20
    val_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 2
    val_images: int = 64
    export: str | None = None          # weights path to export at the end
    method_settings: tuple[tuple[str, object], ...] = ()  # --set values for the method
    data_on: str = "device"            # device: set held on the training device, batches made there;
                                       # workers: DataLoader workers on the CPU, masks drawn per image
    augment: bool = False              # random scale 0.8-1.25, shift and colour jitter (flips always)
    channels_last: bool | None = None  # None: on CUDA
    compile: bool = False              # torch.compile the method's networks
    part_mib: float | None = None      # write checkpoints in parts of at most this many MiB
    init_from: str | None = None       # weights file whose generator starts the run

    def __post_init__(self):
        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))


def parse_value(text: str):
    """``--set`` values: Python literals (1, 0.5, true, "x", (1, 2)); otherwise the raw string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_sets(items) -> dict:
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        values[key.strip().replace("-", "_")] = parse_value(raw)
    return values


def load_toml(path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(f"{path}: cannot read config ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: invalid TOML ({error})") from None


def build(cls, file_values: dict, set_values: dict, flags: dict):
    """Merge in order of precedence; keys the dataclass lacks go to ``extras``."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged, extras = {}, {}
    for source in (file_values, set_values, flags):
        for key, value in source.items():
            if value is None and key in flags and source is flags:
                continue  # an option the user did not give
            (merged if key in names else extras)[key] = tuple(value) if isinstance(value, list) else value
    return cls(**merged), extras


def config_dict(config) -> dict:
    """A config dataclass as plain values; ``None`` (a method without settings) as ``{}``."""
    return dataclasses.asdict(config) if config is not None else {}


def split_list(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


__all__ = [name for name in dir() if name[0].isupper() and name.endswith("Config")] + [
    "parse_sets", "parse_value", "load_toml", "build", "split_list", "config_dict", "field"]
