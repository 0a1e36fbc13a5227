"""wgan: WGAN-GP prior training and Yeh et al.'s latent-optimisation inpainting, at tiny sizes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import facefill.methods.wgan  # noqa: F401  (registers the method)
from facefill.checkpoint import half_precision, load_weights
from facefill.inference.options import FillOptions
from facefill.config import TrainConfig
from facefill.engine.train import export_checkpoint, train
from facefill.methods.wgan import context_weights, gradient_penalty
from facefill.registry import create_method
from batches import tiny_trainable, centre_batch

TINY = {"gen_channels": 8, "critic_channels": 8, "iterations": 10, "restarts": 2}


def tiny_wgan(size=16, **extra):
    return tiny_trainable("wgan", TINY, size, **extra)


def batch(size=16, count=4):
    return centre_batch(size, count)


class LinearCritic(nn.Module):
    """D(x) = <w, x - mean(x)> with ||w|| = ``slope``: ``slope``-Lipschitz in x, gradient norm
    exactly ``slope`` everywhere (w is mean-free, so subtracting the mean changes nothing)."""

    def __init__(self, shape, slope):
        super().__init__()
        weight = torch.randn(shape)
        weight -= weight.mean()
        self.weight = nn.Parameter(weight * slope / weight.norm())
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return ((x - x.mean(dim=(1, 2, 3), keepdim=True)) * self.weight).flatten(1).sum(1)


def test_gradient_penalty_is_zero_for_a_1_lipschitz_critic_and_large_for_a_steep_one():
    real, fake = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16)
    assert gradient_penalty(LinearCritic((3, 16, 16), 1.0), real, fake).item() < 1e-8
    steep = gradient_penalty(LinearCritic((3, 16, 16), 10.0), real, fake).item()
    assert steep == pytest.approx(81.0, rel=1e-4)


def test_gradient_penalty_is_taken_at_interpolates_between_real_and_fake():
    real, fake = torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)
    critic = LinearCritic((3, 8, 8), 1.0)
    gradient_penalty(critic, real, fake)
    seen, = critic.inputs
    eps = ((seen - fake) / (real - fake)).flatten(1)  # one mixing weight per sample, in [0, 1]
    assert torch.allclose(eps, eps[:, :1].expand_as(eps), atol=1e-3)
    assert (eps[:, 0] >= 0).all() and (eps[:, 0] <= 1).all() and eps[:, 0].std() > 0


def test_gradient_penalty_trains_the_critic_towards_unit_gradients():
    real, fake = torch.rand(8, 3, 8, 8), torch.rand(8, 3, 8, 8)
    critic = LinearCritic((3, 8, 8), 5.0)
    penalty = gradient_penalty(critic, real, fake)
    penalty.backward()
    assert critic.weight.grad is not None and critic.weight.grad.norm() > 0


def test_networks_have_dcgan_shapes():
    method = tiny_wgan(size=32)
    z = torch.randn(3, 100)
    images = method.generator(z)
    assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1
    assert method.critic(images).shape == (3,)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.critic.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in tiny_wgan(critic_norm="none").critic.modules())
    assert set(method.inference_modules()) == {"generator", "critic"}


def test_training_step_updates_critic_and_generator_and_logs_the_wasserstein_estimate():
    method = tiny_wgan().train()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    logs = method.training_step(batch(), 0)
    assert {"wasserstein", "gp", "d_loss", "g_adv"} <= set(logs)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
    after = method.state_dict()
    for network in ("generator", "critic"):
        keys = [k for k in before if k.startswith(network + ".") and "weight" in k]
        assert any(not torch.equal(before[k], after[k]) for k in keys), f"{network} did not change"


def test_critic_takes_n_critic_steps_per_generator_step(monkeypatch):
    method = tiny_wgan(n_critic=3, critic_batches="split").train()
    calls = []
    original = method.optimise
    monkeypatch.setattr(method, "optimise",
                        lambda name, loss, clip=None: (calls.append(name), original(name, loss)))
    sizes = []
    method.critic.register_forward_hook(lambda module, args, out: sizes.append(len(args[0])))
    method.training_step(batch(count=6), 0)
    assert calls == ["critic"] * 3 + ["generator"]
    assert sizes[:2] == [2, 2]  # split: each critic update scores a third of the real batch


def test_weight_clipping_option_uses_rmsprop_and_keeps_the_critic_in_the_box():
    method = tiny_wgan(penalty="clip", clip_value=0.01).train()
    assert isinstance(method.optimizers["critic"], torch.optim.RMSprop)
    logs = method.training_step(batch(), 0)
    assert "gp" not in logs and "wasserstein" in logs
    assert all(p.abs().max() <= 0.01 + 1e-7 for p in method.critic.parameters())
    with pytest.raises(ValueError, match="penalty"):
        create_method("wgan", penalty="spectral")


def test_latent_optimisation_lowers_the_context_loss_on_a_fixed_image():
    method = tiny_wgan(z_lr=0.05).eval()
    with torch.no_grad():
        image = (method.generator(torch.randn(2, 100, generator=torch.Generator().manual_seed(7))) + 1) / 2
    mask = batch(count=2)["mask"]
    _, history = method.optimise_latents(image, mask, iterations=60, restarts=1)
    assert len(history) == 61
    assert history[-1] < 0.5 * history[0]


def test_more_restarts_never_do_worse_for_the_first_image():
    method = tiny_wgan().eval()
    data = batch(count=2)
    target = data["image"] * 2 - 1
    weights = context_weights(data["mask"])

    def first_image_loss(restarts):
        z, _ = method.optimise_latents(data["image"], data["mask"], iterations=15, restarts=restarts)
        with torch.no_grad():
            return method.context_loss(method.generator(z), target, weights)[0].item()

    assert first_image_loss(3) <= first_image_loss(1) + 1e-5  # the first start is shared


def test_inpaint_keeps_known_pixels_exactly_and_is_deterministic_given_the_seed():
    method = tiny_wgan().eval()
    data = batch()
    out = method.inpaint(data["image"], data["mask"])
    assert out.shape == data["image"].shape and 0 <= out.min() and out.max() <= 1
    known = data["mask"].expand_as(out) == 0
    assert torch.equal(out[known], data["image"][known])
    assert torch.equal(out, method.inpaint(data["image"], data["mask"]))
    assert not torch.equal(out, method.inpaint(data["image"], data["mask"], FillOptions(seed=1)))
    assert all(p.grad is None and p.requires_grad for p in method.parameters())  # inference leaves no trace


def test_importance_weights_favour_pixels_next_to_the_hole():
    mask = batch(size=32, count=1)["mask"]
    weights = context_weights(mask, "importance")
    assert (weights[mask > 0] == 0).all()
    assert weights[0, 0, 7, 16] > weights[0, 0, 2, 16] == 0  # 1 px above the hole vs far from it


def test_blending_modes_differ_only_inside_the_hole():
    method = tiny_wgan().eval()
    data = batch()
    poisson = method.inpaint(data["image"], data["mask"])
    plain = create_method("wgan", size=16, **{**TINY, "blend": "none"}).eval()
    plain.load_state_dict(method.state_dict())
    flat = plain.inpaint(data["image"], data["mask"])
    hole = data["mask"].expand_as(flat) > 0
    assert torch.equal(poisson[~hole], flat[~hole]) and not torch.equal(poisson[hole], flat[hole])


def test_export_and_load_round_trip_is_identical(tiny_dataset, tmp_path):
    config = TrainConfig(method="wgan", data=str(tiny_dataset), out=str(tmp_path / "run"), batch_size=2,
                         workers=0, steps=1, val_every=1000, ckpt_every=1000, log_every=1,
                         method_settings=tuple(TINY.items()))
    summary = train(config)  # one step, then validation: latent optimisation inside the engine's no_grad
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "wasserstein" in records[0] and any("val_psnr" in r for r in records)
    weights = tmp_path / "wgan.pt"
    export_checkpoint(summary["checkpoint"], weights)
    payload = torch.load(weights, weights_only=True)
    assert set(payload["state_dict"]) == {"generator", "critic"}
    trained = create_method("wgan", **payload["config"])
    trained.load_state_dict(torch.load(summary["checkpoint"], weights_only=True)["model"])
    trained.load_export_state(half_precision(trained.export_state()))  # as stored: float16
    trained.eval()
    loaded = load_weights(weights)
    data = batch(size=32)
    image, mask = data["image"], data["mask"]
    assert torch.equal(trained.inpaint(image, mask), loaded.inpaint(image, mask))
