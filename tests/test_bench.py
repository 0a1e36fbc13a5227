"""facefill bench: method-alone timings, memory, and the whole-pipeline measurement."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
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
    (row,) = data["pipeline"]
    assert row["images"] == 4 and row["batch_size"] == 2 and row["images_per_s"] > 0
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


def test_pipeline_from_a_folder_of_photos(tmp_path):
    from PIL import Image

    from facefill.engine.bench import write_pipeline_inputs

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (40, 60, 3)), ("b.png", (50, 30, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(photos / name)
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(photos / "a_mask.png")  # a mask, not a photo
    stems = write_pipeline_inputs(tmp_path / "in", 3, 32, source=photos)
    sizes = [Image.open(tmp_path / "in" / f"{stem}.png").size for stem in stems]
    assert sizes == [(32, 32)] * 3
    first, third = (np.asarray(Image.open(tmp_path / "in" / f"{s}.png")) for s in (stems[0], stems[2]))
    assert np.array_equal(first, third)  # two photos, cycled
    out = tmp_path / "bench.json"
    run_bench(BenchConfig(methods=("telea",), size=32, batch_sizes=(2,), device="cpu", repeat=1,
                          pipeline_images=3, pipeline_from=str(photos), out=str(out)))
    (row,) = _strict_json(out)["pipeline"]
    assert row["inputs"] == str(photos) and row["done"] == 3
    with pytest.raises(ValueError, match="no images"):
        write_pipeline_inputs(tmp_path / "in2", 2, 32, source=tmp_path / "in2")


class _FixedSize(Inpainter):
    name = "fixed"
    size = 16

    def predict(self, image, mask):
        assert image.shape[-1] == 16
        return torch.zeros_like(image)


def test_fixed_size_method_runs_at_native_size(tmp_path, monkeypatch):
    import facefill.checkpoint
    from facefill import registry

    registry._ensure_loaded()
    monkeypatch.setitem(registry._METHODS, "fixed", _FixedSize)
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


# ------------------------------------------------------------------------------ speed/quality sweep

TINY_DDPM = {"size": 16, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
             "attention_resolutions": (8,), "num_heads": 2, "ffc_blocks": 1, "timesteps": 20,
             "beta_start": 1e-4, "beta_end": 0.2, "sample_steps": 3}


@pytest.fixture
def tiny_ddpm_weights(tmp_path) -> Path:
    """A tiny ddpm-ffc (16 px, 8 channels, T = 20) exported as a weights file."""
    from facefill.checkpoint import export_weights
    from facefill.registry import create_method

    path = tmp_path / "tiny-ddpm.pt"
    export_weights(create_method("ddpm-ffc", **TINY_DDPM).eval(), path, {"size": 16})
    return path


def test_parse_sweep_and_sweep_options():
    from facefill.engine.bench import parse_sweep
    from facefill.inference.options import FillOptions, sweep_options
    from facefill.registry import create_method

    assert parse_sweep("25, 50,DDPM,025,") == ("25", "50", "ddpm")
    for bad in ("0", "ten", ","):
        with pytest.raises(ValueError, match="--sweep"):
            parse_sweep(bad)
    method = create_method("ddpm-ffc", **TINY_DDPM)
    assert sweep_options(method, "ddpm") == FillOptions(sampler="ddpm", steps=None)
    assert sweep_options(method, 4, FillOptions(seed=2)) == FillOptions(sampler="ddim", steps=4, seed=2)

    class Searcher(Inpainter):  # latent search: iterations, no sampler
        name, option_names = "searcher", ("steps", "seed")

    assert sweep_options(Searcher(), "7") == FillOptions(steps=7)
    with pytest.raises(ValueError, match="'searcher' has no sampler"):
        sweep_options(Searcher(), "ddpm")
    from facefill.methods.classical import Telea

    with pytest.raises(ValueError, match="'telea' takes no sampling steps"):
        sweep_options(Telea(), 5)


def test_cli_sweep_tiny_ddpm(tiny_dataset, tiny_ddpm_weights, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from facefill.cli import main
    from facefill.engine import evaluate

    calls = []
    original = evaluate.fill_tensor_batch

    def spy(inpainter, images, masks, options=None):
        calls.append((options.sampler, options.steps, len(images), options.amp))
        return original(inpainter, images, masks, options)

    monkeypatch.setattr(evaluate, "fill_tensor_batch", spy)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--weights", str(tiny_ddpm_weights), "--sweep", "2,4,ddpm",
                                       "--data", str(tiny_dataset), "--limit", "3", "--batch-size", "2",
                                       "--device", "cpu", "--amp", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = _strict_json(out)
    assert data["rows"] == [] and data["pipeline"] == []
    rows = data["trade_off"]
    assert [(r["setting"], r["sampler"], r["steps"]) for r in rows] == [("2", "ddim", 2), ("4", "ddim", 4),
                                                                       ("ddpm", "ddpm", None)]
    for row in rows:
        assert row["method"] == "ddpm-ffc" and row["weights"] == str(tiny_ddpm_weights) and row["amp"] is True
        assert (row["images"], row["limit"], row["batch_size"], row["masks"]) == (3, 3, 2, "center")
        assert row["device"] == "cpu" and row["data"] == str(tiny_dataset)
        assert row["psnr"] is not None and 0 < row["psnr"] < 100 and 0 < row["ssim"] <= 1
        assert row["images_per_second"] > 0 and row["seconds"] > 0
        assert row["seconds_per_image"] == pytest.approx(row["seconds"] / 3)
        assert row["cpu_peak_rss_delta_mb"] >= 0
    # per setting: one untimed warm-up batch of 2, then 3 images in batches of 2, 1
    # (--amp reaches the method: every fill runs under bf16 autocast)
    assert calls == [(s, n, b, True) for s, n in (("ddim", 2), ("ddim", 4), ("ddpm", None)) for b in (2, 2, 1)]
    markdown = Path(data["trade_off_markdown"])
    assert markdown == out.with_suffix(".md")
    table = [line for line in markdown.read_text().splitlines() if line.startswith("| ddpm-ffc")]
    assert len(table) == 3 and "| ddpm |" in table[2]
    assert [row["eta"] for row in rows] == [0.0, 0.0, None] and "| eta |" in markdown.read_text()
    assert "trade-off" in result.output


def test_sweep_rejects_methods_without_steps(tiny_dataset, tmp_path):
    from click.testing import CliRunner

    from facefill.cli import main

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--methods", "telea", "--sweep", "2,ddpm", "--data",
                                       str(tiny_dataset), "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "telea" in result.output and "--sweep" in result.output
    assert not out.exists()


def test_weights_alone_in_the_synthetic_bench(tiny_ddpm_weights, tmp_path):
    config = BenchConfig(methods=(), weights=(str(tiny_ddpm_weights),), size=32, batch_sizes=(2,),
                         device="cpu", repeat=1, warmup=0, pipeline_images=2,
                         out=str(tmp_path / "b.json"))
    result = run_bench(config)
    (row,) = result["rows"]
    assert row["method"] == "ddpm-ffc" and row["size"] == 16 and row["weights"] == str(tiny_ddpm_weights)
    (pipe,) = result["pipeline"]
    assert pipe["method"] == "ddpm-ffc" and pipe["done"] == 2 and pipe["failed"] == 0


def test_cli_help_mentions_sweep_and_sampler():
    from click.testing import CliRunner

    from facefill.cli import main

    runner = CliRunner()
    bench_help = runner.invoke(main, ["bench", "--help"]).output
    assert "--sweep" in bench_help and "--weights" in bench_help and "ddpm" in bench_help
    for command in ("eval", "inpaint"):
        assert "--sampler [ddim|ddpm]" in runner.invoke(main, [command, "--help"]).output


def test_bench_train_measures_training_throughput_and_the_matmul_peak(tmp_path):
    out = tmp_path / "train.json"
    result = run_bench(BenchConfig(train=True, methods=("dense-gan",), size=32, batch_sizes=(2,), repeat=2,
                                   warmup=1, device="cpu", out=str(out), train_masks="mix"))
    row, = result["train"]
    assert row["method"] == "dense-gan" and row["batch_size"] == 2 and row["steps"] == 2
    assert row["images_per_s"] > 0 and row["gflop_per_step"] > 0 and row["peak_fp32_tflops"] > 0
    assert 0 < row["fraction_of_peak"] and row["peak_dtype"] == "fp32"
    assert 0 < row["data_share"] < 1
    assert json.loads(out.read_text())["train"][0]["images_per_s"] == row["images_per_s"]
    with pytest.raises(ValueError, match="telea"):
        run_bench(BenchConfig(train=True, methods=("telea",), device="cpu", out=str(out)))


def test_bench_train_times_the_loader_loop_for_the_before_figure(tmp_path):
    out = tmp_path / "train-workers.json"
    result = run_bench(BenchConfig(train=True, methods=("dense-gan",), size=32, batch_sizes=(2,), repeat=2,
                                   warmup=1, device="cpu", out=str(out), data_on="workers", workers=0,
                                   channels_last=False))
    row, = result["train"]
    assert row["data_on"] == "workers" and row["workers"] == 0 and row["channels_last"] is False
    assert row["images_per_s"] > 0 and 0 < row["data_ms_median"]
    with pytest.raises(ValueError, match="--workers"):
        run_bench(BenchConfig(train=True, methods=("dense-gan",), device="cpu", out=str(out), data_on="workers",
                              workers=-1))
    with pytest.raises(ValueError, match="--data-on"):
        run_bench(BenchConfig(train=True, methods=("dense-gan",), device="cpu", out=str(out), data_on="gpu"))


def test_bench_train_keeps_going_past_a_method_out_of_memory_and_saves_each_row(tmp_path, monkeypatch):
    from facefill.engine import bench as bench_module

    real, write_json, saved = bench_module.time_training, bench_module.write_json, []

    def short_of_memory(name, config, device, batch_size):
        if name == "glcic":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(name, config, device, batch_size)

    def watching(path, result):
        saved.append((result["partial"], len(result["train"])))
        write_json(path, result)

    monkeypatch.setattr(bench_module, "time_training", short_of_memory)
    monkeypatch.setattr(bench_module, "write_json", watching)
    out = tmp_path / "train.json"
    result = run_bench(BenchConfig(train=True, methods=("glcic", "dense-gan"), size=32, batch_sizes=(2,), repeat=1,
                                   warmup=1, device="cpu", out=str(out)))
    failed, measured = result["train"]
    assert failed["error"] == "out of device memory" and failed["images_per_s"] is None
    assert measured["method"] == "dense-gan" and measured["images_per_s"] > 0
    assert saved == [(True, 1), (True, 2), (False, 2)]
    assert json.loads(out.read_text())["partial"] is False
