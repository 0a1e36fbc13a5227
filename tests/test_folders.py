"""facefill.data.folders: listing, mask pairing and reading, occluder detection, decoding."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facefill.data import folders
from facefill.data.folders import FileFailure

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba-aligned"


def face(tiny_faces: Path, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(sorted(tiny_faces.glob("*.png"))[index]).convert("RGB")).copy()


def celeba_faces(count: int, size: int = 128) -> list[np.ndarray]:
    files = sorted(CELEBA.glob("*.jpg"))[:count]
    if len(files) < count:
        pytest.skip("../shared/data/celeba-aligned is not available")
    return [np.asarray(Image.open(f).convert("RGB").crop((0, 20, 178, 198))
                       .resize((size, size), Image.Resampling.LANCZOS)).copy() for f in files]


def touch_image(path: Path, size=(8, 8)) -> Path:
    Image.new("RGB", size, (90, 120, 150)).save(path)
    return path


# ------------------------------------------------------------------------------------- listing

def test_list_images_filters_and_sorts(tmp_path):
    for name in ("b.JPG", "a.png", "c_mask.png", "d_compare.png", ".hidden.png", "e.webp"):
        touch_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    touch_image(tmp_path / "sub" / "f.png")
    assert [p.name for p in folders.list_images(tmp_path)] == ["a.png", "b.JPG", "e.webp"]


def test_pairing_precedence(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    images = [touch_image(folder / "a.png"), touch_image(folder / "b.jpg")]
    touch_image(folder / "a_mask.png")
    specs = folders.pair_masks(images)
    assert [s.source for s in specs] == ["beside", "detected"]
    assert specs[0].path == folder / "a_mask.png"

    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    touch_image(mask_dir / "b.png")
    specs = folders.pair_masks(images, mask_dir=mask_dir)  # the option beats the file beside
    assert [s.source for s in specs] == ["mask-dir", "mask-dir"]
    assert specs[0].path is None and "a.*" in specs[0].reason and str(mask_dir) in specs[0].reason
    assert specs[1].path == mask_dir / "b.png"

    one = touch_image(tmp_path / "one.png")
    assert {s.source for s in folders.pair_masks(images, mask=one)} == {"mask"}
    assert [s.source for s in folders.pair_masks(images, masks="center")] == ["generated:center"] * 2
    with pytest.raises(ValueError, match="at most one"):
        folders.pair_masks(images, mask=one, masks="center")
    with pytest.raises(ValueError, match="unknown mask kind"):
        folders.pair_masks(images, masks="no-such-kind")


def test_mask_beside_with_any_suffix(tmp_path):
    image = touch_image(tmp_path / "x.png")
    touch_image(tmp_path / "x_mask.jpg")
    assert folders.pair_masks([image])[0].path == tmp_path / "x_mask.jpg"


def test_generated_masks_are_deterministic():
    first = folders.generated_mask("center", 3, 5, (20, 30))
    assert first.shape == (20, 30) and first.dtype == bool and first.any()
    assert np.array_equal(first, folders.generated_mask("center", 3, 5, (20, 30)))


# ----------------------------------------------------------------------------------- mask files

def test_jpeg_mask_with_grey_values_is_binarised(tmp_path):
    values = np.zeros((32, 48), np.uint8)
    values[:, 8:16], values[:, 16:24], values[:, 24:32], values[:, 32:40] = 60, 100, 180, 255
    path = tmp_path / "m.jpg"
    Image.fromarray(values).save(path, quality=90)
    hole = folders.read_mask_file(path, (32, 48))
    assert hole.dtype == bool
    assert np.array_equal(hole[4:-4, 2:6], np.zeros((24, 4), bool))          # 0
    assert not hole[4:-4, 10:14].any() and not hole[4:-4, 18:22].any()       # 60, 100
    assert hole[4:-4, 26:30].all() and hole[4:-4, 34:38].all()               # 180, 255
    inverted = folders.read_mask_file(path, (32, 48), invert=True)
    assert np.array_equal(inverted[4:-4, 2:46], ~hole[4:-4, 2:46])


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_mask_modes(tmp_path, mode):
    expected = np.zeros((12, 10), bool)
    expected[3:9, 2:7] = True
    grey = Image.fromarray(expected.astype(np.uint8) * 255)
    image = Image.fromarray(expected.astype(np.uint16) * 65535) if mode == "I;16" else grey.convert(mode)
    image.save(tmp_path / "m.png")
    assert np.array_equal(folders.read_mask_file(tmp_path / "m.png", (12, 10)), expected)


def test_transparent_mask_pixels_are_not_holes(tmp_path):
    rgba = np.full((6, 6, 4), 255, np.uint8)  # white everywhere ...
    rgba[..., 3] = 0                           # ... but transparent
    rgba[2:4, 2:4, 3] = 255                    # except the hole
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    hole = folders.read_mask_file(tmp_path / "m.png", (6, 6))
    assert hole.sum() == 4 and hole[2:4, 2:4].all()


def test_wrong_size_mask_fails_naming_the_mask(tmp_path):
    path = tmp_path / "odd_mask.png"
    Image.new("L", (10, 12), 255).save(path)
    with pytest.raises(FileFailure) as failure:
        folders.read_mask_file(path, (12, 11))
    assert str(path) in failure.value.reason and "10x12" in failure.value.reason


def test_undecodable_mask_fails_naming_the_mask(tmp_path):
    path = tmp_path / "bad_mask.png"
    path.write_text("not a png")
    with pytest.raises(FileFailure, match="bad_mask.png"):
        folders.load_mask(folders.MaskSpec("beside", path=path), np.zeros((4, 4, 3), np.uint8))


# ---------------------------------------------------------------------------- occluder detection

def test_detects_a_painted_black_box():
    image = celeba_faces(1)[0]
    image[40:70, 30:90] = 0
    hole = folders.detect_occluder(image)
    assert hole is not None and hole[40:70, 30:90].all()
    assert hole.sum() <= 34 * 64  # the box dilated by at most 2 pixels
    assert np.array_equal(folders.load_mask(folders.MaskSpec("detected"), image), hole)


def test_detects_an_anti_aliased_grey_ellipse(tiny_faces):
    import cv2

    image = celeba_faces(2)[1]
    cv2.ellipse(image, (64, 60), (30, 14), 10, 0, 360, (128, 128, 128), -1, cv2.LINE_AA)
    inside = np.zeros(image.shape[:2], np.uint8)
    cv2.ellipse(inside, (64, 60), (30, 14), 10, 0, 360, 1, -1, cv2.LINE_AA)
    hole = folders.detect_occluder(image)
    assert hole is not None and hole[inside > 0].all()


def test_natural_faces_have_no_occluder(tiny_faces):
    for image in [face(tiny_faces, i) for i in range(6)] + celeba_faces(6):
        assert folders.detect_occluder(image) is None
    with pytest.raises(FileFailure, match=folders.NO_MASK_REASON):
        folders.load_mask(folders.MaskSpec("detected"), face(tiny_faces))


def test_a_small_painted_region_is_not_an_occluder(tiny_faces):
    image = celeba_faces(1)[0]
    image[60:62, 60:64] = 0  # 8 pixels: far below 1.5 % of the image
    assert folders.detect_occluder(image) is None


# ------------------------------------------------------------------------------------- decoding

@pytest.fixture
def rgb(tiny_faces) -> np.ndarray:
    return face(tiny_faces)


@pytest.mark.parametrize("mode,suffix", [("RGB", ".png"), ("L", ".png"), ("P", ".png"), ("1", ".png"),
                                         ("CMYK", ".jpg"), ("CMYK", ".tif"), ("RGB", ".bmp"),
                                         ("RGB", ".webp"), ("RGB", ".gif")])
def test_decode_modes(tmp_path, rgb, mode, suffix):
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"x{suffix}"
    image.save(path)
    decoded = folders.decode_image(path)
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == rgb.shape
    assert decoded.alpha is None
    if suffix in (".png", ".tif", ".bmp"):
        expected = np.asarray(image.convert("RGB"))
        assert np.array_equal(decoded.rgb, expected)
    if mode == "CMYK":
        assert np.abs(decoded.rgb.astype(int) - rgb.astype(int)).mean() < 12


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_decode_keeps_alpha(tmp_path, rgb, mode):
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    image = Image.fromarray(rgb)
    image.putalpha(Image.fromarray(alpha))
    image = image.convert(mode)
    image.save(tmp_path / "x.png")
    decoded = folders.decode_image(tmp_path / "x.png")
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, alpha)
    assert decoded.rgb.shape == rgb.shape


def test_decode_palette_with_transparency(tmp_path, rgb):
    image = Image.fromarray(rgb).convert("P")
    image.info["transparency"] = 0
    image.save(tmp_path / "x.png", transparency=0)
    decoded = folders.decode_image(tmp_path / "x.png")
    assert decoded.alpha is not None and decoded.alpha.shape == rgb.shape[:2]


def test_decode_16_bit_grey(tmp_path):
    grey = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(grey * 257).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as check:
        assert check.mode.startswith("I")
    decoded = folders.decode_image(tmp_path / "x.png")
    assert np.array_equal(decoded.rgb[..., 0], grey.astype(np.uint8))
    assert np.array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])


def test_decode_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (20, 10), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "x.jpg", exif=exif.tobytes())
    decoded = folders.decode_image(tmp_path / "x.jpg")
    assert decoded.rgb.shape == (20, 10, 3)
    assert folders.image_size(tmp_path / "x.jpg") == (10, 20)


def test_bad_files_fail_with_a_reason(tmp_path, rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("definitely not an image\n")
    for name in ("truncated.png", "truncated.jpg", "empty.png", "text.png"):
        with pytest.raises(FileFailure) as failure:
            folders.decode_image(tmp_path / name)
        assert failure.value.reason.startswith(folders.DECODE_REASON), name


def test_unicode_file_name(tmp_path, rgb):
    path = tmp_path / "visage_é_顔.png"
    Image.fromarray(rgb).save(path)
    assert folders.list_images(tmp_path) == [path]
    assert np.array_equal(folders.decode_image(path).rgb, rgb)


def test_output_names_and_formats():
    assert folders.output_name(Path("a/b.JPG")) == "b.JPG"
    assert folders.output_name(Path("b.gif")) == "b.png"
    assert folders.output_format("b.jpg") == "JPEG" and not folders.keeps_alpha("JPEG")
    assert folders.output_format("b.tiff") == "TIFF" and folders.keeps_alpha("TIFF")
    assert folders.output_format("b.weird") == "PNG"
