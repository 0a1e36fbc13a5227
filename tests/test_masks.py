"""Mask generators: areas, determinism, shapes, and face-part placement on real parsing maps."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefill.data import masks as masks_module
from facefill.data.masks import (DEFAULT_AREAS, MASK_KINDS, default_parsing_dir, make_mask, mask_area,
                                 mask_generator)

PARSING = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-hq" / "parsing"
STROKE_KINDS = ("irregular", "irregular-thin", "irregular-medium", "irregular-thick", "random")
RANDOM_KINDS = ("random-box", "box", "large") + STROKE_KINDS
SEEDS = range(6)


def rng(seed):
    return np.random.default_rng(seed)


def face_labels(size=64) -> np.ndarray:
    """A synthetic CelebAMask-HQ-like label map: skin oval, brows, eyes, nose, lips, mouth."""
    labels = np.zeros((size, size), np.uint8)
    s = size / 64
    yy, xx = np.mgrid[0:size, 0:size]
    labels[((xx - 32 * s) / (20 * s)) ** 2 + ((yy - 34 * s) / (26 * s)) ** 2 <= 1] = 1
    for (x0, x1, y0, y1, label) in [(18, 28, 20, 22, 6), (36, 46, 20, 22, 7), (19, 27, 25, 28, 4),
                                    (37, 45, 25, 28, 5), (29, 35, 24, 38, 2), (25, 39, 42, 44, 11),
                                    (25, 39, 44, 45, 10), (25, 39, 45, 48, 12)]:
        labels[round(y0 * s):round(y1 * s), round(x0 * s):round(x1 * s)] = label
    return labels


def real_labels(stem: str) -> np.ndarray:
    path = PARSING / f"{stem}.png"
    if not path.is_file():
        pytest.skip("../shared/data/celeba-hq/parsing is not available")
    with Image.open(path) as image:
        return np.array(image)


def test_kinds_are_the_documented_ones():
    assert MASK_KINDS == ("center", "random-box", "irregular", "irregular-thin", "irregular-medium",
                          "irregular-thick", "random", "sunglasses", "surgical-mask", "box", "large")


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_kind_returns_a_nonempty_bool_mask(kind):
    kwargs = {"parsing": face_labels()} if kind in ("sunglasses", "surgical-mask") else {}
    mask = make_mask(kind, rng(0), 64, **kwargs)
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert 0 < mask_area(mask) < 1


@pytest.mark.parametrize("size", [32, 64, 128, (64, 96), (96, 48)])
def test_center_is_a_quarter_of_the_image(size):
    mask = make_mask("center", rng(0), size)
    h, w = mask.shape
    assert mask_area(mask) == 0.25
    ys, xs = np.nonzero(mask)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (h // 4, 3 * h // 4, w // 4, 3 * w // 4)


def test_center_fraction():
    assert mask_area(make_mask("center", rng(0), 100, fraction=0.3)) == pytest.approx(0.09)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_box_sides_in_range(seed):
    mask = make_mask("random-box", rng(seed), (64, 80))
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert 16 <= height <= 32 and 20 <= width <= 40
    assert mask_area(mask) == pytest.approx(height * width / (64 * 80))


def box_shape(mask) -> tuple[float, float]:
    """(area fraction, width/height ratio relative to the image's) of a mask that must be one rectangle."""
    ys, xs = np.nonzero(mask)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert mask.sum() == height * width  # exactly its bounding box: one rectangle
    return mask_area(mask), (width / mask.shape[1]) / (height / mask.shape[0])


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_box_is_one_rectangle_of_ten_to_fifty_percent_of_the_area(size):
    areas, ratios = np.array([box_shape(make_mask("box", rng(seed), size)) for seed in range(80)]).T
    assert areas.min() >= 0.1 - 0.01 and areas.max() <= 0.5 + 0.01, (areas.min(), areas.max())
    assert areas.min() < 0.15 and areas.max() > 0.45          # the whole range, not a corner of it
    assert ratios.min() >= 0.5 * 0.9 and ratios.max() <= 2 / 0.9, (ratios.min(), ratios.max())
    assert ratios.min() < 0.7 and ratios.max() > 1.4


def test_box_area_option_is_honoured():
    areas = [mask_area(make_mask("box", rng(seed), 64, area=(0.3, 0.32))) for seed in range(6)]
    assert all(0.29 <= a <= 0.33 for a in areas), areas


def test_large_covers_forty_to_sixty_percent():
    areas = np.array([mask_area(make_mask("large", rng(seed), 64)) for seed in range(30)])
    assert areas.min() >= 0.4 and areas.max() <= 0.6, (areas.min(), areas.max())
    assert areas.max() - areas.min() > 0.08
    area = mask_area(make_mask("large", rng(0), 64, area=(0.5, 0.55)))
    assert 0.5 <= area <= 0.55


@pytest.mark.parametrize("kind", STROKE_KINDS)
def test_stroke_areas_within_documented_range(kind):
    lo, hi = DEFAULT_AREAS[kind]
    areas = [mask_area(make_mask(kind, rng(seed), 64)) for seed in SEEDS]
    assert all(lo <= a <= hi for a in areas), areas
    assert len(set(areas)) > 1


def test_random_is_twenty_to_thirty_percent():
    areas = [mask_area(make_mask("random", rng(seed), 128)) for seed in range(4)]
    assert all(0.2 <= a <= 0.3 for a in areas), areas


def test_stroke_area_option_is_honoured():
    for seed in range(3):
        area = mask_area(make_mask("irregular-thick", rng(seed), 64, area=(0.05, 0.08)))
        assert 0.05 <= area <= 0.08
        area = mask_area(make_mask("irregular-thin", rng(seed), 64, area=(0.4, 0.45)))
        assert 0.4 <= area <= 0.45


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_same_seed_same_mask_different_seed_different_mask(kind):
    first, again = make_mask(kind, rng(7), 64), make_mask(kind, rng(7), 64)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, make_mask(kind, rng(8), 64))


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_non_square_sizes(kind):
    kwargs = {"parsing": face_labels()} if kind in ("sunglasses", "surgical-mask") else {}
    mask = make_mask(kind, rng(1), (48, 80), **kwargs)
    assert mask.shape == (48, 80) and mask.any()


def test_mask_generator_is_make_mask_curried():
    generate = mask_generator("irregular", area=(0.2, 0.25))
    assert np.array_equal(generate(rng(3), 64), make_mask("irregular", rng(3), 64, area=(0.2, 0.25)))


def test_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="random-box"):
        make_mask("blob", rng(0), 64)
    with pytest.raises(ValueError, match="surgical-mask"):
        mask_generator("blob")


def test_mask_area():
    mask = np.zeros((4, 5), bool)
    mask[0, :2] = True
    assert mask_area(mask) == 0.1


def _rows(mask):
    ys = np.nonzero(mask)[0] / mask.shape[0]
    return ys.min(), ys.mean(), ys.max()


@pytest.mark.parametrize("stem", ["2", "3", "4"])
def test_face_parts_on_real_parsing_maps(stem):
    labels = real_labels(stem)
    glasses = make_mask("sunglasses", rng(0), 128, parsing=labels)
    cover = make_mask("surgical-mask", rng(0), 128, parsing=labels)
    assert glasses.any() and cover.any()
    assert _rows(glasses)[1] < 0.5 < _rows(cover)[1]
    assert _rows(glasses)[2] < 0.6 and _rows(cover)[0] > 0.35
    assert _rows(glasses)[2] < _rows(cover)[2]
    # sunglasses hide both eyes; the surgical mask hides the mouth and lips
    small = masks_module._resize_labels(labels, 128, 128)
    for label in (4, 5):
        if (small == label).any():
            assert glasses[small == label].mean() > 0.9
    lips = np.isin(small, (10, 11, 12))
    assert cover[lips].mean() > 0.9
    assert 0.01 < mask_area(glasses) < 0.3 and 0.05 < mask_area(cover) < 0.45


def test_sunglasses_cover_worn_eyeglasses():
    labels = real_labels("0")                              # a face wearing glasses (label 3)
    assert (labels == 3).any()
    glasses = make_mask("sunglasses", rng(0), 256, parsing=labels)
    assert glasses[labels == 3].mean() > 0.95
    assert _rows(glasses)[1] < _rows(make_mask("surgical-mask", rng(0), 256, parsing=labels))[1]


def test_face_parts_fall_back_to_geometric_occluders():
    empty = np.zeros((64, 64), np.uint8)
    glasses = make_mask("sunglasses", rng(0), 64, parsing=empty)
    cover = make_mask("surgical-mask", rng(0), 64, parsing=empty)
    assert 0.3 <= _rows(glasses)[0] and _rows(glasses)[2] <= 0.55
    assert 0.5 <= _rows(cover)[0] and _rows(cover)[2] <= 0.95


def test_face_parts_from_a_parsing_folder(tmp_path):
    for stem in ("0", "1", "2"):
        real_labels(stem)                                  # skips without the data
        shutil.copy(PARSING / f"{stem}.png", tmp_path / f"{stem}.png")
    picks = [make_mask("sunglasses", rng(seed), 64, parsing_dir=tmp_path) for seed in range(6)]
    assert all(p.any() for p in picks)
    assert np.array_equal(picks[0], make_mask("sunglasses", rng(0), 64, parsing_dir=tmp_path))
    assert len({p.tobytes() for p in picks}) > 1          # the rng picks different maps


def test_missing_parsing_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        make_mask("sunglasses", rng(0), 64, parsing_dir=tmp_path / "none")
    monkeypatch.setenv("FACEFILL_PARSING_DIR", str(tmp_path / "none"))
    assert default_parsing_dir() == tmp_path / "none"
    assert make_mask("surgical-mask", rng(0), 64).any()    # the default folder is missing: geometric


def test_default_parsing_dir_is_the_shared_data(monkeypatch):
    monkeypatch.delenv("FACEFILL_PARSING_DIR", raising=False)
    assert default_parsing_dir().resolve() == PARSING.resolve()
