"""facefill eval: metric functions on hand-computed cases, area bins, filling, the report end to end."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from facefill.config import EvalConfig
from facefill.engine.evaluate import (AREA_BINS, area_bin, area_bin_metrics, fill_tensor_batch, image_metrics,
                                      mean_metrics, psnr_from_mse, run_eval, sharpness, ssim_window)
from facefill.methods.base import Inpainter, TrainableInpainter

REPORT_FILES = ("metrics.json", "per_image.csv", "summary.md", "report.html")


# ------------------------------------------------------------------------------------ metric values

def _four_by_four():
    target = np.arange(48, dtype=np.float64).reshape(4, 4, 3) / 100.0   # values 0.00 .. 0.47
    hole = np.zeros((4, 4), bool)
    hole[1:3, 1:3] = True                                                # 4 of 16 pixels
    return target, hole


def test_metrics_hand_computed_uniform_error():
    target, hole = _four_by_four()
    output = target.copy()
    output[1:3, 1:3] += 0.1            # error 0.1 in every channel of the 4 hole pixels
    m = image_metrics(output, target, hole)
    # whole image: MSE = 0.01 * 4/16 = 0.0025 -> PSNR = 10 log10(1 / 0.0025) = 10 log10(400)
    assert m["psnr"] == pytest.approx(10 * math.log10(400), abs=1e-9)
    # hole only: MSE = 0.01 -> 20 dB; L1 = 100 * 0.1 = 10 %; L2 = 100 * 0.01 = 1 %
    assert m["psnr_hole"] == pytest.approx(20.0, abs=1e-9)
    assert m["l1"] == pytest.approx(10.0, abs=1e-9)
    assert m["l2"] == pytest.approx(1.0, abs=1e-9)
    assert m["area"] == 0.25
    assert 0 < m["ssim"] < 1
    # a 4x4 image gets a 3-pixel SSIM window; skimage's mean leaves out the 1-pixel border,
    # so here the whole-image mean covers exactly the hole
    assert m["ssim_hole"] == pytest.approx(m["ssim"], abs=1e-12)


def test_metrics_hand_computed_one_channel_error():
    target, hole = _four_by_four()
    output = target.copy()
    output[1:3, 1:3, 0] += 0.1         # error only in the red channel of the hole
    m = image_metrics(output, target, hole)
    # whole: MSE = 4 * 0.01 / 48 -> PSNR = 10 log10(1200); hole: MSE = 0.01 / 3 -> 10 log10(300)
    assert m["psnr"] == pytest.approx(10 * math.log10(1200), abs=1e-9)
    assert m["psnr_hole"] == pytest.approx(10 * math.log10(300), abs=1e-9)
    assert m["l1"] == pytest.approx(100 * 0.1 / 3, abs=1e-9)
    assert m["l2"] == pytest.approx(100 * 0.01 / 3, abs=1e-9)


def test_metrics_perfect_fill_and_empty_hole():
    target, hole = _four_by_four()
    perfect = image_metrics(target, target, hole)
    assert perfect["psnr"] == math.inf and perfect["psnr_hole"] == math.inf
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["ssim_hole"] == pytest.approx(1.0)
    assert perfect["l1"] == 0 and perfect["l2"] == 0
    empty = image_metrics(target, target, np.zeros((4, 4), bool))
    assert empty["area"] == 0
    assert all(math.isnan(empty[k]) for k in ("psnr_hole", "ssim_hole", "l1", "l2"))


def _textured_face(size=48, seed=0):
    """A detailed test image: smooth shading plus seeded fine texture, values inside [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    shading = 0.5 + 0.2 * np.sin(6 * x) * np.cos(4 * y)
    texture = 0.1 * rng.standard_normal((size, size, 3))
    return np.clip(shading[..., None] + texture, 0, 1)


def _centre_hole(size=48, side=24):
    hole = np.zeros((size, size), bool)
    start = (size - side) // 2
    hole[start:start + side, start:start + side] = True
    return hole


def _blurred_fill(target, hole, sigma=2.0):
    import cv2

    output = target.copy()
    output[hole] = cv2.GaussianBlur(target, (0, 0), sigma)[hole]
    return output


def test_sharpness_exact_fill_is_one_and_blur_is_near_zero():
    target, hole = _textured_face(), _centre_hole()
    assert sharpness(target, target, hole) == pytest.approx(1.0)
    blurred = sharpness(_blurred_fill(target, hole), target, hole)
    assert 0 <= blurred < 0.05
    assert sharpness(_blurred_fill(target, hole, sigma=0.6), target, hole) > blurred   # less blur, sharper
    flat = target.copy()
    flat[hole] = target[hole].mean(0)
    assert sharpness(flat, target, hole) == pytest.approx(0.0, abs=1e-12)
    assert image_metrics(_blurred_fill(target, hole), target, hole)["sharpness"] == pytest.approx(blurred)


def test_sharpness_noise_fill_is_above_one():
    target, hole = _textured_face(), _centre_hole()
    noisy = target.copy()
    noisy[hole] = np.random.default_rng(1).uniform(0, 1, (hole.sum(), 3))
    assert sharpness(noisy, target, hole) > 2


def test_sharpness_ignores_the_seam_and_the_pixels_outside_the_hole():
    target, hole = _textured_face(), _centre_hole()
    output = target.copy()
    ring = hole & ~_centre_hole(side=22)            # the hole's outermost pixel (the Laplacian at the
    output[ring] = 0.0                              # eroded hole reaches 1 px further): a hard seam there
    output[~hole] = 1.0 - output[~hole]             # and changed known pixels
    assert sharpness(output, target, hole) == pytest.approx(1.0)


def test_sharpness_is_nan_without_a_measurable_hole():
    target = _textured_face()
    assert math.isnan(sharpness(target, target, np.zeros((48, 48), bool)))      # no hole
    thin = np.zeros((48, 48), bool)
    thin[10:40, 20:24] = True                                                    # 4 px wide: nothing after erosion
    assert math.isnan(sharpness(target, target, thin))
    assert math.isnan(image_metrics(target, target, thin)["sharpness"])
    flat_target = np.full((48, 48, 3), 0.4)
    assert math.isnan(sharpness(_textured_face(), flat_target, _centre_hole()))  # nothing to compare with
    assert math.isnan(image_metrics(target, target, np.zeros((48, 48), bool))["sharpness"])
    wide = np.zeros((48, 48), bool)
    wide[10:40, 20:25] = True                                                    # 5 px wide: one column left
    assert sharpness(target, target, wide) == pytest.approx(1.0)


def test_sharpness_mean_leaves_out_nan():
    rows = [{"area": 0.2, "sharpness": 0.5}, {"area": 0.1, "sharpness": float("nan")}, {"area": 0.3, "sharpness": 0.7}]
    assert mean_metrics(rows)["sharpness"] == pytest.approx(0.6)


def test_ssim_window_shrinks_for_tiny_images():
    assert ssim_window(128, 128) == 7
    assert ssim_window(6, 8) == 5
    assert ssim_window(4, 4) == 3
    assert ssim_window(2, 9) is None
    tiny = image_metrics(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), np.ones((2, 2), bool))
    assert math.isnan(tiny["ssim"]) and math.isnan(tiny["ssim_hole"])
    assert psnr_from_mse(0.01) == pytest.approx(20.0)


def test_area_bins_and_means():
    assert [area_bin(a) for a in (0.0, 0.05, 0.1, 0.25, 0.3, 0.7, 0.999, 1.0)] == [0, 0, 1, 2, 3, 7, 9, 9]
    assert AREA_BINS[0] == "0-10%" and AREA_BINS[-1] == "90-100%" and len(AREA_BINS) == 10
    nan = float("nan")
    rows = [{"area": 0.0, "psnr": math.inf, "ssim": 1.0, "psnr_hole": nan, "ssim_hole": nan, "l1": nan, "l2": nan},
            {"area": 0.05, "psnr": 30.0, "ssim": 0.9, "psnr_hole": 20.0, "ssim_hole": 0.5, "l1": 4.0, "l2": 1.0},
            {"area": 0.25, "psnr": 20.0, "ssim": 0.7, "psnr_hole": 10.0, "ssim_hole": 0.3, "l1": 8.0, "l2": 3.0}]
    means = mean_metrics(rows)
    assert means["psnr"] == 25.0          # the infinite PSNR of the unchanged image is left out
    assert means["l1"] == 6.0             # NaN hole metrics of the empty mask are left out
    assert means["ssim"] == pytest.approx(0.8667, abs=1e-4)
    bins = area_bin_metrics(rows)
    assert [b["count"] for b in bins] == [2, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert bins[0]["means"]["l1"] == 4.0 and bins[1]["means"] is None
    assert bins[2]["bin"] == "20-30%" and bins[2]["means"]["psnr"] == 20.0


# ------------------------------------------------------------------------------------------- filling

class _Recorder(Inpainter):
    """Fills with 0.5 and records what it was given."""

    def __init__(self, size=None):
        self.size = size
        self.seen = []

    def predict(self, image, mask):
        self.seen.append((image.clone(), mask.clone()))
        return torch.full_like(image, 0.5)


@pytest.mark.parametrize("native", [None, 16, 48])
def test_fill_tensor_batch_changes_only_hole_pixels(native):
    images = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255  # 8-bit, as images read from files
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 10:20] = 1
    masks[1, :, 3, 3] = 1                                  # a one-pixel hole must survive shrinking
    method = _Recorder(native)
    out = fill_tensor_batch(method, images, masks)
    assert out.shape == images.shape
    known = masks.expand_as(images) == 0
    assert torch.equal(out[known], images[known])          # known pixels exactly kept
    assert torch.allclose(out[:, :, 14:18, 14:16], torch.tensor(0.5), atol=1 / 255)  # deep in the hole (8-bit)
    assert out.min() >= 0 and out.max() <= 1
    seen_image, seen_mask = method.seen[0]
    assert seen_image.shape[-1] == (native or 32)
    assert (seen_image * seen_mask).abs().max() == 0       # the hole reaches the method as zeros
    other = torch.where(masks.expand_as(images) > 0, torch.randint_like(images, 0, 256) / 255, images)
    fill_tensor_batch(method, other, masks)                # other ground truth in the hole:
    assert torch.equal(method.seen[1][0], seen_image)      # the method sees exactly the same input
    if native == 16:
        assert seen_mask[1, 0, 1, 1] == 1                  # the one-pixel hole at (3, 3) is kept


# ---------------------------------------------------------------------------------- end to end

def _config(dataset, report, **kw):
    values = dict(data=str(dataset), masks="center", methods=("telea", "navier-stokes"), report=str(report),
                  device="cpu", batch_size=3, sample_grid=2)
    values.update(kw)
    return EvalConfig(**values)


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_eval_writes_reports_and_is_repeatable(tiny_dataset, tmp_path):
    first = run_eval(_config(tiny_dataset, tmp_path / "r1"))
    for name in REPORT_FILES:
        assert (tmp_path / "r1" / name).is_file(), name
    assert first["count"] == 4 and list(first["methods"]) == ["telea", "navier-stokes"]

    metrics = json.loads((tmp_path / "r1" / "metrics.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    telea = metrics["methods"]["telea"]
    assert 10 < telea["means"]["psnr"] < 60 and 0 < telea["means"]["ssim"] <= 1
    assert telea["means"]["psnr"] > telea["means"]["psnr_hole"]     # known pixels are exact
    assert telea["means"]["area"] == pytest.approx(0.25)
    assert telea["seconds_per_image"] > 0
    assert [b["count"] for b in telea["by_area_bin"]][2] == 4          # 25 % holes: the 20-30 % bin
    assert metrics["config"]["masks"] == "center"

    rows = _read_csv(tmp_path / "r1" / "per_image.csv")
    assert len(rows) == 2 * 4
    assert list(rows[0]) == ["method", "stem", "area", "psnr", "ssim", "psnr_hole", "ssim_hole", "l1", "l2",
                             "sharpness"]
    assert all(0 <= float(r["sharpness"]) < 2 for r in rows)          # 16 px holes keep 12x12 pixels
    assert {r["method"] for r in rows} == {"telea", "navier-stokes"}

    page = (tmp_path / "r1" / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "http" not in page and "<link" not in page and "<script" not in page
    assert page.count("<img ") == 2 * (2 + 2)                          # 2 samples x (original, masked, 2 fills)

    summary = (tmp_path / "r1" / "summary.md").read_text()
    assert ("| Method | PSNR | SSIM | PSNR (hole) | SSIM (hole) | L1 % | L2 % | Sharpness | s/img |"
            in summary)
    assert "<th>Sharpness</th>" in page and "Laplacian" in page and "Laplacian" in summary
    assert 0 <= telea["means"]["sharpness"] < 2
    assert "| telea |" in summary and "20-30%" in summary

    second = run_eval(_config(tiny_dataset, tmp_path / "r2"))
    assert _read_csv(tmp_path / "r2" / "per_image.csv") == rows
    for name in first["methods"]:
        assert second["methods"][name]["means"] == first["methods"][name]["means"]


def test_run_eval_limit_and_missing_inputs(tiny_dataset, tmp_path):
    result = run_eval(_config(tiny_dataset, tmp_path / "r", methods=("telea",), limit=2, sample_grid=0))
    assert result["count"] == 2
    assert "<img " not in (tmp_path / "r" / "report.html").read_text()
    with pytest.raises(ValueError, match=r"no stored 'irregular' masks.*--masks irregular"):
        run_eval(_config(tiny_dataset, tmp_path / "x", masks="irregular"))
    with pytest.raises(ValueError, match="no test split"):
        run_eval(_config(tmp_path / "nowhere", tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown method"):
        run_eval(_config(tiny_dataset, tmp_path / "x", methods=("no-such-method",)))


# --------------------------------------------------------------------- learned methods and weights

@dataclass(frozen=True)
class _FakeConfig:
    size: int = 16


class _FakeLearned(TrainableInpainter):
    def __init__(self, config):
        super().__init__(config)
        self.net = nn.Conv2d(4, 3, 1)

    def inference_modules(self):
        return {"net": self.net}

    def predict(self, image, mask):
        assert image.shape[-1] == self.size, "eval must fit the images to the native size"
        return torch.sigmoid(self.net(torch.cat([image, mask], 1)))


@pytest.fixture
def fake_learned(monkeypatch, tmp_path):
    from facefill import registry

    registry._ensure_loaded()
    _FakeLearned.name, _FakeLearned.config_class = "fake-learned", _FakeConfig
    monkeypatch.setitem(registry._METHODS, "fake-learned", _FakeLearned)
    monkeypatch.setenv("FACEFILL_WEIGHTS", str(tmp_path / "no-shipped-weights"))
    return _FakeLearned


def test_learned_method_needs_weights(tiny_dataset, tmp_path, fake_learned):
    with pytest.raises(ValueError, match="no shipped weights.*--weights"):
        run_eval(_config(tiny_dataset, tmp_path / "x", methods=("fake-learned",)))


def test_weights_files_pin_and_name_methods(tiny_dataset, tmp_path, fake_learned):
    from facefill.checkpoint import export_weights

    torch.manual_seed(1)
    for stem in ("a", "b"):
        export_weights(fake_learned(_FakeConfig()), tmp_path / f"{stem}.pt", {"size": 16, "steps": 1})
    config = _config(tiny_dataset, tmp_path / "r", methods=("telea", "fake-learned"),
                     weights=(str(tmp_path / "a.pt"), str(tmp_path / "b.pt")), sample_grid=1)
    result = run_eval(config)
    assert list(result["methods"]) == ["telea", "fake-learned", "fake-learned@b"]
    pinned = result["methods"]["fake-learned"]
    assert pinned["weights"].endswith("a.pt") and pinned["meta"]["steps"] == 1
    assert pinned["native_size"] == 16
    rows = _read_csv(tmp_path / "r" / "per_image.csv")
    assert len(rows) == 3 * 4


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_eval(tiny_dataset, tmp_path):
    from facefill.cli import main

    report = tmp_path / "cli-report"
    result = CliRunner().invoke(main, ["eval", "--data", str(tiny_dataset), "--masks", "center",
                                       "--methods", "telea", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert all((report / name).is_file() for name in REPORT_FILES)
    assert "telea" in result.output

    bad = CliRunner().invoke(main, ["eval", "--data", str(tiny_dataset), "--masks", "sunglasses",
                                    "--methods", "telea", "--report", str(report)])
    assert bad.exit_code == 2
    assert "error:" in bad.output and "--masks sunglasses" in bad.output


def test_eval_fill_options_reach_the_fill(tiny_dataset, tmp_path, monkeypatch):
    from facefill.config import EvalConfig
    from facefill.engine import evaluate

    seen = []
    original = evaluate.fill_tensor_batch

    def spy(inpainter, images, masks, options=None):
        seen.append(options)
        return original(inpainter, images, masks, options)

    monkeypatch.setattr(evaluate, "fill_tensor_batch", spy)
    evaluate.run_eval(EvalConfig(data=str(tiny_dataset), masks="center", methods=("telea",), steps=7,
                                 sampler="ddpm", seed=3, amp=True, limit=1, sample_grid=0,
                                 report=str(tmp_path / "r")))
    assert [(o.steps, o.sampler, o.seed, o.amp) for o in seen] == [(7, "ddpm", 3, True)]


def test_amp_reaches_every_method_and_the_report(tiny_dataset, tmp_path):
    from facefill.cli import main

    report = tmp_path / "amp-report"
    result = CliRunner().invoke(main, ["eval", "--data", str(tiny_dataset), "--masks", "center", "--amp",
                                       "--methods", "telea", "--report", str(report), "--sample-grid", "0"])
    assert result.exit_code == 0, result.output
    assert json.loads((report / "metrics.json").read_text())["config"]["amp"] is True


def test_card_metrics_record_sharpness_and_write_nan_as_null(tiny_dataset, tmp_path, monkeypatch):
    """export's card: sharpness beside PSNR and SSIM; NaN (holes too thin to measure) as null."""
    from PIL import Image

    from facefill.checkpoint import export_weights
    from facefill.engine.train import evaluate_weights
    from facefill.registry import create_method

    monkeypatch.chdir(tmp_path)                       # evaluate_weights writes reports/ here
    weights = tmp_path / "tiny.pt"
    export_weights(create_method("ffc-unet-gan", size=32, base_channels=4, max_channels=16, ffc_blocks=1).eval(),
                   weights, {"size": 32})
    thin = np.zeros((32, 32), np.uint8)
    thin[4:28, 14:17] = 255                           # 3 px wide: nothing left after the 2 px erosion
    (tiny_dataset / "masks" / "thin").mkdir()
    for mask in (tiny_dataset / "masks" / "center").iterdir():
        Image.fromarray(thin).save(tiny_dataset / "masks" / "thin" / mask.name)
    metrics = evaluate_weights(weights, tiny_dataset, ("center", "thin"))
    assert 0 <= metrics["center"]["sharpness"] < 5 and metrics["center"]["psnr"] > 0
    assert metrics["thin"]["sharpness"] is None and metrics["thin"]["psnr"] > 0
    json.dumps(metrics, allow_nan=False)


def test_shifted_framing_scores_moved_faces_fixed_per_image(tiny_dataset, tmp_path):
    aligned = run_eval(_config(tiny_dataset, tmp_path / "aligned"))
    shifted = run_eval(_config(tiny_dataset, tmp_path / "shifted", framing="shifted"))
    again = run_eval(_config(tiny_dataset, tmp_path / "again", framing="shifted"))
    assert aligned["framing"] == "aligned" and shifted["framing"] == "shifted"
    assert shifted["methods"]["telea"]["means"] != aligned["methods"]["telea"]["means"]
    assert again["methods"]["telea"]["means"] == shifted["methods"]["telea"]["means"]
    assert "framing: shifted" in (tmp_path / "shifted" / "summary.md").read_text()
    with pytest.raises(ValueError, match="framing"):
        run_eval(_config(tiny_dataset, tmp_path / "bad", framing="tilted"))
