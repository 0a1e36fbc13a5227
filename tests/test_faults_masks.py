"""Masks as users make them (issue 14, mask items): each test failed before its fix."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import CELEBA_HQ
from facefill.cli import main
from facefill.data import folders
from facefill.data.folders import FileFailure


def hq_face(index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CelebA-HQ face (256 px) and its parsing map (0 = background)."""
    image_path = CELEBA_HQ / "images" / f"{index}.jpg"
    parsing_path = CELEBA_HQ / "parsing" / f"{index}.png"
    if not image_path.is_file() or not parsing_path.is_file():
        pytest.skip("../shared/data/celeba-hq is not available")
    return np.asarray(Image.open(image_path).convert("RGB")).copy(), np.asarray(Image.open(parsing_path))


def test_mask_dir_pointing_at_the_input_folder_pairs_stem_mask_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (16, 16), (200, 150, 120)).save(src / f"{stem}.png")
    Image.new("RGB", (16, 16), (90, 90, 90)).save(src / "b.jpg")
    hole = np.zeros((16, 16), np.uint8)
    hole[4:8, 4:8] = 255
    Image.fromarray(hole).save(src / "a_mask.png")
    images = folders.list_images(src)
    specs = folders.pair_masks(images, mask_dir=src)
    by_name = {image.name: spec for image, spec in zip(images, specs)}
    assert by_name["a.png"].path == src / "a_mask.png"
    for name in ("b.png", "b.jpg"):  # never the image itself, nor its namesake of another format
        assert by_name[name].path is None and "no mask" in by_name[name].reason


def test_invert_mask_with_an_rgba_mask_never_makes_transparent_pixels_holes(tmp_path):
    rgba = np.zeros((12, 12, 4), np.uint8)     # transparent layer ...
    rgba[3:6, 2:10] = (0, 0, 0, 255)           # ... with opaque black strokes: the hole under --invert-mask
    path = tmp_path / "strokes.png"
    Image.fromarray(rgba, "RGBA").save(path)
    hole = folders.read_mask_file(path, (12, 12), invert=True)
    expected = np.zeros((12, 12), bool)
    expected[3:6, 2:10] = True
    assert np.array_equal(hole, expected)
    assert not folders.read_mask_file(path, (12, 12)).any()  # black strokes are no hole without it


def test_black_background_portrait_is_not_an_occluder():
    image, parsing = hq_face(3)
    image[parsing == 0] = 0                    # a portrait on a pure black background
    assert (parsing == 0).mean() > 0.1
    hole = folders.detect_occluder(image)
    assert hole is None or not hole[parsing == 0].any()


def test_a_zero_one_mask_counts_one_as_hole(tmp_path):
    values = np.zeros((10, 10), np.uint8)
    values[2:5, 3:7] = 1
    path = tmp_path / "m.png"
    Image.fromarray(values, "L").save(path)
    assert np.array_equal(folders.read_mask_file(path, (10, 10)), values == 1)


def test_a_mask_in_the_stored_orientation_of_an_exif_rotated_image_says_so(tmp_path):
    stored = np.full((20, 30, 3), 120, np.uint8)            # 30 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                        # displayed turned by 90 degrees: 20x30
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif)
    mask_path = tmp_path / "photo_mask.png"
    Image.new("L", (30, 20), 255).save(mask_path)           # drawn on the stored pixels
    decoded = folders.decode_image(path)
    assert decoded.shape == (30, 20)
    with pytest.raises(FileFailure) as failure:
        folders.load_mask(folders.MaskSpec("beside", path=mask_path), decoded.rgb)
    assert "displayed orientation" in failure.value.reason and "30x20" in failure.value.reason


def test_inpaint_negative_steps_is_one_usage_error_before_any_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16, 16), (200, 150, 120)).save(src / "a.png")
    Image.new("L", (16, 16), 255).save(src / "a_mask.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["inpaint", str(src), str(out), "--method", "telea", "--steps", "-1"])
    assert result.exit_code == 2, result.output
    assert "--steps" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (out / "summary.json").exists() or json.loads((out / "summary.json").read_text())["done"] == []
