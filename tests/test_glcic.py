"""glcic (Iizuka et al. 2017) and the Poisson blending both latent and feed-forward methods use."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import facefill.methods.glcic  # noqa: F401  (registers the method)
from facefill.blending import blend_fill, poisson_blend
from facefill.checkpoint import export_weights, half_precision, load_weights
from facefill.methods.glcic import VGG16_TO_RELU3_3, training_phase
from facefill.nn.dilated import DilatedCompletionNet, GLDiscriminator, hole_crop_boxes, local_crop
from facefill.registry import create_method
from batches import tiny_trainable, centre_batch

TINY = {"base_channels": 4, "disc_channels": 4, "disc_features": 16}


def tiny_glcic(size=16, **extra):
    return tiny_trainable("glcic", TINY, size, **extra)


def batch(size=16, count=4):
    return centre_batch(size, count)


def box_mask(size, top, left, height, width):
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:top + height, left:left + width] = 1
    return mask


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("shape", [(32, 32), (24, 40)])
def test_dilated_generator_keeps_resolution(shape):
    net = DilatedCompletionNet(4, base=4).eval()
    out = net(torch.randn(2, 4, *shape))
    assert out.shape == (2, 3, *shape) and out.abs().max() <= 1
    rates = [m.dilation[0] for m in net.middle.modules() if isinstance(m, nn.Conv2d)]
    assert rates == [2, 4, 8, 16]
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 4, 30, 30))


@pytest.mark.parametrize("top, left, height, width, expected", [
    (0, 0, 6, 6, (0, 0)),          # top-left corner: the crop stays in the corner
    (26, 25, 6, 7, (16, 16)),      # bottom-right corner
    (8, 8, 16, 16, (8, 8)),        # centred hole: centred crop
    (10, 20, 4, 4, (4, 14)),       # bbox centre (12, 22) -> window from (12 - 8, 22 - 8)
])
def test_local_crop_follows_the_hole(top, left, height, width, expected):
    mask = box_mask(32, top, left, height, width)
    assert tuple(hole_crop_boxes(mask, 16)[0].tolist()) == expected
    image = torch.arange(3 * 32 * 32, dtype=torch.float).view(1, 3, 32, 32)
    crop = local_crop(image, mask, 16)
    row, col = expected
    assert torch.equal(crop, image[..., row:row + 16, col:col + 16])


def test_empty_mask_gives_the_centred_crop_and_each_image_its_own_crop():
    mask = torch.cat([box_mask(32, 0, 0, 4, 4), torch.zeros(1, 1, 32, 32)])
    assert hole_crop_boxes(mask, 16).tolist() == [[0, 0], [8, 8]]


def test_discriminator_sees_the_whole_image_and_the_crop_around_the_hole():
    disc = GLDiscriminator(32, base=4, features=8).eval()
    seen = []
    disc.local_branch.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    image = torch.rand(2, 3, 32, 32)
    mask = torch.cat([box_mask(32, 0, 0, 5, 5), box_mask(32, 27, 27, 5, 5)])
    logits = disc(image, mask)
    assert logits.shape == (2, 1)
    assert torch.equal(seen[0][0], image[0, :, :16, :16]) and torch.equal(seen[0][1], image[1, :, 16:, 16:])


# ------------------------------------------------------------------ training phases
def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _changed(before, module, parameters_only=False):
    names = {n for n, _ in module.named_parameters()} if parameters_only else set(before)
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in names)


def test_phases_follow_phase_steps():
    assert [training_phase(s, (2, 3)) for s in range(7)] == [1, 1, 2, 2, 2, 3, 3]


def test_each_training_phase_updates_only_what_it_should():
    method = tiny_glcic(phase_steps=(1, 1)).train()
    data = batch()
    expectations = {0: (True, False), 1: (False, True), 2: (True, True)}  # step: (G changes, D changes)
    for step, (g_changes, d_changes) in expectations.items():
        g_before, d_before = _snapshot(method.generator), _snapshot(method.discriminator)
        logs = method.training_step(data, step)
        assert all(torch.isfinite(torch.as_tensor(v)) for v in logs.values())
        assert logs["phase"] == step + 1
        assert _changed(g_before, method.generator, parameters_only=True) == g_changes, f"step {step}: G"
        # phase 1 never runs D, so not even its BatchNorm statistics move
        d_changed = _changed(d_before, method.discriminator, parameters_only=step > 0)
        assert d_changed == d_changes, f"step {step}: D"
    assert "g_adv" in logs and "d_loss" in logs and "rec" in logs


def test_perceptual_loss_uses_only_local_vgg_weights(tmp_path):
    layers, ch = [], 3
    for item in VGG16_TO_RELU3_3:  # a torchvision-style vgg16().features prefix, random weights
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(ch, item, 3, padding=1), nn.ReLU()]
            ch = item
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in nn.Sequential(*layers).state_dict().items()}, path)
    method = tiny_glcic(vgg_weights=str(path)).train()
    logs = method.training_step(batch(), 0)
    assert logs["perceptual"] > 0 and torch.isfinite(logs["loss"])
    assert not any("vgg" in key for key in method.state_dict())
    assert "perceptual" not in tiny_glcic().train().training_step(batch(), 0)


def test_config_is_checked():
    with pytest.raises(ValueError, match="blend"):
        create_method("glcic", blend="laplacian")
    with pytest.raises(ValueError, match="divisible by 4"):
        create_method("glcic", size=30)


# ------------------------------------------------------------------ inference and weights
def test_inpaint_keeps_known_pixels_and_blending_changes_only_the_hole():
    method = tiny_glcic().eval()
    data = batch()
    out = method.inpaint(data["image"], data["mask"])
    hole = data["mask"].expand_as(out) > 0
    assert out.shape == data["image"].shape and torch.equal(out[~hole], data["image"][~hole])
    plain = tiny_glcic(blend="none").eval()
    plain.load_state_dict(method.state_dict())
    flat = plain.inpaint(data["image"], data["mask"])
    assert torch.equal(flat[~hole], out[~hole]) and not torch.equal(out[hole], flat[hole])


def test_export_and_load_round_trip_is_identical(tmp_path):
    method = tiny_glcic(size=32, phase_steps=(1, 1)).train()
    for step in range(3):
        method.training_step(batch(size=32), step)
    method.eval()
    weights = tmp_path / "glcic.pt"
    export_weights(method, weights, {"size": 32, "steps": 3})
    payload = torch.load(weights, weights_only=True)
    assert set(payload["state_dict"]) == {"generator"} and payload["config"]["phase_steps"] == (1, 1)
    loaded = load_weights(weights)
    assert loaded.config == method.config
    method.load_export_state(half_precision(method.export_state()))  # as stored: float16
    data = batch(size=32)
    image, mask = data["image"], data["mask"]
    assert torch.equal(method.inpaint(image, mask), loaded.inpaint(image, mask))


# ------------------------------------------------------------------ Poisson blending
def _smooth_image(size=32, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3)).astype(np.uint8), (7, 7), 2.0)


@pytest.mark.parametrize("box", [(10, 10, 8, 8), (0, 0, 10, 10), (22, 20, 10, 12), (0, 5, 32, 6)])
def test_poisson_blend_keeps_known_pixels_and_removes_a_colour_offset_even_on_the_border(box):
    image = _smooth_image()
    top, left, height, width = box
    hole = np.zeros((32, 32), bool)
    hole[top:top + height, left:left + width] = True
    fill = np.clip(image.astype(int) + 30, 0, 255).astype(np.uint8)  # right gradients, wrong level
    out = poisson_blend(fill, image, hole)
    assert out.dtype == np.uint8 and np.array_equal(out[~hole], image[~hole])
    plain_error = np.abs(fill.astype(int) - image)[hole].mean()
    assert np.abs(out.astype(int) - image)[hole].mean() < 0.1 * plain_error


def test_poisson_blend_handles_empty_and_full_holes():
    image, fill = _smooth_image(seed=1), _smooth_image(seed=2)
    assert np.array_equal(poisson_blend(fill, image, np.zeros((32, 32), bool)), image)
    assert np.array_equal(poisson_blend(fill, image, np.ones((32, 32), bool)), fill)


def test_blend_fill_on_tensors():
    image = torch.rand(2, 3, 16, 16)
    fill = (image + 0.2).clamp(0, 1)
    mask = batch(size=16, count=2)["mask"]
    assert torch.equal(blend_fill(fill, image, mask, "none"), fill)
    blended = blend_fill(fill, image, mask, "poisson")
    assert torch.equal(blended[mask.expand_as(fill) == 0], fill[mask.expand_as(fill) == 0])
    with pytest.raises(ValueError, match="blend"):
        blend_fill(fill, image, mask, "median")
