"""ddpm-ffc: fast Fourier convolution, the DDPM/DDIM schedulers and the inpainting method, tiny."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import facefill.methods.ddpm_ffc  # noqa: F401  (registers ddpm-ffc)
from facefill.checkpoint import export_weights, half_precision, load_weights
from facefill.diffusion import DDIMScheduler, DDPMScheduler, NoiseScheduler
from facefill.inference.options import FillOptions
from facefill.methods.ddpm_ffc import CosineDecay, augment
from facefill.nn.ffc import FFC, FFCResBlock, FourierUnit
from facefill.registry import create_method
from batches import tiny_trainable, centre_batch

TINY = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (8,),
        "num_heads": 2, "ffc_blocks": 1, "timesteps": 20, "beta_start": 1e-4, "beta_end": 0.2, "sample_steps": 3}


def tiny_method(size=16, **extra):
    return tiny_trainable("ddpm-ffc", TINY, size, **extra)


def batch(size=16, count=2):
    return centre_batch(size, count)


def jitter_weights(module, scale=0.05):
    """The U-Net starts with zero-initialised outputs (it predicts 0 everywhere); perturb it so
    comparisons between models and noise levels can tell them apart."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


# ---------------------------------------------------------------- FFC
def test_ffc_shapes_and_odd_sizes():
    x = torch.randn(2, 8, 15, 12)
    local, global_ = FFC(8, 12, ratio_gin=0.5, ratio_gout=0.25)(x)
    assert local.shape == (2, 9, 15, 12) and global_.shape == (2, 3, 15, 12)
    assert FourierUnit(4, 6)(torch.randn(2, 4, 15, 13)).shape == (2, 6, 15, 13)
    assert FFCResBlock(8, 8)(x).shape == x.shape
    assert FFCResBlock(8, 16)(x).shape == (2, 16, 15, 12)


def test_ffc_global_branch_sees_the_opposite_corner_but_a_3x3_conv_does_not():
    ffc = FFC(8, 8, ratio_gin=0.5, ratio_gout=0.5).eval()  # eval: BatchNorm's batch statistics mix too
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(1, 8, 16, 16)
    changed = x.clone()
    changed[:, :, 0, 0] += 5.0
    with torch.no_grad():
        (local_a, global_a), (local_b, global_b) = ffc(x), ffc(changed)
        conv_a, conv_b = conv(x), conv(changed)
    assert (global_a[..., -1, -1] - global_b[..., -1, -1]).abs().max() > 1e-4
    assert torch.equal(local_a[..., -1, -1], local_b[..., -1, -1])  # local paths are 3x3 convs
    assert torch.equal(conv_a[..., -1, -1], conv_b[..., -1, -1])
    assert not torch.equal(conv_a[..., 0, 0], conv_b[..., 0, 0])


# ---------------------------------------------------------------- schedulers
def test_linear_schedule_alphas_cumprod_by_hand():
    scheduler = NoiseScheduler(2000, 1e-6, 1e-2)
    betas = [1e-6 + (1e-2 - 1e-6) * i / 1999 for i in range(2000)]
    product = 1.0
    for t, beta in enumerate(betas):
        product *= 1 - beta
        if t in (0, 1, 999, 1999):
            assert math.isclose(float(scheduler.alphas_cumprod[t]), product, rel_tol=1e-9)
    assert scheduler.alphas_cumprod[-1] < 1e-4  # pure noise at T


def test_add_noise_is_the_forward_process():
    scheduler = NoiseScheduler(50, 1e-4, 0.05)
    x0, eps = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 17, 49])
    noisy = scheduler.add_noise(x0, eps, t)
    for i, step in enumerate(t.tolist()):
        alpha_bar = float(scheduler.alphas_cumprod[step])
        expected = math.sqrt(alpha_bar) * x0[i] + math.sqrt(1 - alpha_bar) * eps[i]
        assert torch.allclose(noisy[i], expected, atol=1e-6)


def fake_model(x, t):
    return 0.3 * x + 0.01 * t


def sample(scheduler, seed, steps):
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=generator)
    for t in scheduler.timesteps.tolist():
        x = scheduler.step(fake_model(x, t), t, x, generator=generator)
    return x


def test_ddim_with_eta_zero_is_deterministic():
    scheduler = DDIMScheduler(50, 1e-4, 0.05, eta=0.0)
    x = torch.randn(2, 3, 8, 8)
    first = scheduler.step(fake_model(x, 49), 49, x, generator=torch.Generator().manual_seed(1))
    second = scheduler.step(fake_model(x, 49), 49, x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    noisy = DDIMScheduler(50, 1e-4, 0.05, eta=1.0)
    assert not torch.equal(noisy.step(fake_model(x, 49), 49, x, generator=torch.Generator().manual_seed(1)),
                           noisy.step(fake_model(x, 49), 49, x, generator=torch.Generator().manual_seed(2)))


def test_ddim_eta_one_over_all_steps_is_ddpm():
    ddpm = DDPMScheduler(50, 1e-4, 0.05, clip_sample=False)
    ddim = DDIMScheduler(50, 1e-4, 0.05, clip_sample=False, eta=1.0)
    x = torch.randn(2, 3, 8, 8)
    for t in (49, 20, 1):
        eps = fake_model(x, t)
        alpha_bar, alpha_bar_prev = float(ddpm.alphas_cumprod[t]), float(ddpm.alphas_cumprod[t - 1])
        beta = float(ddpm.betas[t])
        x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        mean = (math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar) * x0
                + math.sqrt(1 - beta) * (1 - alpha_bar_prev) / (1 - alpha_bar) * x)  # Ho et al., eq. 7
        assert torch.allclose(ddpm.posterior_mean(eps, t, x), mean, atol=1e-5)
        assert torch.allclose(ddim.step(eps, t, x, generator=torch.Generator().manual_seed(t)),
                              ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(t)), atol=1e-5)
        if t > 1:  # deterministic DDIM is not the posterior mean: the comparison can fail
            assert not torch.allclose(ddim.step(eps, t, x, eta=0.0), mean, atol=1e-3)
    # whole trajectories with the same noise draws, clipping on
    assert torch.allclose(sample(DDPMScheduler(50, 1e-4, 0.05), 3, 50),
                          sample(DDIMScheduler(50, 1e-4, 0.05, eta=1.0), 3, 50), atol=1e-4)
    # and the average of many one-step DDIM samples approaches DDPM's posterior mean
    many = x[:1].expand(4000, -1, -1, -1)
    average = ddim.step(fake_model(many, 30), 30, many, generator=torch.Generator().manual_seed(0)).mean(0)
    assert torch.allclose(average, ddpm.posterior_mean(fake_model(x[:1], 30), 30, x[:1])[0], atol=0.02)


def test_ddim_schedule_starts_from_pure_noise_and_ends_at_zero():
    scheduler = DDIMScheduler(2000, 1e-6, 1e-2)
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) == 50 and scheduler.timesteps[0] == 1999
    assert scheduler.previous_timestep(int(scheduler.timesteps[-1])) == -1
    with pytest.raises(ValueError):
        scheduler.set_timesteps(2001)


# ---------------------------------------------------------------- the method
def test_known_pixels_never_change_with_either_sampler():
    data = batch()
    for sampler in ("ddim", "ddpm"):
        method = tiny_method(sampler=sampler, eta=0.5).eval()
        jitter_weights(method.unet)
        fill = method.predict(data["image"], data["mask"])
        known = data["mask"].expand_as(fill) == 0
        assert torch.allclose(fill[known], data["image"][known], atol=1e-6)
        assert not torch.allclose(fill[~known], data["image"][~known], atol=1e-2)
        out = method.inpaint(data["image"], data["mask"])
        assert torch.equal(out[known], data["image"][known]) and 0 <= out.min() and out.max() <= 1


def test_predict_honours_steps_sampler_and_seed():
    method = tiny_method().eval()
    jitter_weights(method.unet)
    calls = []
    method.unet.register_forward_hook(lambda module, inputs, output: calls.append(inputs[1]))
    data = batch()
    first = method.predict(data["image"], data["mask"])
    assert len(calls) == TINY["sample_steps"]
    calls.clear()
    method.predict(data["image"], data["mask"], FillOptions(steps=5))
    assert len(calls) == 5 and calls[0][0] < calls[-1][0]  # noisy (small alpha-bar) first
    calls.clear()
    method.predict(data["image"], data["mask"], FillOptions(sampler="ddpm"))
    assert len(calls) == TINY["timesteps"]
    assert torch.equal(method.predict(data["image"], data["mask"], FillOptions(sampler="ddim")), first)
    assert not torch.equal(method.predict(data["image"], data["mask"], FillOptions(seed=1)), first)
    assert torch.equal(method.inpaint(data["image"], data["mask"], FillOptions(seed=1)),
                       method.inpaint(data["image"], data["mask"], FillOptions(seed=1)))


def test_training_step_changes_the_unet_with_a_finite_hole_loss():
    method = tiny_method(lr_decay_steps=10).train()
    before = {k: v.clone() for k, v in method.unet.state_dict().items() if v.dtype.is_floating_point}
    logs = method.training_step(batch(), 0)
    assert math.isfinite(logs["loss"]) and logs["lr"] == pytest.approx(method.config.lr)
    # the zero-initialised head passes no gradient back at first; from the second step on it does
    logs = method.training_step(batch(), 5)
    assert math.isfinite(logs["loss"]) and logs["lr"] == pytest.approx((1e-4 + 1e-6) / 2)
    after = method.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for part in ("stem.", ".ffc.global_to_global.fourier.conv.", "middle.0.block.", "head."):
        assert any(part in k for k in changed), part


def test_hole_loss_ignores_the_known_region():
    method = tiny_method(augment=False)
    jitter_weights(method.unet)
    data = batch()
    snapshot = {k: v.clone() for k, v in method.unet.state_dict().items()}
    losses = []
    for hole_loss in (True, False):
        method.config = dataclasses.replace(method.config, hole_loss=hole_loss)
        method.unet.load_state_dict(snapshot)
        torch.manual_seed(0)
        losses.append(method.training_step(data, 0)["loss"])
    assert losses[0] != losses[1]
    # with the hole loss, the prediction outside the hole does not matter
    with torch.no_grad():
        eps, predicted = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
        outside = predicted + 10 * (1 - data["mask"])
    from facefill.nn.losses import masked_mse
    assert masked_mse(predicted, eps, data["mask"]) == masked_mse(outside, eps, data["mask"])


def test_cosine_decay_and_augment():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    decay = CosineDecay(optimizer, 1.0, 100, 0.0)
    assert decay.apply(0) == 1.0 and decay.rate(50) == pytest.approx(0.5) and decay.rate(500) == 0.0
    assert optimizer.param_groups[0]["lr"] == 1.0
    image = batch()["image"]
    assert torch.allclose(augment(image, 1.0, 0.0), image, atol=1e-5)
    augmented = augment(image, 0.8, 0.05)
    assert augmented.shape == image.shape and 0 <= augmented.min() and augmented.max() <= 1
    assert not torch.allclose(augmented, image, atol=1e-2)


def test_ffc_switch_and_time_embeddings():
    def count(method, kind):
        return sum(isinstance(m, kind) for m in method.unet.modules())

    assert count(tiny_method(), FFCResBlock) == 1
    assert count(tiny_method(ffc=False), FFCResBlock) == 0 and count(tiny_method(ffc=False), FourierUnit) == 0
    x = torch.randn(2, 7, 16, 16)
    for kind in ("alphabar-linear", "sinusoidal"):
        method = tiny_method(time_embedding=kind).eval()
        jitter_weights(method.unet)
        with torch.no_grad():
            assert not torch.allclose(method.unet(x, torch.full((2,), 0.1)), method.unet(x, torch.full((2,), 0.9)))
    with pytest.raises(ValueError, match="time_embedding"):
        create_method("ddpm-ffc", time_embedding="learned")
    with pytest.raises(ValueError, match="sampler"):
        create_method("ddpm-ffc", sampler="euler")


def test_default_model_builds_at_64():
    method = create_method("ddpm-ffc")
    assert method.size == 64 and method.config.timesteps == 2000
    assert sum(isinstance(m, FFCResBlock) for m in method.unet.modules()) == 2


def test_export_and_load_give_identical_samples(tmp_path):
    method = tiny_method(sampler="ddim", eta=1.0).eval()
    jitter_weights(method.unet)
    method.load_export_state(half_precision(method.export_state()))  # as stored: float16
    data = batch()
    expected = method.predict(data["image"], data["mask"])
    export_weights(method, tmp_path / "ddpm.pt", {"size": 16})
    loaded = load_weights(tmp_path / "ddpm.pt")
    assert torch.equal(loaded.predict(data["image"], data["mask"]), expected)
    fresh = tiny_method(sampler="ddim", eta=1.0).eval()
    assert not torch.equal(fresh.predict(data["image"], data["mask"]), expected)


def test_trains_and_exports_through_the_engine(tiny_dataset, tmp_path):
    from facefill.config import TrainConfig
    from facefill.engine.train import export_checkpoint, train

    settings = {**TINY, "channel_mult": (1, 2, 2), "sample_steps": 2}
    summary = train(TrainConfig(method="ddpm-ffc", data=str(tiny_dataset), out=str(tmp_path / "run"), steps=2,
                                batch_size=2, workers=0, val_every=1000, ckpt_every=1000, log_every=1, ema=0.9,
                                method_settings=tuple(settings.items())))
    weights = tmp_path / "ddpm.pt"
    card = export_checkpoint(summary["checkpoint"], weights)
    assert card["steps"] == 2 and card["size"] == 32
    payload = torch.load(weights, weights_only=True)
    assert set(payload["state_dict"]) == {"unet"}
    from facefill.checkpoint import load_checkpoint

    state = load_checkpoint(summary["checkpoint"])
    trained = create_method("ddpm-ffc", **payload["config"])
    trained.load_export_state(half_precision(state["ema"]))  # as stored: float16
    trained.eval()
    data = batch(32)
    assert torch.equal(load_weights(weights).inpaint(data["image"], data["mask"]),
                       trained.inpaint(data["image"], data["mask"]))


def test_bf16_autocast_fill_keeps_known_pixels_and_tracks_float32():
    method = tiny_method().eval()
    jitter_weights(method.unet)
    data = batch()
    full = method.inpaint(data["image"], data["mask"])
    half = method.inpaint(data["image"], data["mask"], FillOptions(amp=True))
    assert half.dtype == torch.float32
    known = data["mask"].expand_as(half) == 0
    assert torch.equal(half[known], data["image"][known])
    assert not torch.equal(half, full)  # autocast did run the network in bf16
    assert (half - full).abs().mean() < 0.05


def test_trains_under_bf16_autocast_on_the_cpu(tiny_dataset, tmp_path):
    from facefill.config import TrainConfig
    from facefill.engine.train import train

    summary = train(TrainConfig(method="ddpm-ffc", data=str(tiny_dataset), out=str(tmp_path / "run"), steps=2,
                                batch_size=2, workers=0, val_every=2, ckpt_every=1000, log_every=1, amp=True,
                                device="cpu", method_settings=tuple({**TINY, "channel_mult": (1, 2, 2)}.items())))
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logs if "loss" in row] == [1, 2]
    assert all(math.isfinite(row["loss"]) for row in logs if "loss" in row)
    assert any(math.isfinite(row.get("val_psnr", math.nan)) for row in logs)
    assert summary["checkpoint"]


def test_export_stores_inference_settings_in_weights_and_card(tiny_dataset, tmp_path):
    from facefill.config import TrainConfig
    from facefill.engine.train import export_checkpoint, train

    settings = {**TINY, "channel_mult": (1, 2, 2), "sample_steps": 2}
    summary = train(TrainConfig(method="ddpm-ffc", data=str(tiny_dataset), out=str(tmp_path / "run"), steps=1,
                                batch_size=2, workers=0, val_every=1000, ckpt_every=1000,
                                method_settings=tuple(settings.items())))
    weights = tmp_path / "ddpm.pt"
    card = export_checkpoint(summary["checkpoint"], weights, settings={"eta": 1.0})
    assert card["export_settings"] == {"eta": 1.0}
    loaded = load_weights(weights)
    assert loaded.eta == 1.0 and loaded.config.eta == 1.0
    again = tmp_path / "again.pt"
    card = export_checkpoint(weights, again, settings={"sample_steps": 3})  # a weights file, re-carded
    assert card["export_settings"] == {"eta": 1.0, "sample_steps": 3}
    assert load_weights(again).config.sample_steps == 3 and load_weights(again).eta == 1.0
    with pytest.raises(ValueError, match="no setting"):
        export_checkpoint(weights, tmp_path / "bad.pt", settings={"no_such_setting": 1})


def test_a_setting_of_the_wrong_type_is_a_clear_error():
    with pytest.raises(ValueError, match="bad setting value for ddpm-ffc"):
        create_method("ddpm-ffc", sample_steps="abc")
