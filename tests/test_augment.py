"""Batches on the training device: torch masks against the numpy ones, augmentation that keeps
masks aligned with images, and a generator that resume restores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facefill.data.augment import DeviceBatches, augment, build_mask_bank, draw_masks, from_bank
from facefill.data.dataset import TrainingImages
from facefill.data.masks import DEFAULT_AREAS, NOSE, load_parsing, make_mask, make_masks_torch, mask_area
from conftest import CELEBA_HQ

SIZE = 32


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def numpy_areas(kind, count, **kwargs):
    return np.array([mask_area(make_mask(kind, np.random.default_rng(i), SIZE, **kwargs)) for i in range(count)])


def torch_areas(masks):
    return masks.flatten(1).float().mean(1).numpy()


@pytest.mark.parametrize("kind", sorted(DEFAULT_AREAS))
def test_torch_strokes_cover_the_numpy_kinds_area_range(kind):
    masks = make_masks_torch(kind, generator(), 48, SIZE, "cpu")
    assert masks.shape == (48, SIZE, SIZE) and masks.dtype == torch.bool
    lo, hi = DEFAULT_AREAS[kind]
    ours, theirs = torch_areas(masks), numpy_areas(kind, 48)
    assert ours.min() >= lo - 1.5 / SIZE and ours.max() <= hi + 1e-9, (ours.min(), ours.max())
    assert abs(ours.mean() - theirs.mean()) < 0.05, (ours.mean(), theirs.mean())
    assert len({m.numpy().tobytes() for m in masks}) == 48  # every mask differs


def test_torch_boxes_and_centre_match_the_numpy_ones():
    centre = make_masks_torch("center", generator(), 4, SIZE, "cpu")
    assert np.array_equal(centre[0].numpy(), make_mask("center", 0, SIZE))
    boxes = torch_areas(make_masks_torch("random-box", generator(), 200, SIZE, "cpu"))
    theirs = numpy_areas("random-box", 200)
    assert boxes.min() >= 0.25 ** 2 - 0.02 and boxes.max() <= 0.25 + 0.02
    assert abs(boxes.mean() - theirs.mean()) < 0.02


@pytest.mark.parametrize("kind", ["sunglasses", "surgical-mask"])
def test_face_part_masks_from_parsing_maps_agree_with_numpy(kind):
    files = sorted((CELEBA_HQ / "parsing").glob("*.png"))[:6]
    if len(files) < 6:
        pytest.skip("../shared/data/celeba-hq/parsing is not available")
    import cv2

    labels = np.stack([cv2.resize(load_parsing(str(f)), (64, 64), interpolation=cv2.INTER_NEAREST_EXACT)
                       for f in files])
    ours = make_masks_torch(kind, generator(), 6, 64, "cpu", torch.from_numpy(labels)).numpy()
    for label, mask in zip(labels, ours):
        theirs = make_mask(kind, 0, 64, parsing=label)
        overlap = (mask & theirs).sum() / (mask | theirs).sum()
        assert overlap > 0.85, overlap  # the same region (hull as a 16-gon, same dilation)


def test_bank_masks_keep_their_area_under_flips_and_shifts():
    bank = build_mask_bank("irregular", 16, SIZE, torch.device("cpu"), generator())
    picked = from_bank(bank, generator(1), 64)
    areas = set(bank.flatten(1).sum(1).tolist())
    assert all(count in areas for count in picked.flatten(1).sum(1).tolist())
    assert len({m.numpy().tobytes() for m in picked}) > 32  # transformed, not just repeated


def test_augmentation_keeps_parsing_masks_aligned_with_the_image():
    images = torch.zeros(8, 3, SIZE, SIZE)
    labels = torch.zeros(8, SIZE, SIZE, dtype=torch.uint8)
    images[:, 0, 10:20, 6:14] = 1.0        # a red "nose", off-centre so flips and shifts show
    labels[:, 10:20, 6:14] = NOSE
    out, warped = augment(images, generator(3), labels, frame=True, colour=False)
    red = out[:, 0] > 0.5
    nose = warped == NOSE
    assert not torch.equal(nose, labels == NOSE)  # it did move
    for a, b in zip(red, nose):
        assert (a & b).sum() / (a | b).sum() > 0.8


def test_colour_jitter_is_mild_and_keeps_the_range():
    images = torch.rand(16, 3, SIZE, SIZE, generator=generator())
    out, _ = augment(images, generator(1), frame=False, colour=True)
    assert 0 <= out.min() and out.max() <= 1
    change = torch.minimum((out - images).abs().flatten(1).mean(1), (out - images.flip(-1)).abs().flatten(1).mean(1))
    assert change.max() < 0.1 and change.min() > 0  # flips aside, a mild change of every image


def tiny_images(count=12, weights=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (count, SIZE, SIZE, 3), dtype=np.uint8)
    return TrainingImages(images, np.ones(count) if weights is None else weights, None,
                          np.full(count, -1), images[:2], [])


@pytest.mark.parametrize("kind", ["mix", "irregular-thin", "sunglasses"])
def test_device_batches_continue_exactly_from_a_saved_state(kind):
    batches = DeviceBatches(tiny_images(), torch.device("cpu"), kind, 4, seed=5, frame=True, colour=True)
    batches.batch(0)
    state = batches.state_dict()
    first = [batches.batch(step) for step in (1, 2, 3)]
    again = DeviceBatches(tiny_images(), torch.device("cpu"), kind, 4, seed=5, frame=True, colour=True)
    assert again.load_state_dict(state, 1)
    for step, batch in zip((1, 2, 3), first):
        other = again.batch(step)
        assert torch.equal(batch["image"], other["image"]) and torch.equal(batch["mask"], other["mask"])
    assert first[0]["image"].shape == (4, 3, SIZE, SIZE) and first[0]["mask"].shape == (4, 1, SIZE, SIZE)


def test_mix_draws_every_mix_kind():
    masks = draw_masks("mix", generator(), 60, SIZE, "cpu")[:, 0]
    areas = torch_areas(masks > 0)
    assert np.any(np.isclose(areas, 0.25)) and np.any(areas < 0.24) and np.any(areas > 0.26)
