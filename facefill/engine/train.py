"""The training loop every trainable method shares: devices, bf16 autocast, EMA,
atomic checkpoints with resume, validation, JSON Lines logs, sample grids, torch.distributed."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from facefill.checkpoint import (WeightsError, check_payload, config_from_dict, export_weights,
                                 load_checkpoint, method_from_payload, remove_parts, save_checkpoint,
                                 stored_state)
from facefill.config import TrainConfig, config_dict
from facefill.data.augment import DeviceBatches, check_mask_kind, finish_loader_batch
from facefill.data.dataset import EpochSampler, FaceDataset, load_training_images, parse_data_spec, read_manifest
from facefill.devices import resolve_device
from facefill.fileio import write_image_atomic, write_json_atomic
from facefill.inference.options import FillOptions
from facefill.nn.blocks import recalibrate_batch_norms
from facefill.registry import create_method

log = logging.getLogger(__name__)
CKPT_PATTERN = re.compile(r"ckpt-(\d+)\.pt$")
DATA_ON = ("device", "workers")


# ---------------------------------------------------------------- distributed
def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): gloo on CPU, NCCL on CUDA; returns rank, world, device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world == 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return rank, world, device


def broadcast_parameters(module: torch.nn.Module) -> None:
    if dist.is_initialized():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, 0)


# ---------------------------------------------------------------- RNG state
def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of the inference networks' weights."""

    def __init__(self, modules: dict, decay: float):
        self.decay = decay
        self.modules = {name: copy.deepcopy(m).eval().requires_grad_(False) for name, m in modules.items()}

    def decay_at(self, step: int) -> float:
        """Warm-up as in timm/TF: early averages would otherwise be dominated by the random init."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, modules: dict, step: int) -> None:
        decay = self.decay_at(step)
        for name, module in modules.items():
            shadow = self.modules[name]
            for ema_p, p in zip(shadow.parameters(), module.parameters()):
                ema_p.lerp_(p, 1 - decay)
            for ema_b, b in zip(shadow.buffers(), module.buffers()):
                ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {name: m.state_dict() for name, m in self.modules.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state[name])


# ---------------------------------------------------------------- run folder
class RunFolder:
    def __init__(self, path, keep_last: int, part_mib: float | None = None):
        self.path = Path(path)
        self.keep_last = keep_last
        self.part_mib = part_mib
        self.samples = self.path / "samples"

    def checkpoints(self) -> list[Path]:
        found = [(int(m.group(1)), p) for p in self.path.glob("ckpt-*.pt") if (m := CKPT_PATTERN.search(p.name))]
        return [p for _, p in sorted(found)]

    def last(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def newest_readable(self, map_location="cpu", report: bool = True) -> tuple[Path | None, dict | None]:
        """The newest checkpoint that loads; with ``report``, each unreadable newer one is named in a
        warning, and a run left without one (a kill during its first write) is said to start over."""
        for path in reversed(self.checkpoints()):
            try:
                return path, load_checkpoint(path, map_location=map_location)
            except WeightsError as error:
                if report:
                    log.warning("%s; trying the previous checkpoint", error)
        if report:
            self._report_no_checkpoint()
        return None, None

    def _report_no_checkpoint(self) -> None:
        unfinished = sorted(p.name for p in self.path.glob(".ckpt-*.tmp*"))
        if unfinished:
            log.warning("%s: no complete checkpoint to resume from (an interrupted checkpoint write left %s); "
                        "starting again from step 0", self.path, ", ".join(unfinished))
            for name in unfinished:
                (self.path / name).unlink(missing_ok=True)
        elif self.path.is_dir() and (self.path / "log.jsonl").exists():
            log.warning("%s: no checkpoint to resume from; starting again from step 0", self.path)

    def save(self, state: dict, step: int) -> Path:
        path = self.path / f"ckpt-{step:07d}.pt"
        save_checkpoint(path, state, self.part_mib)
        for old in self.checkpoints()[:-self.keep_last]:
            old.unlink(missing_ok=True)
            remove_parts(old)
        return path

    def log(self, record: dict) -> None:
        with open(self.path / "log.jsonl", "a") as stream:
            stream.write(json.dumps(record) + "\n")


def check_train_config(config: TrainConfig) -> None:
    """Bad numbers and names as one-line errors before anything is loaded or written."""
    at_least = {"batch_size": 1, "log_every": 1, "val_every": 1, "ckpt_every": 1, "keep_last": 1,
                "workers": 0, "val_images": 0}
    for name, least in at_least.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer of at least {least}, got {value!r}")
    for name in ("steps", "epochs"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"--{name} must be a positive integer, got {value!r}")
    for name in ("time_limit", "part_mib", "lr"):
        value = getattr(config, name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
    if config.ema is not None and not 0 < config.ema < 1:
        raise ValueError(f"--ema must lie in (0, 1), got {config.ema!r}")
    if config.data_on not in DATA_ON:
        raise ValueError(f"--data-on must be one of {', '.join(DATA_ON)}, got {config.data_on!r}")
    if not config.data:
        raise ValueError("--data: give at least one prepared data folder")
    for spec in config.data:
        parse_data_spec(spec)
    check_mask_kind(config.masks)


def stored_settings(out) -> dict:
    """The train settings (``method`` and ``method_settings`` included) of the run folder's newest
    readable checkpoint; ``{}`` when it has none. ``--resume`` starts from these."""
    path, state = RunFolder(out, keep_last=1).newest_readable(report=False)
    if state is None:
        return {}
    settings = dict(state.get("train_config") or {})
    settings["method"] = state.get("method", settings.get("method"))
    settings["method_settings"] = {k: tuple(v) if isinstance(v, list) else v
                                   for k, v in dict(settings.get("method_settings") or ()).items()}
    return settings


def load_moments(optimizer, saved: dict) -> None:
    """Load an optimiser's saved state but keep this run's hyperparameters: PyTorch's
    ``load_state_dict`` also restores the saved learning rate, which would silently undo
    ``--resume --lr`` (or ``--set disc_lr=...``). Unchanged settings resume exactly."""
    configured = [{key: value for key, value in group.items() if key != "params"}
                  for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)


# ---------------------------------------------------------------- the loop
class Trainer:
    def __init__(self, config: TrainConfig):
        check_train_config(config)
        self.config = config
        self.rank, self.world, self.device = init_distributed(config.device)
        self.is_main = self.rank == 0
        seed_everything(config.seed + self.rank)
        specs = [parse_data_spec(spec)[0] for spec in config.data]
        self.size = config.size or read_manifest(specs[0]).get("size")
        if not self.size:
            raise ValueError(f"{specs[0]}: manifest.json has no size; pass --size")
        settings = dict(config.method_settings)
        settings["size"] = self.size
        if config.lr is not None:
            settings["lr"] = config.lr
        self.method = create_method(config.method, **settings).to(self.device)
        if config.init_from:
            self._init_from(config.init_from)
        self.channels_last = (self.device.type == "cuda") if config.channels_last is None else config.channels_last
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        broadcast_parameters(self.method)
        self.optimizers = self.method.configure_optimizers()
        if config.compile:
            for module in self.method.children():
                module.compile()
        self.ema = EMA(self.method.inference_modules(), config.ema) if config.ema else None
        self.run = RunFolder(config.out, config.keep_last, config.part_mib)
        self.step, self.epoch, self.best_psnr, self.seconds = 0, 0, -math.inf, 0.0
        self.calibrated_at = None  # the step whose EMA BatchNorm statistics were last re-estimated
        self._build_data()

    def _init_from(self, weights) -> None:
        """A shipped weights file's inference networks (the generator), or a run checkpoint's
        networks (its discriminator too, and its generator's EMA where it has one), as the
        starting point; the optimisers start afresh either way."""
        payload = load_checkpoint(weights)
        if isinstance(payload, dict) and payload.get("kind") == "training-checkpoint":
            # keeping the trained discriminator keeps a fine-tune sharp: a fresh one blurred a
            # warm-started ffc-unet-gan for hundreds of steps (weights/RESULTS.md)
            self._check_method(weights, payload)
            self._load_or_refuse(weights, self._load_run_networks, payload)
            return
        check_payload(payload, weights)
        if payload["method"] != self.method.name:
            raise WeightsError(f"{weights}: holds {payload.get('method')!r} weights, not {self.method.name!r}")
        self._load_or_refuse(weights, self.method.load_export_state, stored_state(payload))

    def _load_run_networks(self, state: dict) -> None:
        self.method.load_state_dict(state["model"])
        if state.get("ema"):
            self.method.load_export_state(state["ema"])

    def _check_method(self, path, checkpoint: dict) -> None:
        if checkpoint.get("method") != self.method.name:
            raise WeightsError(f"{path}: a {checkpoint.get('method')!r} checkpoint, not {self.method.name!r}")

    def _load_or_refuse(self, path, load, state, hint: str = "") -> None:
        """``load(state)``, or a one-line WeightsError naming ``path`` when the shapes do not fit."""
        try:
            load(state)
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0]
            raise WeightsError(f"{path}: does not fit this {self.method.name} configuration ({first}){hint}") from None

    def _build_data(self):
        config = self.config
        data = load_training_images(config.data, self.size, config.val_images)
        self.data_weights = torch.as_tensor(data.weights)
        self.per_rank = max(1, config.batch_size // self.world)
        val_kind = "center" if config.masks == "mix" else config.masks
        self.val_set = FaceDataset(data.val_images, self.size, val_kind, flip=False, fixed_masks=True,
                                   seed=config.seed) if len(data.val_images) else None
        self.steps_per_epoch = len(data.images) // (self.per_rank * self.world)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{', '.join(config.data)}: {len(data.images)} training images is fewer than one "
                             f"batch of {self.per_rank}; lower --batch-size")
        # frame and colour augmentation run on the device in both paths, from this generator
        self.device_batches = DeviceBatches(data, self.device, config.masks, self.per_rank, config.seed, self.rank,
                                            self.world, frame=config.augment, colour=config.augment,
                                            channels_last=self.channels_last) if config.data_on == "device" else None
        if config.data_on == "workers":
            self.train_set = FaceDataset(data.images, self.size, config.masks, seed=config.seed,
                                         parsing=data.parsing, parsing_index=data.parsing_index)
            self.sampler = EpochSampler(data.weights, config.seed, self.rank, self.world, self.per_rank)
            self.loader = DataLoader(self.train_set, batch_size=self.per_rank, sampler=self.sampler, drop_last=True,
                                     num_workers=config.workers, pin_memory=self.device.type == "cuda",
                                     persistent_workers=False)
            self.generator = torch.Generator(device=self.device).manual_seed(config.seed + self.rank)
        self.total_steps = config.steps or (config.epochs or 1) * self.steps_per_epoch
        self.data_info = {"data": ", ".join(config.data), "sets": data.sources,
                          "train_images": len(data.images), "val_images": len(data.val_images),
                          "source": ", ".join(str(read_manifest(s["data"]).get("source")) for s in data.sources),
                          "split": "train splits (the first set's last val_images for validation); "
                                   "test splits held out"}

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        return {"format_version": 1, "kind": "training-checkpoint", "method": self.method.name,
                "config": config_dict(self.method.config), "train_config": config_dict(self.config),
                "model": self.method.state_dict(),
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "ema": self.ema.state_dict() if self.ema else None,
                "step": self.step, "epoch": self.epoch, "best_psnr": self.best_psnr,
                "train_seconds": self.seconds, "rng": rng_state(), "batches": self._batch_state(),
                "data": self.data_info, "device": _device_name(self.device), "command": _command_line(),
                "total_steps": self.total_steps}

    def _batch_state(self) -> dict:
        if self.device_batches is not None:
            return self.device_batches.state_dict()
        return {"generator": self.generator.get_state(), "device": self.device.type}

    def resume(self) -> bool:
        path, state = self.run.newest_readable(map_location=self.device)
        if state is None:
            return False
        self._check_method(path, state)
        self._load_or_refuse(path, self.method.load_state_dict, state["model"],
                             hint="; resume without --set to use the checkpoint's settings")
        for name, optimizer in self.optimizers.items():
            load_moments(optimizer, state["optimizers"][name])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.best_psnr, self.seconds = state["best_psnr"], state["train_seconds"]
        set_rng_state(state["rng"])
        self._load_batch_state(state.get("batches") or {}, path)
        log.info("resumed from %s at step %d", path, self.step)
        return True

    def _load_batch_state(self, state: dict, path) -> None:
        if self.device_batches is not None:
            same = self.device_batches.load_state_dict(state, self.step)
        elif state.get("device") == self.device.type:
            self.generator.set_state(state["generator"])
            same = True
        else:
            same = not state
        if not same:
            log.warning("%s: saved on a %s device; masks and augmentation continue from a new seed here",
                        path, state.get("device"))

    # ------------------------------------------------------------ loop
    def batches(self):
        """Endless batches; the order depends only on (seed, epoch) and each item's randomness on
        its place in the epoch, so a resumed run continues exactly, with loader workers too."""
        if self.device_batches is not None:
            while True:
                yield self.device_batches.batch(self.step)
        while True:
            self.epoch = self.step // self.steps_per_epoch
            self.sampler.epoch = self.epoch
            self.sampler.start = (self.step - self.epoch * self.steps_per_epoch) * self.per_rank
            for batch in self.loader:
                yield finish_loader_batch(batch, self.device, self.generator, self.config.augment,
                                          self.channels_last)

    def fit(self) -> dict:
        config = self.config
        if config.resume:
            self.resume()
        if self.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run.path / "config.json",
                              {"train": config_dict(self.config), "method": config_dict(self.method.config)})
        progress = _progress(self.total_steps, self.step, enabled=self.is_main)
        start, seconds_before = time.time(), self.seconds
        self.method.train()
        batches = self.batches()
        stopped_early = False
        while self.step < self.total_steps:
            batch = next(batches)
            with self.autocast():
                logs = self.method.training_step(batch, self.step)
            self.step += 1
            self.epoch = self.step // self.steps_per_epoch
            if self.ema:
                self.ema.update(self.method.inference_modules(), self.step)
            self.seconds = seconds_before + time.time() - start
            progress.update(1)
            if self.is_main and (self.step % config.log_every == 0 or self.step == 1):  # only logged steps wait
                values = host_logs(logs)
                progress.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
                self.run.log({"step": self.step, "epoch": self.epoch, "seconds": round(self.seconds, 2), **values})
            due_validation = self.val_set is not None and self.step % config.val_every == 0
            due_checkpoint = self.step % config.ckpt_every == 0
            if due_validation or due_checkpoint:
                self.recalibrate_ema()
            if due_validation:
                self.validate()
            if due_checkpoint:
                self.checkpoint()
            if config.time_limit and time.time() - start > config.time_limit * 60:
                stopped_early = self.step < self.total_steps
                break
        progress.close()
        self.recalibrate_ema()
        if self.val_set is not None and self.step % config.val_every != 0:
            self.validate()
        final = self.checkpoint()
        summary = {"run": str(self.run.path), "checkpoint": str(final), "steps": self.step,
                   "epochs": round(self.step / self.steps_per_epoch, 2), "train_seconds": round(self.seconds, 1),
                   "best_val_psnr": self.best_psnr, "stopped_by_time_limit": stopped_early}
        if self.is_main:
            _plot_curves(self.run.path)
            if config.export:
                summary["weights"] = config.export
                export_checkpoint(final, config.export)
        return summary

    def autocast(self):
        """bf16 autocast with ``amp``: on CUDA, and on CPUs with bf16 instructions (about 2.5x faster
        convolutions on AVX512-BF16)."""
        if self.config.amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def ema_weights(self):
        """The method's inference networks holding the EMA weights, restored afterwards."""
        modules = self.method.inference_modules()
        backup = {name: copy.deepcopy(module.state_dict()) for name, module in modules.items()}
        for name, module in modules.items():
            module.load_state_dict(self.ema.modules[name].state_dict())
        try:
            yield modules
        finally:
            for name, module in modules.items():
                module.load_state_dict(backup[name])

    def recalibrate_ema(self) -> None:
        """Re-estimate the EMA networks' BatchNorm statistics on ``ema_bn_batches`` training batches:
        the statistics the EMA copies each step were gathered by the live weights, and averaged weights
        filled with them drift in colour and brightness (1 dB of PSNR for ffc-unet-gan on a CPU run)."""
        forward = getattr(self.method, "calibration_forward", None)
        if not (self.ema and self.config.ema_bn_batches and forward) or self.calibrated_at == self.step:
            return
        self.method.eval()
        with self.ema_weights() as modules, self.autocast():
            recalibrate_batch_norms(modules.values(), forward, self.calibration_batches(self.config.ema_bn_batches))
            for name, module in modules.items():
                self.ema.modules[name].load_state_dict(module.state_dict())
        self.method.train()
        self.calibrated_at = self.step

    def calibration_batches(self, count: int):
        """``count`` training batches drawn by the sets' weights from generators of their own, seeded
        by the step, so that the training batches stay the same with or without calibration."""
        seed = self.config.seed * 1_000_003 + self.step
        picker = torch.Generator().manual_seed(seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for number in range(count):
            index = torch.multinomial(self.data_weights, self.per_rank, replacement=True, generator=picker)
            if self.device_batches is not None:
                yield self.device_batches.make(index.to(self.device), generator)
                continue
            items = [self.train_set[(int(i), [self.config.seed, self.step, number, k])] for k, i in enumerate(index)]
            yield finish_loader_batch(default_collate(items), self.device, generator, self.config.augment, self.channels_last)

    def checkpoint(self) -> Path:
        path = self.run.path / f"ckpt-{self.step:07d}.pt"
        if self.is_main:
            path = self.run.save(self.state(), self.step)
        if dist.is_initialized():
            dist.barrier()
        return path

    @torch.no_grad()
    def validate(self) -> float:
        """PSNR (whole image, composited) and hole L1 on the held-out slice; the best is kept."""
        self.method.eval()
        psnrs, l1s, first = [], [], None
        with self.ema_weights() if self.ema else contextlib.nullcontext():  # score what would be exported
            for start in range(0, len(self.val_set), 32):  # no DataLoader: it would draw from the global RNG
                items = [self.val_set[i] for i in range(start, min(start + 32, len(self.val_set)))]
                image = torch.stack([item["image"] for item in items]).to(self.device)
                mask = torch.stack([item["mask"] for item in items]).to(self.device)
                output = self.method.inpaint(image, mask, FillOptions(amp=self.config.amp))  # training's autocast
                mse = (output - image).pow(2).flatten(1).mean(1).clamp_min(1e-10)
                psnrs += (10 * torch.log10(1 / mse)).tolist()
                l1s += ((output - image).abs() * mask).flatten(1).sum(1).div(
                    mask.flatten(1).sum(1).clamp_min(1) * 3).tolist()
                if first is None:
                    first = (image[:8], mask[:8], output[:8])
        self.method.train()
        psnr = float(np.mean(psnrs))
        if self.is_main:
            self.run.log({"step": self.step, "val_psnr": psnr, "val_l1_hole": float(np.mean(l1s))})
            _save_samples(self.run.samples / f"step-{self.step:07d}.png", *first)
            if psnr > self.best_psnr:
                self.best_psnr = psnr
                save_checkpoint(self.run.path / "best.pt", self.state(), self.config.part_mib)
        return psnr


def host_logs(logs: dict) -> dict[str, float]:
    """A step's logs (see ``TrainableInpainter.training_step``) as Python floats, in their order: the
    device tensors stacked and copied to the host in one transfer, one synchronisation."""
    names = [name for name, value in logs.items() if torch.is_tensor(value)]
    copied = torch.stack([logs[name].detach().float().reshape(()) for name in names]).tolist() if names else []
    floats = dict(zip(names, copied))
    return {name: floats[name] if name in floats else float(value) for name, value in logs.items()}


def train(config: TrainConfig) -> dict:
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------- export
def export_checkpoint(checkpoint, weights, data: str | None = None, mask_kinds=("center",), notes=(),
                      amp: bool = False, settings: dict | None = None, storage: str | None = None) -> dict:
    """Inference-only weights (EMA when trained with it) and the JSON card; with ``data``, the
    test-split metrics from ``facefill eval`` are measured (bf16 autocast with ``amp``) and recorded
    in the card. ``settings`` replace method settings in the stored config (inference ones, such
    as a sampler's ``eta`` chosen on validation images); the card records them. ``storage``:
    float16 or int8 (checkpoint.STORAGES); by default float16, or a weights file's own."""
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint}: holds a {type(state).__name__}, not a facefill training "
                         f"checkpoint or weights file")
    settings = dict(settings or {})
    if state.get("kind") != "training-checkpoint" and "state_dict" in state:
        payload = {**state, "config": _replaced_settings(state["method"], state.get("config", {}), settings)}
        return recard_weights(method_from_payload(payload, checkpoint), weights, data, mask_kinds, notes, amp,
                              settings, storage)
    if state.get("kind") != "training-checkpoint":
        raise ValueError(f"{checkpoint}: not a facefill training checkpoint or weights file")
    config = _replaced_settings(state["method"], state["config"], settings)
    method = create_method(state["method"], config_from_dict(state["method"], config))
    method.load_state_dict(state["model"])
    if state.get("ema"):
        method.load_export_state(state["ema"])
    train_config = state["train_config"]
    parameters = sum(p.numel() for m in method.inference_modules().values() for p in m.parameters())
    meta = {"size": method.size, "value_range": "[0, 1] at the interface, [-1, 1] inside",
            "mask_convention": "1 = hole (mask files: white = hole)",
            "data": state.get("data"), "masks_in_training": train_config["masks"],
            "steps": state["step"], "epochs": round(state["step"] / max(1, _steps_per_epoch(state)), 2),
            "batch_size": train_config["batch_size"], "ema": train_config["ema"],
            "command": state.get("command"), "device": state.get("device"),
            "wall_time_minutes": round(state["train_seconds"] / 60, 1),
            "best_val_psnr": state.get("best_psnr"), "parameters": parameters, "metrics": {},
            "notes": list(notes), **({"export_settings": settings} if settings else {})}
    export_with_metrics(method, weights, meta, data, mask_kinds, amp, storage or "float16")
    return meta


def recard_weights(method, weights, data=None, mask_kinds=("center",), notes=(), amp: bool = False,
                   settings: dict | None = None, storage: str | None = None) -> dict:
    """Write a method loaded from exported weights (e.g. trained on another machine) to ``weights``
    keeping its training record; with ``data``, its metrics are measured again here and replace
    the old ones."""
    storage = storage or method.weights_meta.get("storage", "float16")
    meta = {key: value for key, value in method.weights_meta.items()
            if key not in ("facefill_version", "storage")}  # weights_payload writes these afresh
    meta["notes"] = list(meta.get("notes", [])) + list(notes)
    if settings:
        meta["export_settings"] = {**meta.get("export_settings", {}), **settings}
    export_with_metrics(method, weights, meta, data, mask_kinds, amp, storage)
    return meta


def export_with_metrics(method, weights, meta, data, mask_kinds, amp: bool = False,
                        storage: str = "float16") -> None:
    """Write the weights and card; with ``data``, measure the test metrics (of the weights as
    stored) and write them in."""
    export_weights(method, weights, meta, storage)
    if data:
        meta["metrics"] = evaluate_weights(weights, data, mask_kinds, amp)
        meta["eval_command"] = (f"facefill eval --data {data} --masks <kind> --methods '' --weights {weights}"
                                + (" --amp" if amp else ""))
        export_weights(method, weights, meta, storage)


def evaluate_weights(weights, data, mask_kinds, amp: bool = False) -> dict:
    from facefill.config import EvalConfig
    from facefill.engine.evaluate import run_eval

    metrics = {}
    for kind in mask_kinds:
        if not (Path(data) / "masks" / kind).is_dir():
            continue
        report = Path("reports") / f"eval-{Path(weights).stem}-{kind}"
        result = run_eval(EvalConfig(data=str(data), masks=kind, methods=(), weights=(str(weights),),
                                     report=str(report), amp=amp))
        (name, entry), = result["methods"].items()
        means = {k: round(v, 4) if math.isfinite(v) else None for k, v in entry["means"].items()}  # JSON has no NaN
        metrics[kind] = {**means, "count": result["count"],
                         "data": str(data), "split": "test", **({"amp": "bf16"} if amp else {})}
    return metrics


def _replaced_settings(method: str, stored: dict, settings: dict) -> dict:
    """The stored config with ``settings`` in place; a key the method does not have is an error."""
    from facefill.registry import get_method_class

    known = {f.name for f in dataclasses.fields(get_method_class(method).config_class)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{method} has no setting(s) {', '.join(unknown)}")
    return {**stored, **settings}


def _steps_per_epoch(state) -> int:
    data = state.get("data") or {}
    batch = state["train_config"]["batch_size"]
    return max(1, (data.get("train_images") or batch) // batch)


# ---------------------------------------------------------------- helpers
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _command_line() -> str:
    return " ".join(["facefill"] + sys.argv[1:]) if sys.argv and "facefill" in sys.argv[0] else " ".join(sys.argv)


def _progress(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                mininterval=2.0, desc="train")


def _save_samples(path, image, mask, output):
    """Rows: masked input (hole grey), fill, original."""
    from PIL import Image
    from torchvision.utils import make_grid

    masked = image * (1 - mask) + 0.5 * mask
    grid = make_grid(torch.cat([masked, output, image]).float().cpu(), nrow=len(image), padding=2)
    array = grid.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    write_image_atomic(path, Image.fromarray(array))


def _plot_curves(run_path: Path) -> None:
    try:
        from facefill.report.plots import line_plot
    except ImportError:
        return
    records = [json.loads(line) for line in (run_path / "log.jsonl").read_text().splitlines() if line.strip()]
    losses = {key: [(r["step"], r[key]) for r in records if key in r]
              for key in ("loss", "rec", "d_loss", "g_adv", "wasserstein")}
    losses = {k: v for k, v in losses.items() if v}
    if losses:
        line_plot(losses, run_path / "losses.png", "training losses", "step", "loss")
    val = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
    if val:
        line_plot({"val PSNR": val}, run_path / "val_psnr.png", "validation PSNR", "step", "dB")

