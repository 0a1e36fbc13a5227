"""two-stage-gan (Lin et al.): cascaded U-Net GANs linked by an LSTM, at tiny sizes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import facefill.methods.two_stage_gan  # noqa: F401  (registers the method)
from facefill.checkpoint import export_weights, load_weights
from facefill.methods.two_stage_gan import PairDiscriminator
from facefill.nn.lstm import LSTMCell
from facefill.registry import create_method
from batches import tiny_trainable, centre_batch, four_faces, hole_l1_before_and_after

TINY = {"base_channels": 8, "max_channels": 16, "fc_dim": 32, "disc_channels": 4, "disc_fc_dim": 16}


def tiny_method(size=32, **extra):
    return tiny_trainable("two-stage-gan", TINY, size, **extra)


def batch(size=32, count=4):
    return centre_batch(size, count)


def network_input(data):
    known = (data["image"] * 2 - 1) * (1 - data["mask"])
    return torch.cat([known, data["mask"]], 1)


def test_lstm_cell_matches_torch_lstm_cell():
    ours, reference = LSTMCell(5, 7), nn.LSTMCell(5, 7)
    ours.load_from_torch(reference)
    x, h, c = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    for got, want in zip(ours(x, (h, c)), reference(x, (h, c))):
        torch.testing.assert_close(got, want)
    zero_h, zero_c = ours(x)
    torch.testing.assert_close(zero_h, reference(x)[0])
    assert torch.all(zero_h.abs() < 1) and not torch.equal(zero_c, torch.zeros_like(zero_c))


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_shapes_through_every_stage(stages):
    method = tiny_method(stages=stages).eval()
    data = batch()
    outputs, states = method.generator.forward_stages(network_input(data))
    assert len(outputs) == len(states) == stages
    for output, (h, c) in zip(outputs, states):
        assert output.shape == data["image"].shape and output.abs().max() <= 1
        assert h.shape == c.shape == (4, TINY["fc_dim"])
    kernels = [stage.down[0][0].kernel_size for stage in method.generator.stages]
    assert kernels == [(5, 5)] + [(3, 3)] * (stages - 1)
    filled = method.inpaint(data["image"], data["mask"])
    known = data["mask"].expand_as(filled) == 0
    assert torch.equal(filled[known], data["image"][known])


@torch.no_grad()
def test_stage_two_starts_from_stage_one_lstm_state():
    method = tiny_method().eval()
    data = batch()
    outputs, states = method.generator.forward_stages(network_input(data))
    stage2 = method.generator.stages[1]
    completed = data["mask"] * outputs[0] + (1 - data["mask"]) * network_input(data)[:, :3]
    stage2_input = torch.cat([completed, data["mask"]], 1)
    torch.testing.assert_close(stage2(stage2_input, states[0])[0], outputs[1])
    h, c = states[0]
    for changed in ((h + 0.5, c), (h, c + 0.5), None):
        assert not torch.allclose(stage2(stage2_input, changed)[0], outputs[1], atol=1e-4)


@torch.no_grad()
def test_without_lstm_the_state_plays_no_part():
    method = tiny_method(lstm=False).eval()
    assert all(stage.lstm is None for stage in method.generator.stages)
    assert not any(isinstance(m, LSTMCell) for m in method.generator.modules())
    data = batch()
    outputs, states = method.generator.forward_stages(network_input(data))
    assert states == [None, None]
    stage2 = method.generator.stages[1]
    x = torch.randn(4, 4, 32, 32)
    state = (torch.randn(4, TINY["fc_dim"]), torch.randn(4, TINY["fc_dim"]))
    assert torch.equal(stage2(x, state)[0], stage2(x, None)[0])
    with_lstm = tiny_method()
    assert sum(p.numel() for p in with_lstm.generator.parameters()) > sum(p.numel() for p in method.generator.parameters())


@pytest.mark.parametrize("size, base, channels, side", [(128, 32, 512, 4), (32, 4, 64, 1), (16, 4, 64, 1)])
def test_discriminator_follows_table_one(size, base, channels, side):
    disc = PairDiscriminator(size, base=base, fc_dim=16)
    convs = [m for m in disc.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10 and convs[0].in_channels == 6 and convs[-1].out_channels == channels
    assert [c.stride[0] for c in convs] == [1, 2] * 5 and all(c.kernel_size == (3, 3) for c in convs)
    assert disc.head[1].in_features == channels * side * side
    images = torch.rand(2, 3, size, size)
    assert disc(images, images).shape == (2, 1)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_training_step_updates_every_stage_and_discriminator(stages):
    method = tiny_method(stages=stages).train()
    before = {k: v.clone() for k, v in method.state_dict().items() if v.dtype.is_floating_point}
    logs = method.training_step(batch(), 0)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
    assert {f"content{stages}", f"g_adv{stages}", f"tv{stages}", "d_loss"} <= set(logs)
    after = method.state_dict()
    for prefix in [f"generator.stages.{i}." for i in range(stages)] + [f"discriminators.{i}." for i in range(stages)] \
            + [f"generator.stages.{i}.lstm." for i in range(stages)]:
        keys = [k for k in before if k.startswith(prefix) and "weight" in k]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), f"{prefix} did not change"


def test_zero_adversarial_weight_trains_without_discriminators():
    method = tiny_method(alpha=0.0)
    assert not hasattr(method, "discriminators") and set(method.optimizers) == {"generator"}
    assert "d_loss" not in method.training_step(batch(), 0)
    with pytest.raises(ValueError, match="stages"):
        create_method("two-stage-gan", stages=4)
    with pytest.raises(ValueError, match="size"):
        create_method("two-stage-gan", size=48)


def test_export_and_load_round_trip(tmp_path):
    method = tiny_method(stages=3)
    method.training_step(batch(), 0)
    method.eval()
    path = tmp_path / "two-stage-gan-32.pt"
    export_weights(method, path, {"size": 32})
    payload = torch.load(path, weights_only=True)
    assert set(payload["state_dict"]) == {"generator"}
    assert not any("discriminators" in key for key in payload["state_dict"]["generator"])
    assert payload["config"]["stages"] == 3 and payload["config"]["lstm"] is True
    loaded, reloaded = load_weights(path), load_weights(path)
    assert loaded.config == method.config and len(loaded.generator.stages) == 3
    for key, value in method.generator.state_dict().items():  # float16 storage, float32 model
        assert torch.equal(loaded.generator.state_dict()[key], value.half().to(value.dtype)), key
    data = batch()
    filled = loaded.inpaint(data["image"], data["mask"])
    assert torch.equal(filled, reloaded.inpaint(data["image"], data["mask"]))
    assert torch.allclose(method.inpaint(data["image"], data["mask"]), filled, atol=2e-2)


def test_trains_and_exports_through_the_engine(tiny_dataset, tmp_path):
    from facefill.config import TrainConfig
    from facefill.engine.train import export_checkpoint, train

    settings = tuple({**TINY, "stages": 2}.items())
    summary = train(TrainConfig(method="two-stage-gan", data=str(tiny_dataset), out=str(tmp_path / "run"), steps=2,
                                batch_size=2, workers=0, val_every=2, ckpt_every=1000, log_every=1, ema=0.9,
                                method_settings=settings))
    export_checkpoint(summary["checkpoint"], tmp_path / "w.pt")
    card = json.loads((tmp_path / "w.json").read_text())
    assert card["steps"] == 2 and card["method"] == "two-stage-gan" and card["config"]["stages"] == 2
    loaded = load_weights(tmp_path / "w.pt")
    data = batch()
    assert loaded.inpaint(data["image"], data["mask"]).shape == data["image"].shape


def test_overfits_four_faces(tiny_dataset):
    torch.manual_seed(0)
    data = four_faces(tiny_dataset)
    start, end = hole_l1_before_and_after(tiny_method(lr=2e-3).train(), data)
    assert end < 0.7 * start
