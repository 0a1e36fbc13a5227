"""facefill.engine.inpaint: fitting and pasting back, the batch engine, and ``facefill inpaint``."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from facefill import fileio
from facefill.cli import main
from facefill.config import InpaintConfig
from facefill.engine.inpaint import crop_box, fill_batch, fill_image, run_inpaint
from facefill.inference.fitting import box_transform, hole_in, warp_in
from facefill.methods.base import Inpainter
from facefill.registry import create_method

EXAMPLES = Path(__file__).resolve().parents[1] / "facefill" / "examples" / "occluded"


class FixedSizeFake(Inpainter):
    """A 16x16 'model' that fills with one grey value and records what it was given."""

    name = "fake-16"
    size = 16

    def __init__(self, value: float = 128 / 255):
        self.value = value
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def predict(self, image, mask):
        assert image.shape[-2:] == (16, 16) and mask.shape[-2:] == (16, 16)
        self.calls.append((image.clone(), mask.clone()))
        return torch.full_like(image, self.value)


def faces(tiny_faces: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")).copy() for p in sorted(tiny_faces.glob("*.png"))]


def box_mask(shape, top, bottom, left, right) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def assert_only_hole_changed(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> None:
    assert after.shape == before.shape and after.dtype == np.uint8
    assert np.array_equal(after[~mask], before[~mask])


# ------------------------------------------------------------------------- fitting and filling

def test_native_size_method_changes_only_hole_pixels(tiny_faces):
    image = faces(tiny_faces)[0]
    mask = box_mask(image.shape[:2], 8, 20, 6, 26)
    painted = image.copy()
    painted[mask] = 0
    filled = fill_image(create_method("telea"), painted, mask, "cpu")
    assert_only_hole_changed(painted, filled, mask)
    assert filled[mask].mean() > 40  # the black box was filled in


@pytest.mark.parametrize("shape,box", [
    ((48, 80), (10, 30, 50, 70)),    # landscape, small hole: square crop around the hole
    ((80, 48), (60, 78, 5, 20)),     # portrait, hole near the bottom edge: crop clipped
    ((40, 90), (5, 35, 2, 88)),      # hole wider than the square: whole image, distorted
    ((10, 12), (2, 6, 3, 9)),        # smaller than the native size: enlarged
    ((16, 16), (4, 8, 4, 8)),        # already native
])
def test_fixed_size_method_changes_only_hole_pixels(shape, box):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mask = box_mask(shape, *box)
    fake = FixedSizeFake()
    filled = fill_image(fake, image, mask, "cpu")
    assert_only_hole_changed(image, filled, mask)
    assert len(fake.calls) == 1
    seen_image, seen_mask = fake.calls[0]
    assert seen_mask.sum() > 0
    assert torch.all(seen_image[seen_mask.expand_as(seen_image) > 0] == 0)  # hole zeroed


def test_thin_hole_survives_downscaling():
    image = np.full((100, 100, 3), 128, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[50, 10:90] = True      # one pixel high, shrunk more than 6x
    image[mask] = 0             # the occluder must not leak into the fill
    fake = FixedSizeFake(128 / 255)
    filled = fill_image(fake, image, mask, "cpu")
    assert fake.calls[0][1].sum() > 0
    assert np.array_equal(filled, np.full_like(image, 128))


def test_crop_box_is_a_square_around_the_hole():
    mask = box_mask((60, 100), 20, 30, 70, 90)
    top, bottom, left, right = crop_box(mask)
    assert (bottom - top, right - left) == (60, 60)
    assert left <= 70 and right >= 90 and 0 <= left and right <= 100
    matrix = box_transform((top, bottom, left, right), 16)
    assert warp_in(np.zeros((60, 100, 3), np.uint8), matrix, 16).shape == (16, 16, 3)
    assert hole_in(mask, matrix, 16).shape == (16, 16)


def test_fill_batch_groups_mixed_sizes_and_skips_empty_masks(tiny_faces):
    images = faces(tiny_faces)[:3]
    images[1] = images[1][:, :24].copy()
    masks = [box_mask(i.shape[:2], 8, 16, 8, 16) for i in images]
    masks[2][:] = False
    out = fill_batch(create_method("telea"), images, masks, torch.device("cpu"), batch_size=2)
    assert len(out) == 3
    for image, mask, result in zip(images, masks, out):
        assert_only_hole_changed(image, result, mask)
    assert np.array_equal(out[2], images[2])


# -------------------------------------------------------------------------------- run_inpaint

def occluded_folder(tiny_faces: Path, folder: Path) -> Path:
    """a.png: painted black box (detected); b.jpg + b_mask.png; c.png RGBA with a painted box;
    d.gif: a palette image with a painted box."""
    folder.mkdir(parents=True, exist_ok=True)
    images = faces(tiny_faces)
    a = images[0].copy()
    a[8:20, 6:26] = 0
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(images[1]).save(folder / "b.jpg", quality=95)
    Image.fromarray(box_mask((32, 32), 10, 22, 8, 24).astype(np.uint8) * 255).save(folder / "b_mask.png")
    c = images[2].copy()
    c[10:24, 8:22] = (250, 0, 250)
    rgba = Image.fromarray(c)
    rgba.putalpha(Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))))
    rgba.save(folder / "c.png")
    d = images[3].copy()
    d[4:16, 4:28] = 0
    Image.fromarray(d).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "d.gif")
    return folder


def config(src, out, **values) -> InpaintConfig:
    return InpaintConfig(input_dir=str(src), output_dir=str(out), method="telea", device="cpu",
                         batch_size=2, workers=2, **values)


def test_outputs_keep_stem_format_and_alpha(tiny_faces, tmp_path):
    src = occluded_folder(tiny_faces, tmp_path / "in")
    out = tmp_path / "out"
    summary = run_inpaint(config(src, out, save_comparison=True))
    assert summary["failed"] == []
    assert summary["done"] == ["a.png", "b.jpg", "c.png", "d.gif"]
    assert summary["mask_sources"] == {"a.png": "detected", "b.jpg": "beside", "c.png": "detected",
                                       "d.gif": "detected"}
    with Image.open(out / "a.png") as image:
        assert image.format == "PNG" and image.mode == "RGB"
        a = np.asarray(image)
    before = np.asarray(Image.open(src / "a.png"))
    outside = ~np.pad(np.ones((16, 24), bool), ((6, 10), (4, 4)))  # beyond box + dilation
    assert np.array_equal(a[outside], before[outside]) and a[8:20, 6:26].mean() > 40
    with Image.open(out / "b.jpg") as image:
        assert image.format == "JPEG"
    with Image.open(out / "c.png") as image:
        assert image.mode == "RGBA"
        assert np.array_equal(np.asarray(image)[..., 3], np.asarray(Image.open(src / "c.png"))[..., 3])
    with Image.open(out / "d.png") as image:
        assert image.format == "PNG"
    for stem in "abcd":
        assert (out / f"{stem}_compare.png").exists()
    with Image.open(out / "a_compare.png") as image:
        assert image.size == (32 * 2 + 4, 32)


def test_summary_json(tiny_faces, tmp_path):
    src = occluded_folder(tiny_faces, tmp_path / "in")
    (src / "broken.png").write_text("nope")
    summary_path = tmp_path / "report" / "run.json"
    summary = run_inpaint(config(src, tmp_path / "out", summary=str(summary_path)))
    written = json.loads(summary_path.read_text())
    assert written == summary
    assert {"method", "weights", "device", "done", "skipped", "failed", "seconds", "images_per_second",
            "mask_sources"} <= set(written)
    assert written["method"] == "telea" and written["weights"] is None and written["device"] == "cpu"
    assert written["failed"] == [{"file": "broken.png",
                                  "reason": "cannot decode image (truncated or not an image)"}]
    assert written["seconds"] > 0 and written["images_per_second"] > 0
    assert not (tmp_path / "out" / "summary.json").exists()


def test_default_summary_path_and_no_images(tmp_path, tiny_faces):
    src = occluded_folder(tiny_faces, tmp_path / "in")
    run_inpaint(config(src, tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["done"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x_mask.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no images found"):
        run_inpaint(config(empty, tmp_path / "out2"))


def test_skip_existing_then_overwrite(tiny_faces, tmp_path):
    src = occluded_folder(tiny_faces, tmp_path / "in")
    out = tmp_path / "out"
    run_inpaint(config(src, out))
    (out / "a.png").write_bytes(b"marker")
    again = run_inpaint(config(src, out))
    assert again["done"] == [] and again["skipped"] == ["a.png", "b.jpg", "c.png", "d.gif"]
    assert (out / "a.png").read_bytes() == b"marker"
    forced = run_inpaint(config(src, out, overwrite=True))
    assert len(forced["done"]) == 4 and forced["skipped"] == []
    assert (out / "a.png").read_bytes() != b"marker"


def test_write_failure_leaves_no_partial_file(tiny_faces, tmp_path, monkeypatch):
    src = occluded_folder(tiny_faces, tmp_path / "in")
    out = tmp_path / "out"
    real_replace = os.replace

    def replace(source, target):
        if Path(target).name == "b.jpg":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(fileio.os, "replace", replace)
    result = CliRunner().invoke(main, ["inpaint", str(src), str(out), "--method", "telea", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "failed: " in result.output and "b.jpg" in result.output and "No space left" in result.output
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.png", "c.png", "d.png", "summary.json"]  # no b.jpg, no temporaries
    summary = json.loads((out / "summary.json").read_text())
    assert [f["file"] for f in summary["failed"]] == ["b.jpg"]


def test_generated_masks_are_deterministic_and_empty_masks_copy_through(tiny_faces, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for index, image in enumerate(faces(tiny_faces)[:3]):
        Image.fromarray(image).save(src / f"{index}.png")
    first = run_inpaint(config(src, tmp_path / "one", masks="center", seed=3))
    second = run_inpaint(config(src, tmp_path / "two", masks="center", seed=3))
    assert first["mask_sources"] == {f"{i}.png": "generated:center" for i in range(3)}
    for index in range(3):
        one, two = tmp_path / "one" / f"{index}.png", tmp_path / "two" / f"{index}.png"
        assert one.read_bytes() == two.read_bytes()
    assert second["done"] == ["0.png", "1.png", "2.png"]

    Image.new("L", (32, 32), 0).save(tmp_path / "empty.png")
    copied = run_inpaint(config(src, tmp_path / "three", mask=str(tmp_path / "empty.png")))
    assert len(copied["done"]) == 3 and set(copied["notes"]) == {"0.png", "1.png", "2.png"}
    assert (tmp_path / "three" / "0.png").read_bytes() == (src / "0.png").read_bytes()


def test_mask_dir_and_invert(tiny_faces, tmp_path):
    src, masks = tmp_path / "in", tmp_path / "masks"
    src.mkdir()
    masks.mkdir()
    image = faces(tiny_faces)[0]
    Image.fromarray(image).save(src / "x.png")
    Image.fromarray(image).save(src / "y.png")
    hole = box_mask((32, 32), 4, 12, 4, 12)
    Image.fromarray((~hole).astype(np.uint8) * 255).save(masks / "x.png")  # black = hole
    summary = run_inpaint(config(src, tmp_path / "out", mask_dir=str(masks), invert_mask=True))
    assert summary["done"] == ["x.png"]
    assert summary["failed"][0]["file"] == "y.png" and "no mask y.*" in summary["failed"][0]["reason"]
    filled = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert_only_hole_changed(image, filled, hole)


def test_unicode_names_and_mixed_failures(tiny_faces, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    image = faces(tiny_faces)[0].copy()
    image[8:20, 8:20] = 0
    Image.fromarray(image).save(src / "visage_é_顔.png")
    Image.fromarray(faces(tiny_faces)[1]).save(src / "natural.png")
    Image.fromarray(image).save(src / "wrong.png")
    Image.new("L", (8, 10), 255).save(src / "wrong_mask.png")  # another aspect ratio
    (src / "zero.jpg").write_bytes(b"")
    summary = run_inpaint(config(src, tmp_path / "out"))
    assert summary["done"] == ["visage_é_顔.png"]
    reasons = {f["file"]: f["reason"] for f in summary["failed"]}
    assert reasons["natural.png"] == "no mask given and no flat-filled occluder found"
    assert "wrong_mask.png" in reasons["wrong.png"]
    assert reasons["zero.jpg"].startswith("cannot decode image")
    assert (tmp_path / "out" / "visage_é_顔.png").exists()


# ------------------------------------------------------------------------------------------ CLI

def test_cli_exit_codes(tiny_faces, tmp_path):
    src = occluded_folder(tiny_faces, tmp_path / "in")
    runner = CliRunner()
    ok = runner.invoke(main, ["inpaint", str(src), str(tmp_path / "out"), "--method", "telea"])
    assert ok.exit_code == 0, ok.output
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    bad = runner.invoke(main, ["inpaint", str(src), str(tmp_path / "out2"), "--method", "telea"])
    assert bad.exit_code == 1
    assert "failed: " in bad.output and "bad.png" in bad.output and "Traceback" not in bad.output
    mask = src / "b_mask.png"
    usage = runner.invoke(main, ["inpaint", str(src), str(tmp_path / "out3"), "--mask", str(mask),
                                 "--masks", "center"])
    assert usage.exit_code == 2 and "at most one" in usage.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(main, ["inpaint", str(empty), str(tmp_path / "out4"), "--method", "telea"])
    assert none.exit_code == 2 and "no images found" in none.output
    kind = runner.invoke(main, ["inpaint", str(src), str(tmp_path / "out5"), "--masks", "nope"])
    assert kind.exit_code == 2 and "unknown mask kind" in kind.output


def test_bundled_examples(tmp_path):
    images = [p for p in EXAMPLES.glob("*.png") if not p.stem.endswith("_mask")]
    assert len(images) == 6
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir()) < 300_000
    result = CliRunner().invoke(main, ["inpaint", str(EXAMPLES), str(tmp_path / "out"), "--method", "telea"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["done"]) == 6 and summary["failed"] == []
    assert sorted(set(summary["mask_sources"].values())) == ["beside", "detected"]


def test_torchrun_ranks_share_the_files(tmp_path, monkeypatch):
    from facefill.config import InpaintConfig
    from facefill.engine.inpaint import run_inpaint

    examples = Path(__file__).resolve().parents[1] / "facefill" / "examples" / "occluded"
    done = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        summary = run_inpaint(InpaintConfig(str(examples), str(tmp_path / "out"), method="telea"))
        assert (tmp_path / "out" / f"summary-rank{rank}.json").exists()
        done.append(set(summary["done"]))
    assert done[0] and done[1] and not done[0] & done[1]
    assert len(done[0] | done[1]) == 6


def test_the_default_is_the_shipped_model_that_fills_any_size(tmp_path, monkeypatch):
    from facefill.checkpoint import best_shipped

    monkeypatch.setenv("FACEFILL_WEIGHTS", str(tmp_path))

    def ship(stem, method, size, psnr):
        (tmp_path / f"{stem}.pt").write_bytes(b"")
        (tmp_path / f"{stem}.json").write_text(json.dumps(
            {"method": method, "size": size, "metrics": {"center": {"psnr": psnr}}}))

    ship("dense-gan-128", "dense-gan", 128, 24.7)
    ship("dense-gan-64", "dense-gan", 64, 24.2)
    assert best_shipped(128)["method"] == "dense-gan" and best_shipped(64)["size"] == 64
    ship("ffc-unet-gan-256", "ffc-unet-gan", 256, 22.0)   # scored on other data: PSNRs do not compare
    for size in (65, 100, 128, 256, 1024, None):
        assert best_shipped(size)["method"] == "ffc-unet-gan"
    # it learned from faces of 128 px and more: smaller images keep a card of their own scale
    assert best_shipped(64)["method"] == "dense-gan" and best_shipped(64)["size"] == 64
    assert best_shipped(40)["method"] == "dense-gan" and best_shipped(40)["size"] == 64
    assert best_shipped(128, "dense-gan")["size"] == 128     # a named method keeps its own cards


def test_the_default_is_its_largest_trained_scale_and_small_images_keep_their_own(tmp_path, monkeypatch):
    from facefill.checkpoint import best_shipped

    monkeypatch.setenv("FACEFILL_WEIGHTS", str(tmp_path))
    for stem, method, size, psnr in (("dense-gan-64", "dense-gan", 64, 24.2),
                                     ("ffc-unet-gan-128", "ffc-unet-gan", 128, 23.9),
                                     ("ffc-unet-gan-256", "ffc-unet-gan", 256, 22.0)):
        (tmp_path / f"{stem}.pt").write_bytes(b"")
        (tmp_path / f"{stem}.json").write_text(json.dumps(
            {"method": method, "size": size, "metrics": {"center": {"psnr": psnr}}}))
    for name in (None, "ffc-unet-gan"):   # the 256 px stage; it hands smaller crops to the 128 px card
        for size in (100, 128, 256, 2000, None):
            assert best_shipped(size, name)["size"] == 256
    assert best_shipped(64)["method"] == "dense-gan"
