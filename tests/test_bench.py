"""facefill bench: method-alone timings, memory, and the whole-pipeline measurement."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from facefill.config import BenchConfig
from facefill.engine.bench import center_masks, run_bench, synthetic_images
from facefill.methods.base import Inpainter

ROW_KEYS = {"method", "size", "batch_size", "device", "images_per_s", "seconds_per_image", "latency_ms_median",
            "latency_ms_p90", "cpu_peak_rss_delta_mb", "cuda_peak_mb"}


def _strict_json(path):
    return json.loads(Path(path).read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_synthetic_inputs_are_deterministic():
    a, b = synthetic_images(2, 32, seed=3), synthetic_images(2, 32, seed=3)
    assert torch.equal(a, b) and a.shape == (2, 3, 32, 32)
    assert 0 <= a.min() and a.max() <= 1 and a.std() > 0.05
    assert not torch.equal(a, synthetic_images(2, 32, seed=4))
    assert center_masks(1, 32).mean().item() == pytest.approx(0.25)


def _has_engine() -> bool:
    try:
        from facefill.engine.inpaint import run_inpaint  # noqa: F401
    except ImportError:
        return False
    return True


def test_run_bench_telea(tmp_path):
    out = tmp_path / "bench.json"
    config = BenchConfig(methods=("telea",), size=32, batch_sizes=(1, 2), device="cpu", repeat=2,
                         pipeline_images=4, out=str(out))
    result = run_bench(config)
    data = _strict_json(out)
    for key in ("device", "device_name", "torch", "threads", "date", "config", "rows", "pipeline"):
        assert key in data, key
    assert data["torch"] == torch.__version__ and data["threads"] >= 1
    assert [(r["method"], r["batch_size"], r["size"]) for r in data["rows"]] == [("telea", 1, 32), ("telea", 2, 32)]
    for row in data["rows"]:
        assert ROW_KEYS <= set(row)
        assert row["images_per_s"] > 0 and row["latency_ms_p90"] >= row["latency_ms_median"] > 0
        assert row["cpu_peak_rss_delta_mb"] >= 0 and row["runs"] == 2
    if _has_engine():
        (row,) = data["pipeline"]
        assert row["images"] == 4 and row["batch_size"] == 2 and row["images_per_s"] > 0
    else:
        assert data["pipeline"] == [] and "not available" in data["pipeline_skipped"]
    assert result["rows"][0]["method"] == "telea"


def test_pipeline_measurement_with_stand_in_engine(tmp_path, monkeypatch):
    """The pipeline part, independent of the real batch engine: a stand-in run_inpaint."""
    calls = []

    def run_inpaint(config):
        folder = Path(config.input_dir)
        images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
        assert all((folder / f"{p.stem}_mask.png").is_file() for p in images)
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        for image in images:
            (Path(config.output_dir) / image.name).write_bytes(image.read_bytes())
        calls.append((config, len(images)))
        return {"done": [p.name for p in images], "skipped": [], "failed": []}

    module = types.ModuleType("facefill.engine.inpaint")
    module.run_inpaint = run_inpaint
    monkeypatch.setitem(sys.modules, "facefill.engine.inpaint", module)
    out = tmp_path / "bench.json"
    run_bench(BenchConfig(methods=("telea",), size=32, batch_sizes=(1, 3), device="cpu", repeat=1,
                          pipeline_images=5, out=str(out)))
    (row,) = _strict_json(out)["pipeline"]
    warm, timed = calls
    assert timed[1] == 5 and warm[1] <= 3                  # one untimed warm-up on a few images
    assert timed[0].batch_size == 3 and timed[0].overwrite and timed[0].method == "telea"
    assert row["done"] == 5 and row["failed"] == 0 and row["images_per_s"] > 0
    assert row["overhead_s_per_image"] == pytest.approx(row["seconds_per_image"] - row["method_seconds_per_image"])
    assert row["overhead_pct"] == pytest.approx(100 * row["overhead_s_per_image"] / row["seconds_per_image"])


class _FixedSize(Inpainter):
    name = "fixed"
    size = 16

    def predict(self, image, mask):
        assert image.shape[-1] == 16
        return torch.zeros_like(image)


def test_fixed_size_method_runs_at_native_size(tmp_path, monkeypatch):
    import facefill.checkpoint

    monkeypatch.setattr(facefill.checkpoint, "resolve_inpainter", lambda *a, **k: _FixedSize())
    result = run_bench(BenchConfig(methods=("fixed",), size=32, batch_sizes=(2,), device="cpu", repeat=1,
                                   warmup=0, pipeline_images=0, out=str(tmp_path / "b.json")))
    assert result["rows"][0]["size"] == 16 and result["rows"][0]["native_size"] == 16
    assert result["pipeline"] == [] and result["pipeline_skipped"]


def test_bench_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="batch sizes"):
        run_bench(BenchConfig(methods=("telea",), batch_sizes=(0,), out=str(tmp_path / "b.json")))
    with pytest.raises(ValueError, match="repeat"):
        run_bench(BenchConfig(methods=("telea",), repeat=0, out=str(tmp_path / "b.json")))
