"""No host synchronisation inside a training step: ``training_step`` returns its logs as detached
tensors and never moves a device value to the host; the trainer converts them once per logged step."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import facefill
from facefill.config import TrainConfig
from facefill.engine import train as train_module
from facefill.engine.train import host_logs, train
from facefill.registry import get_method_class, list_methods
from batches import centre_batch, tiny_trainable

PACKAGE = Path(facefill.__file__).parent
# Every trainable method at the smallest size its tests use, with the settings that reach every
# branch of its step (glcic: all three phases over steps 0, 1, 2; ffc-unet-gan: R1 at step 0).
TINY = {
    "autoencoder": (32, {"base_channels": 8, "growth": 4, "max_channels": 16}),
    "context-encoder": (32, {"base_channels": 8, "disc_channels": 8}),
    "dense-gan": (32, {"base_channels": 8, "growth": 4, "max_channels": 16, "disc_channels": 8}),
    "ddpm-ffc": (16, {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (8,),
                      "num_heads": 2, "ffc_blocks": 1, "timesteps": 20, "sample_steps": 3}),
    "ffc-unet-gan": (32, {"base_channels": 4, "max_channels": 16, "ffc_blocks": 1, "growth": 2, "refine_channels": 4,
                          "refine_blocks": 1, "disc_channels": 4, "disc_depth": 2, "stages": 2, "r1_every": 2}),
    "glcic": (16, {"base_channels": 4, "disc_channels": 4, "disc_features": 16, "phase_steps": (1, 1)}),
    "two-stage-gan": (32, {"base_channels": 8, "max_channels": 16, "fc_dim": 32, "disc_channels": 4,
                           "disc_fc_dim": 16}),
    "wgan": (16, {"gen_channels": 8, "critic_channels": 8, "n_critic": 2}),
}
VARIANTS = [(name, {}) for name in sorted(TINY)] + [
    ("wgan", {"penalty": "clip"}), ("wgan", {"critic_batches": "split"}), ("ddpm-ffc", {"hole_loss": False})]
VARIANT_IDS = ["-".join([name, *map(str, extra.values())]) for name, extra in VARIANTS]
# What reads a device value on the host: each waits for the device's queued work.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__index__", "__bool__")


def called_from_facefill(depth: int = 2) -> bool:
    return Path(sys._getframe(depth).f_code.co_filename).resolve().is_relative_to(PACKAGE)


@pytest.fixture
def refuse_host_reads(monkeypatch):
    """Tensor reads to the host made by facefill's own code raise (torch's internals, such as the
    optimisers' CPU step counters, may read their host tensors)."""
    def refusing(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if called_from_facefill():
                raise AssertionError(f"Tensor.{name} called inside a training step")
            return original(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refusing(name))


def test_every_trainable_method_is_checked():
    assert {name for name in list_methods() if get_method_class(name).trainable} == set(TINY)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=VARIANT_IDS)
def test_training_step_reads_nothing_back_and_logs_detached_scalars(name, extra, refuse_host_reads):
    size, settings = TINY[name]
    torch.manual_seed(0)
    method = tiny_trainable(name, {**settings, **extra}, size).train()
    data = centre_batch(size, 4)
    for step in range(3):
        logs = method.training_step(data, step)
        tensors = {key: value for key, value in logs.items() if torch.is_tensor(value)}
        assert "loss" in tensors or "d_loss" in tensors
        for key, value in tensors.items():
            assert value.dim() == 0 and not value.requires_grad and value.grad_fn is None, key
        assert all(isinstance(value, (int, float)) for key, value in logs.items() if key not in tensors)


def test_the_detector_catches_a_read_in_facefill_code(refuse_host_reads, monkeypatch):
    method = tiny_trainable("autoencoder", TINY["autoencoder"][1], 32).train()
    step = method.training_step

    def reading_step(batch, number):  # as the steps read their losses before
        return {key: value.item() for key, value in step(batch, number).items()}

    monkeypatch.setattr(method, "training_step", reading_step)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", Path(__file__).parent)  # this file plays facefill
    with pytest.raises(AssertionError, match="Tensor.item"):
        method.training_step(centre_batch(32, 2), 0)


def test_host_logs_keeps_order_and_plain_numbers():
    logs = {"d_loss": torch.tensor(0.25), "lr": 1e-4, "rec": torch.tensor(2.0, dtype=torch.bfloat16), "phase": 3}
    values = host_logs(logs)
    assert list(values) == ["d_loss", "lr", "rec", "phase"]
    assert values == {"d_loss": 0.25, "lr": 1e-4, "rec": 2.0, "phase": 3.0}
    assert all(type(value) is float for value in values.values())
    assert host_logs({"lr": 0.5}) == {"lr": 0.5}


def test_trainer_reads_the_logs_once_per_logged_step_only(tiny_dataset, tmp_path, monkeypatch):
    reads = []
    loop = Path(train_module.__file__).resolve()

    def watching(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if Path(sys._getframe(1).f_code.co_filename).resolve() == loop:
                reads.append((name, tuple(self.shape)))
            return original(self, *args, **kwargs)
        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, watching(name))
    _, settings = TINY["dense-gan"]
    config = TrainConfig(method="dense-gan", data=str(tiny_dataset), out=str(tmp_path / "run"), batch_size=2,
                         workers=0, steps=5, log_every=2, val_images=0, ckpt_every=1000,
                         method_settings=tuple(settings.items()))
    train(config)
    # steps 1, 2 and 4: one stacked copy of (d_loss, rec, g_adv, tv, loss) each, nothing else
    assert reads == [("tolist", (5,))] * 3
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 4]
    for row in rows:
        assert {"d_loss", "rec", "g_adv", "tv", "loss"} <= set(row)
        assert all(type(row[key]) is float for key in ("d_loss", "rec", "g_adv", "tv", "loss"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's sync debug mode sees real syncs")
@pytest.mark.parametrize("name, extra", VARIANTS, ids=VARIANT_IDS)
def test_training_step_never_synchronises_on_cuda(name, extra):
    size, settings = TINY[name]
    method = tiny_trainable(name, {**settings, **extra}, size).to("cuda").train()
    method.configure_optimizers()  # on CUDA: the fused kernels
    data = {key: value.cuda() for key, value in centre_batch(size, 4).items()}
    method.training_step(data, 0)  # first step: optimiser state and per-device constants are made once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 3):
            method.training_step(data, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
