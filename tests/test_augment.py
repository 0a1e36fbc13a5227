"""Batches on the training device: torch masks against the numpy ones, augmentation that keeps
masks aligned with images, and a generator that resume restores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facefill.data.augment import (DeviceBatches, augment, bank_kinds, build_mask_bank, check_mask_kind, draw_masks,
                                   from_bank)
from facefill.data.dataset import FULL_KINDS, MIX_KINDS, FaceDataset, TrainingImages, mask_mixture, pick_kind
from facefill.data.masks import (DEFAULT_AREAS, L_BROW, L_EYE, L_LIP, MOUTH, NOSE, R_BROW, R_EYE, SKIN, U_LIP,
                                 load_parsing, make_mask, make_masks_torch, mask_area, sunglasses_from_parsing,
                                 sunglasses_masks_torch, surgical_mask_from_parsing, surgical_masks_torch)
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


@pytest.mark.parametrize("kind", ["mix", "irregular-thin", "sunglasses", "full"])
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


# ------------------------------------------------------------------ box, large, and the mixtures

def rectangle_shapes(masks: np.ndarray) -> np.ndarray:
    """(N, 2) area fraction and width/height ratio of masks that must each be one rectangle."""
    shapes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert mask.sum() == height * width
        shapes.append((mask.mean(), width / height))
    return np.array(shapes)


def test_torch_box_matches_the_numpy_box():
    ours = rectangle_shapes(make_masks_torch("box", generator(), 200, SIZE, "cpu").numpy())
    theirs = rectangle_shapes(np.stack([make_mask("box", np.random.default_rng(i), SIZE) for i in range(200)]))
    for shapes in (ours, theirs):
        assert shapes[:, 0].min() >= 0.1 - 0.02 and shapes[:, 0].max() <= 0.5 + 0.02
        assert shapes[:, 1].min() >= 0.5 * 0.85 and shapes[:, 1].max() <= 2 / 0.85
    assert abs(ours[:, 0].mean() - theirs[:, 0].mean()) < 0.03  # uniform in 10-50 %: 0.30 each
    assert abs(np.log(ours[:, 1]).mean() - np.log(theirs[:, 1]).mean()) < 0.15


def test_torch_large_matches_the_numpy_large():
    ours = torch_areas(make_masks_torch("large", generator(), 24, SIZE, "cpu"))
    theirs = numpy_areas("large", 24)
    for areas in (ours, theirs):
        assert areas.min() >= 0.4 - 1.5 / SIZE and areas.max() <= 0.6 + 1e-9, (areas.min(), areas.max())
    assert abs(ours.mean() - theirs.mean()) < 0.05, (ours.mean(), theirs.mean())


def face_maps(count: int, seed: int = 0) -> torch.Tensor:
    """Synthetic parsing maps (skin, brows, eyes, nose, lips) each shifted by a different amount."""
    base = np.zeros((SIZE, SIZE), np.uint8)
    base[4:30, 6:26] = SKIN
    for (top, bottom, left, right, label) in [(9, 10, 8, 13, L_BROW), (9, 10, 19, 24, R_BROW), (11, 13, 9, 13, L_EYE),
                                              (11, 13, 19, 23, R_EYE), (12, 19, 14, 18, NOSE), (21, 22, 11, 21, U_LIP),
                                              (22, 23, 11, 21, MOUTH), (23, 25, 11, 21, L_LIP)]:
        base[top:bottom, left:right] = label
    shifts = np.random.default_rng(seed).integers(-4, 5, (count, 2))
    return torch.from_numpy(np.stack([np.roll(base, tuple(shift), (0, 1)) for shift in shifts]))


def test_full_draws_every_kind_and_its_face_parts_follow_the_parsing_maps():
    device = torch.device("cpu")
    banks = {kind: build_mask_bank(kind, 32, SIZE, device, generator(9)) for kind in bank_kinds("full")}
    assert set(banks) == {"irregular", "random", "large"}
    labels = face_maps(300)
    masks = draw_masks("full", generator(4), 300, SIZE, device, labels, banks)[:, 0] > 0
    choice = torch.randint(len(FULL_KINDS), (300,), generator=generator(4))   # draw_masks's first draw
    areas = torch_areas(masks)
    for number, kind in enumerate(FULL_KINDS):
        picked = choice == number
        assert picked.sum() >= 20, kind
        if kind == "center":
            assert torch.equal(masks[picked], make_masks_torch("center", None, int(picked.sum()), SIZE, device))
        elif kind == "box":
            shapes = rectangle_shapes(masks[picked].numpy())
            assert shapes[:, 0].min() >= 0.08 and shapes[:, 0].max() <= 0.52
        elif kind in ("sunglasses", "surgical-mask"):
            draw = sunglasses_masks_torch if kind == "sunglasses" else surgical_masks_torch
            assert torch.equal(masks[picked], draw(labels[picked]))
            assert len({m.numpy().tobytes() for m in masks[picked]}) > 5   # each follows its own shifted map
        else:
            lo, hi = {"irregular": (0.1, 0.5), "random": (0.2, 0.3), "large": (0.4, 0.6)}[kind]
            assert areas[picked.numpy()].min() >= lo - 1.5 / SIZE and areas[picked.numpy()].max() <= hi, kind


def test_a_comma_list_is_the_uniform_mixture_of_its_kinds():
    assert mask_mixture("center,box, sunglasses") == ("center", "box", "sunglasses")
    assert mask_mixture("full") == FULL_KINDS and mask_mixture("mix") == MIX_KINDS
    assert mask_mixture("irregular") == ("irregular",)
    masks = draw_masks("center,box", generator(), 100, SIZE, "cpu")[:, 0] > 0
    centre = make_masks_torch("center", None, 1, SIZE, "cpu")[0]
    is_centre = torch.tensor([torch.equal(m, centre) for m in masks])
    assert 20 < is_centre.sum() < 80
    rectangle_shapes(masks[~is_centre].numpy())
    rng = np.random.default_rng(0)
    assert {pick_kind("full", rng) for _ in range(300)} == set(FULL_KINDS)
    assert {pick_kind("center,large", rng) for _ in range(50)} == {"center", "large"}


@pytest.mark.parametrize("spec", ["center,blob", "full,box", "", "center,"])
def test_an_unknown_kind_in_masks_is_a_one_line_error(spec):
    with pytest.raises(ValueError) as error:
        check_mask_kind(spec)
    message = str(error.value)
    assert "\n" not in message and "unknown mask kind" in message and "box" in message
    with pytest.raises(ValueError):
        FaceDataset(np.zeros((1, SIZE, SIZE, 3), np.uint8), SIZE, spec)


def test_the_loader_path_draws_face_parts_from_each_images_own_map():
    count = 6
    maps = face_maps(count, seed=1).numpy()
    index = np.array([0, 1, 2, 3, -1, -1])                        # the last two have no map of their own
    images = np.random.default_rng(0).integers(0, 255, (count, SIZE, SIZE, 3), dtype=np.uint8)
    faces = FaceDataset(images, SIZE, "sunglasses,surgical-mask", parsing=maps[:4], parsing_index=index)
    for position in range(count):
        for epoch in range(4):
            item = faces[(position, [5, epoch, position])]
            flipped = not torch.equal(item["image"], torch.from_numpy(images[position]).permute(2, 0, 1) / 255.0)
            mask = item["mask"][0].numpy() > 0
            own = [index[position]] if index[position] >= 0 else range(4)
            candidates = [draw(labels[:, ::-1] if flipped else labels)
                          for labels in maps[own] for draw in (sunglasses_from_parsing, surgical_mask_from_parsing)]
            assert any(np.array_equal(mask, c) for c in candidates), (position, epoch)


def test_full_on_the_loader_path_draws_every_kind():
    faces = FaceDataset(np.zeros((1, SIZE, SIZE, 3), np.uint8), SIZE, "full", flip=False)
    areas = np.array([faces[(0, [1, 0, i])]["mask"].mean().item() for i in range(120)])
    assert np.any(areas == 0.25) and np.any(areas >= 0.4)         # centre and large among them
    assert len(set(areas.round(4))) > 30


def test_reframe_pair_moves_the_hole_with_the_face_and_is_fixed_by_its_seed():
    from facefill.data.augment import reframe_pair

    image = np.zeros((64, 64, 3), np.uint8)
    image[20:36, 24:40] = 255                          # a white patch, exactly under the hole
    mask = np.zeros((64, 64), bool)
    mask[20:36, 24:40] = True
    moves = [reframe_pair(image, mask, seed) for seed in range(6)]
    for moved, hole in moves:
        assert moved.dtype == np.uint8 and hole.dtype == bool and hole.shape == mask.shape
        assert 0.8 ** 2 * mask.sum() * 0.8 < hole.sum() < 1.25 ** 2 * mask.sum() * 1.2
        assert moved[hole].mean() > 200                # the hole still covers the patch
        assert moved[~hole].mean() < 40
    assert len({hole.tobytes() for _, hole in moves}) == 6
    again, hole_again = reframe_pair(image, mask, 3)
    assert np.array_equal(again, moves[3][0]) and np.array_equal(hole_again, moves[3][1])
