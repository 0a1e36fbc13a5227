"""ffc-unet-gan: FFC-bottleneck U-Net, optional refinement stage, multi-scale patch discriminator
with R1 and feature matching; every ablation switch; fills at any size from one weights file."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from facefill.checkpoint import export_weights, load_weights
from facefill.methods.ffc_unet_gan import (MAX_FILL_SIZE, discriminator_loss, fake_patch_weights,
                                           feature_matching_loss, fill_size, r1_penalty)
from facefill.nn.blocks import DenseBlock, PlainBlock
from facefill.nn.ffc import SpectralTransform
from facefill.nn.fourier_unet import FourierUNet, pad_to_multiple
from facefill.nn.patch_discriminator import MultiScaleDiscriminator
from facefill.registry import create_method
from batches import centre_batch, four_faces, hole_l1_before_and_after, tiny_trainable

TINY = {"base_channels": 4, "max_channels": 16, "ffc_blocks": 1, "growth": 2, "refine_channels": 4,
        "refine_blocks": 1, "disc_channels": 4, "disc_depth": 2}


def tiny_method(size=32, **extra):
    return tiny_trainable("ffc-unet-gan", TINY, size, **extra)


def box_mask(count, height, width, top, left, side):
    mask = torch.zeros(count, 1, height, width)
    mask[..., top:top + side, left:left + side] = 1
    return mask


# ------------------------------------------------------------------ filling at any size
@pytest.mark.parametrize("shape", [(128, 128), (256, 256), (40, 72), (512, 512)])
def test_one_model_fills_any_multiple_of_eight(shape):
    method = tiny_method(size=256).eval()
    height, width = shape
    image = torch.rand(2, 3, height, width)
    mask = box_mask(2, height, width, height // 4, width // 4, min(shape) // 2)
    filled = method.inpaint(image, mask)
    assert filled.shape == image.shape and 0 <= filled.min() and filled.max() <= 1
    assert torch.equal(filled[mask.expand_as(image) == 0], image[mask.expand_as(image) == 0])
    assert not torch.allclose(filled[mask.expand_as(image) == 1], image[mask.expand_as(image) == 1])


def test_other_sides_are_padded_to_the_multiple_and_cropped_back():
    method = tiny_method().eval()
    image, mask = torch.rand(1, 3, 30, 45), box_mask(1, 30, 45, 5, 5, 12)
    assert method.inpaint(image, mask).shape == (1, 3, 30, 45)
    assert pad_to_multiple(image, 8).shape[-2:] == (32, 48)
    with pytest.raises(ValueError, match="divisible by 8"):
        method.generator(torch.rand(1, 4, 30, 45))


def test_fill_size_follows_the_crop_up_to_the_native_size():
    assert fill_size(256, 1000) == 256          # large faces: the native size
    assert fill_size(256, 256) == 256
    assert fill_size(256, 128) == 128           # smaller faces: their own size, not enlarged
    assert fill_size(256, 130) == 136           # rounded up to the multiple
    assert fill_size(256, 64) == 128            # below the smallest trained scale: enlarged to it
    assert fill_size(256, 3) == 128
    assert fill_size(256, 64, smallest=32) == 64
    assert fill_size(128, 40) == 128
    assert fill_size(64, 40) == 64              # never above the native size
    assert fill_size(32, 3, smallest=8) == 8
    assert fill_size(1024, 2000) == MAX_FILL_SIZE
    assert tiny_method(size=256).fill_size(200) == 200
    assert tiny_method(size=256).fill_size(50) == 128
    assert tiny_method(size=256, min_fill_size=64).fill_size(50) == 64
    assert tiny_method(size=256, min_fill_size=64).fill_size(70) == 72


def test_a_shallow_hole_is_filled_at_up_to_twice_the_native_size():
    assert fill_size(128, 256, depth=16) == 256          # thin strokes: the crop's own resolution
    assert fill_size(128, 256, depth=17) == 128          # deeper than 1/16 of the side: trained scale
    assert fill_size(128, 256, depth=64) == 128          # a centred quarter
    assert fill_size(128, 1000, depth=10) == 256         # at most twice the native size
    assert fill_size(128, 200, depth=10) == 200
    assert fill_size(128, 100, depth=2) == 128           # small crops are still enlarged, no more
    assert fill_size(64, 40, depth=1) == 64
    assert fill_size(512, 2000, depth=1) == MAX_FILL_SIZE
    assert tiny_method(size=128).fill_size(256, depth=12) == 256


def test_the_pipeline_fills_strokes_at_full_resolution_and_a_deep_hole_at_the_trained_scale():
    from facefill.inference.faces import FRAMINGS
    from facefill.inference.fitting import plan_fits
    method = tiny_method(size=128)
    image = np.zeros((256, 256, 3), np.uint8)
    stroke, box = np.zeros((256, 256), bool), np.zeros((256, 256), bool)
    stroke[100:110, 20:230] = True               # 5 px deep
    box[64:192, 64:192] = True
    sides = [plan_fits(0, image, hole, 128, FRAMINGS["celeba-hq"], aligned=True, size_for=method.fill_size)[0]
             .image.shape[0] for hole in (stroke, box)]
    assert sides == [256, 128]


def test_the_bottleneck_sees_the_whole_image_only_through_the_fourier_branch():
    """An impulse in one corner reaches the opposite corner of the 1/8-resolution bottleneck with
    FFC blocks (global receptive field), not with plain residual blocks (global_ratio=0)."""
    for ratio, reaches in ((0.75, True), (0.0, False)):
        torch.manual_seed(0)
        net = FourierUNet(base=4, max_ch=16, levels=3, ffc_blocks=1, global_ratio=ratio).eval()
        x = torch.randn(1, 16, 16, 16, requires_grad=True)
        net.bottleneck(x)[0, :, -1, -1].sum().backward()
        assert (x.grad[0, :, 0, 0].abs().sum() > 0) == reaches, ratio


# ------------------------------------------------------------------ ablation switches
def test_default_configuration_fits_the_weights_budget():
    method = create_method("ffc-unet-gan")
    parameters = sum(p.numel() for p in method.generator.parameters())
    assert method.size == 256 and method.config.stages == 1
    assert parameters * 2 < 16 * 2 ** 20            # float16 storage, 16 MiB
    assert isinstance(method.discriminator, MultiScaleDiscriminator)


def test_architecture_switches_change_the_network():
    def count(method, kind):
        return sum(isinstance(m, kind) for m in method.generator.modules())

    default = tiny_method()
    assert count(default, SpectralTransform) == 2 and count(default, DenseBlock) == 3
    assert count(tiny_method(global_ratio=0.0), SpectralTransform) == 0
    plain = tiny_method(dense=False)
    assert count(plain, DenseBlock) == 0 and count(plain, PlainBlock) == 3
    no_skips = tiny_method(skips=False)
    assert no_skips.generator.coarse.up[0].fuse[0].in_channels < default.generator.coarse.up[0].fuse[0].in_channels
    two = tiny_method(stages=2)
    assert two.generator.refine is not None and default.generator.refine is None


@pytest.mark.parametrize("settings, expected_logs", [
    ({}, {"rec", "d_loss", "r1", "g_adv", "fm", "loss"}),
    ({"losses": "rec"}, {"rec", "loss"}),
    ({"losses": "rec+adv"}, {"rec", "d_loss", "g_adv", "loss"}),
    ({"losses": "rec+fm+r1"}, {"rec", "d_loss", "r1", "fm", "loss"}),
    ({"losses": "adv+fm+r1"}, {"d_loss", "r1", "g_adv", "fm", "loss"}),
    ({"stages": 2}, {"rec", "rec_coarse", "d_loss", "r1", "g_adv", "fm", "loss"}),
    ({"global_ratio": 0.0, "dense": False, "skips": False}, {"rec", "d_loss", "r1", "g_adv", "fm", "loss"}),
])
def test_each_ablation_trains_with_its_loss_terms(settings, expected_logs):
    method = tiny_method(**settings).train()
    generator_before = [p.clone() for p in method.generator.parameters()]
    logs = method.training_step(centre_batch(32, 2), 0)
    assert set(logs) == expected_logs and all(math.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, method.generator.parameters()))
    assert (method.discriminator is None) == (settings.get("losses") == "rec")
    assert set(method.optimizers) == ({"generator"} if method.discriminator is None
                                      else {"generator", "discriminator"})


@pytest.mark.parametrize("losses", ["", "rec+perceptual", "r1", "rec+r1"])
def test_bad_loss_sets_are_refused(losses):
    with pytest.raises(ValueError, match="losses"):
        create_method("ffc-unet-gan", losses=losses)


def test_bad_settings_are_refused():
    for settings, message in (({"stages": 3}, "stages"), ({"size": 100}, "multiple"),
                              ({"global_ratio": 1.0}, "global_ratio"), ({"r1_every": 0}, "r1_every")):
        with pytest.raises(ValueError, match=message):
            create_method("ffc-unet-gan", **settings)


def test_r1_is_lazy_and_only_the_discriminator_step_touches_the_discriminator():
    method = tiny_method(r1_every=2).train()
    data = centre_batch(32, 2)
    assert "r1" in method.training_step(data, 0) and "r1" not in method.training_step(data, 1)
    # the generator's turn leaves no gradient on the discriminator: its last gradients are the D step's
    method.optimizers["discriminator"].zero_grad(set_to_none=True)
    completed = (data["image"] * 2 - 1).requires_grad_()
    method._generator_gan_terms(data["image"] * 2 - 1, completed, {}).backward()
    assert completed.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.discriminator.parameters())


# ------------------------------------------------------------------ losses by hand
def test_only_patches_touching_the_hole_count_as_fake():
    logits = [torch.zeros(1, 1, 4, 4)]
    mask = box_mask(1, 32, 32, 0, 0, 8)                # the top-left logit's patch (8x8 pixels)
    weights = fake_patch_weights(mask, logits[0])
    assert weights[0, 0, 0, 0] == 1 and weights.sum() == 1
    # logits 0: softplus(0) = log 2 for every term, whatever the target
    assert discriminator_loss(logits, logits, mask).item() == pytest.approx(2 * math.log(2))
    fake = [torch.full((1, 1, 4, 4), 5.0)]             # "real" everywhere: wrong only on the hole's patch
    real = [torch.full((1, 1, 4, 4), 5.0)]
    expected = math.log1p(math.exp(-5)) + (math.log1p(math.exp(5)) + 15 * math.log1p(math.exp(-5))) / 16
    assert discriminator_loss(real, fake, mask).item() == pytest.approx(expected, rel=1e-5)


def test_feature_matching_and_r1_by_hand():
    a, b = [torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 2, 2)], [torch.ones(1, 2, 2, 2), torch.ones(1, 1, 2, 2)]
    assert feature_matching_loss(a, b).item() == pytest.approx(0.5)

    class Linear(torch.nn.Module):                      # logits = 3 x the image's pixel sum
        def forward(self, x):
            return [3 * x.sum((1, 2, 3), keepdim=True)], []

    assert r1_penalty(Linear(), torch.rand(2, 3, 4, 4)).item() == pytest.approx(9 * 3 * 16)


def test_discriminator_scales_judge_smaller_images():
    disc = MultiScaleDiscriminator(base=4, depth=2, scales=3)
    logits, features = disc(torch.rand(2, 3, 64, 64))
    assert [tuple(l.shape[-2:]) for l in logits] == [(16, 16), (8, 8), (4, 4)]
    assert len(features) == 3 * 3


# ------------------------------------------------------------------ training and weights
def test_overfits_four_faces(tiny_dataset):
    torch.manual_seed(0)
    data = four_faces(tiny_dataset)
    start, end = hole_l1_before_and_after(tiny_method(lr=2e-3).train(), data)
    assert end < 0.7 * start


def test_export_and_load_round_trip(tmp_path):
    method = tiny_method(stages=2)
    method.training_step(centre_batch(32, 2), 0)
    method.eval()
    path = tmp_path / "ffc-unet-gan-32.pt"
    export_weights(method, path, {"size": 32})
    payload = torch.load(path, weights_only=True)
    assert set(payload["state_dict"]) == {"generator"} and payload["config"]["stages"] == 2
    loaded = load_weights(path)
    assert loaded.config == method.config
    for key, value in method.generator.state_dict().items():  # float16 storage, float32 model
        assert torch.equal(loaded.generator.state_dict()[key], value.half().to(value.dtype)), key
    for shape in ((32, 32), (64, 48)):
        image, mask = torch.rand(2, 3, *shape), box_mask(2, *shape, 8, 8, 16)
        assert torch.allclose(method.inpaint(image, mask), loaded.inpaint(image, mask), atol=2e-2)


def test_inference_form_folds_batch_norms_and_fills_the_same(tmp_path):
    method = tiny_method(stages=2)
    for _ in range(3):  # running statistics away from their initial 0 / 1
        method.training_step(centre_batch(32, 2), 0)
    method.eval()
    export_weights(method, tmp_path / "w.pt", {"size": 32})
    loaded = load_weights(tmp_path / "w.pt")  # loading for inference prepares the fast form
    fast = loaded.__dict__["inference_generator"]
    norms = lambda net: sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert norms(fast) < norms(loaded.generator) and "inference_generator" not in dict(loaded.named_modules())
    image, mask = torch.rand(2, 3, 40, 48), box_mask(2, 40, 48, 8, 8, 16)
    plain = load_weights(tmp_path / "w.pt")
    del plain.__dict__["inference_generator"]
    assert torch.allclose(loaded.inpaint(image, mask), plain.inpaint(image, mask), atol=1e-5)
    assert set(loaded.export_state()["generator"]) == set(method.generator.state_dict())  # export untouched
    loaded.train()
    assert torch.equal(loaded.generate(image, mask), loaded.generator(torch.cat([(image * 2 - 1) * (1 - mask), mask], 1)))


def test_trains_and_exports_through_the_engine(tiny_dataset, tmp_path):
    from facefill.config import TrainConfig
    from facefill.engine.train import export_checkpoint, train

    summary = train(TrainConfig(method="ffc-unet-gan", data=str(tiny_dataset), out=str(tmp_path / "run"), steps=2,
                                batch_size=2, workers=0, val_every=2, ckpt_every=1000, log_every=1, ema=0.9,
                                masks="mix", method_settings=tuple(TINY.items())))
    export_checkpoint(summary["checkpoint"], tmp_path / "w.pt", data=str(tiny_dataset), mask_kinds=("center",))
    card = json.loads((tmp_path / "w.json").read_text())
    assert card["method"] == "ffc-unet-gan" and card["size"] == 32 and card["steps"] == 2
    centre = card["metrics"]["center"]
    assert {"psnr", "ssim", "sharpness"} <= set(centre) and np.isfinite(centre["sharpness"])
    loaded = load_weights(tmp_path / "w.pt")
    assert loaded.inpaint(torch.rand(1, 3, 48, 48), box_mask(1, 48, 48, 8, 8, 24)).shape == (1, 3, 48, 48)


def ship_two_scales(folder, monkeypatch, sources=("", "")):
    """Shipped ffc-unet-gan cards of 32 and 64 px in ``folder`` (``sources``: their training data)."""
    monkeypatch.setenv("FACEFILL_WEIGHTS", str(folder))
    torch.manual_seed(0)
    for size, source in zip((32, 64), sources):
        export_weights(tiny_method(size=size, min_fill_size=32).eval(), folder / f"ffc-unet-gan-{size}.pt",
                       {"size": size, "data": {"source": source}})


def test_the_default_fills_each_crop_with_the_scale_it_fits(tmp_path, monkeypatch):
    from facefill.checkpoint import resolve_inpainter

    ship_two_scales(tmp_path, monkeypatch)
    default = resolve_inpainter(None, None)
    small, large = load_weights(tmp_path / "ffc-unet-gan-32.pt"), load_weights(tmp_path / "ffc-unet-gan-64.pt")
    assert default.size == 64 and default.scale_for(40).size == 32 and default.scale_for(64) is default
    assert default.fill_size(40) == small.fill_size(40) == 32 and default.fill_size(100) == large.fill_size(100) == 64
    for side, expected in ((40, small), (64, large)):
        image, mask = torch.rand(2, 3, side, side), box_mask(2, side, side, 8, 8, 16)
        assert torch.equal(default.inpaint(image, mask), expected.inpaint(image, mask))
    image, mask = torch.rand(1, 3, 40, 40), box_mask(1, 40, 40, 8, 8, 16)
    assert not torch.allclose(small.inpaint(image, mask), large.inpaint(image, mask))
    assert resolve_inpainter(None, str(tmp_path / "ffc-unet-gan-64.pt")).scale_for(40).size == 64  # --weights: one model


def test_the_default_frames_a_small_hole_on_no_face_as_its_smallest_scale_alone(tmp_path, monkeypatch):
    from facefill.checkpoint import resolve_inpainter
    from facefill.inference.fitting import fill_batch

    ship_two_scales(tmp_path, monkeypatch)
    image = np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)
    hole = np.zeros((100, 100), bool)
    hole[40:50, 40:50] = True      # a 10 px hole: 20 px of context, at least the model's size
    ladder, small = resolve_inpainter(None, None), load_weights(tmp_path / "ffc-unet-gan-32.pt")
    assert np.array_equal(fill_batch(ladder, [image], [hole])[0], fill_batch(small, [image], [hole])[0])


def test_the_default_frames_faces_as_its_smallest_scale(tmp_path, monkeypatch):
    from facefill.checkpoint import resolve_inpainter
    from facefill.inference import fitting

    ship_two_scales(tmp_path, monkeypatch, ("../shared/data/celeba-aligned", "../shared/data/celeba-hq/images"))
    seen = []
    monkeypatch.setattr(fitting, "plan_fits", lambda index, image, hole, size, framing, *rest: seen.append((size, framing)) or [])
    image, hole = np.zeros((100, 100, 3), np.uint8), np.ones((100, 100), bool)
    fitting.fill_batch(resolve_inpainter(None, None), [image], [hole])
    assert seen == [(32, fitting.framing_for({"data": {"source": "celeba-aligned"}}))]
