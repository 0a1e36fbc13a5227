"""Bad input and faults (issue 14): no traceback, no silent wrong result, no lost work.

One test per item; each names the item it covers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from facefill import fileio
from facefill.cli import main
from facefill.config import InpaintConfig
from facefill.engine.inpaint import run_inpaint

TINY_DENSE = {"size": 32, "base_channels": 4, "max_channels": 8, "growth": 4, "layers_per_block": 1}


def boxed_face(size: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth random image with a painted black box (detected as the occluder)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(60, 200, (4, 4, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)).copy()
    image[size // 4: size // 2, size // 4: 3 * size // 4] = 0
    return image


def hole_of(size: int = 32) -> np.ndarray:
    hole = np.zeros((size, size), bool)
    hole[size // 4: size // 2, size // 4: 3 * size // 4] = True
    return hole


def save_mask(path: Path, hole: np.ndarray) -> None:
    Image.fromarray(hole.astype(np.uint8) * 255).save(path)


def config(src, out, **values) -> InpaintConfig:
    return InpaintConfig(input_dir=str(src), output_dir=str(out), method="telea", device="cpu",
                         batch_size=2, workers=1, **values)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(boxed_face(seed=1)).save(folder / "a.png")
    Image.fromarray(boxed_face(seed=2)).save(folder / "b.png")
    return folder


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """A prepared-data layout at 32 px from synthetic images: 2 train, 3 test, centre masks."""
    root = tmp_path / "data32"
    for split, seeds in (("train", (10, 11)), ("test", (20, 21, 22))):
        (root / split).mkdir(parents=True)
        for seed in seeds:
            Image.fromarray(boxed_face(seed=seed)).save(root / split / f"{seed}.png")
            if split == "test":
                (root / "masks" / "center").mkdir(parents=True, exist_ok=True)
                save_mask(root / "masks" / "center" / f"{seed}.png", hole_of())
    (root / "manifest.json").write_text(json.dumps({"size": 32, "counts": {"train": 2, "test": 3}}))
    return root


def tiny_weights(path: Path, **changes) -> Path:
    """A dense-gan weights file at 16 px; ``changes`` replace payload keys."""
    from facefill.checkpoint import weights_payload
    from facefill.registry import create_method

    payload = weights_payload(create_method("dense-gan", **TINY_DENSE), {"size": 32})
    payload.update(changes)
    torch.save(payload, path)
    return path


# ------------------------------------------------------------------- silent wrong results

def test_item5_mask_and_compare_named_photos_links_fifos_and_folders_are_listed(photos, tmp_path):
    Image.fromarray(boxed_face(seed=3)).save(photos / "portrait_mask.jpg")      # a photo, named like a mask
    save_mask(photos / "b_mask.png", hole_of())  # b.png's mask: used, not listed
    Image.fromarray(boxed_face(seed=4)).save(photos / "holiday_compare.png")
    (photos / "gone.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(photos / "pipe.jpg")
    (photos / "album.jpg").mkdir()
    summary = run_inpaint(config(photos, tmp_path / "out"))
    assert summary["done"] == ["a.png", "b.png"] and summary["mask_sources"]["b.png"] == "beside"
    reasons = {entry["file"]: entry["reason"] for entry in summary["ignored"]}
    assert set(reasons) == {"portrait_mask.jpg", "holiday_compare.png", "gone.png", "pipe.jpg", "album.jpg"}
    assert "mask" in reasons["portrait_mask.jpg"] and "comparison" in reasons["holiday_compare.png"]
    assert "dangling" in reasons["gone.png"] and "FIFO" in reasons["pipe.jpg"]
    assert "folder" in reasons["album.jpg"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["ignored"] == summary["ignored"]


def test_item6_comparisons_of_inputs_sharing_a_stem_are_distinct(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(boxed_face(seed=1)).save(src / "e.png")
    Image.fromarray(boxed_face(seed=2)).save(src / "e.jpg", quality=95)
    save_mask(src / "e_mask.png", hole_of())
    summary = run_inpaint(config(src, tmp_path / "out", save_comparison=True))
    assert sorted(summary["done"]) == ["e.jpg", "e.png"]
    compares = sorted(p.name for p in (tmp_path / "out").glob("*_compare.png"))
    assert compares == ["e_jpg_compare.png", "e_png_compare.png"]
    jpg, png = (np.asarray(Image.open(tmp_path / "out" / name)) for name in compares)
    assert not np.array_equal(jpg, png)


def test_item7_multi_page_tiff_and_animated_gif_are_noted(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    frames = [Image.fromarray(boxed_face(seed=s)) for s in range(3)]
    frames[0].save(src / "pages.tif", save_all=True, append_images=frames[1:])
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:2])
    result = cli("inpaint", src, tmp_path / "out", "--method", "telea", "--device", "cpu")
    assert result.exit_code == 0, result.output
    notes = json.loads((tmp_path / "out" / "summary.json").read_text())["notes"]
    assert notes["pages.tif"] == "3 frames: only the first frame was filled"
    assert notes["anim.gif"] == "2 frames: only the first frame was filled"
    assert "pages.tif: 3 frames: only the first frame was filled" in result.output


@pytest.mark.parametrize("name,array", [
    ("deep.png", (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 61)),     # 16-bit grey PNG
    ("deep.tif", (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 61)),     # 16-bit grey TIFF
    ("float.tif", np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)),  # float grey TIFF
    ("grey.png", (np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)),    # 8-bit grey
])
def test_item8_deep_and_grey_inputs_keep_their_depth_and_only_hole_pixels_change(tmp_path, name, array):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(array).save(src / name)
    hole = hole_of()
    save_mask(src / f"{Path(name).stem}_mask.png", hole)
    summary = run_inpaint(config(src, tmp_path / "out"))
    assert summary["done"] == [name], summary
    with Image.open(src / name) as before, Image.open(tmp_path / "out" / name) as after:
        assert after.mode == before.mode
        original, filled = np.asarray(before), np.asarray(after)
    assert filled.dtype == original.dtype and filled.shape == original.shape
    assert np.array_equal(filled[~hole], original[~hole])
    assert not np.array_equal(filled[hole], original[hole])


@pytest.mark.parametrize("name", ["rgb16.png", "rgb16.tif"])
def test_item8_16_bit_rgb_stays_16_bit_and_only_hole_pixels_change(tmp_path, name):
    import cv2

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    original = rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16)  # as cv2 stores it: BGR
    assert cv2.imwrite(str(src / name), original)
    hole = hole_of()
    save_mask(src / f"{Path(name).stem}_mask.png", hole)
    summary = run_inpaint(config(src, tmp_path / "out"))
    assert summary["done"] == [name], summary
    filled = cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)
    assert filled.dtype == np.uint16 and filled.shape == original.shape
    assert np.array_equal(filled[~hole], original[~hole])
    assert not np.array_equal(filled[hole], original[hole])


def test_item9_an_output_locked_by_a_live_process_is_skipped_and_a_stale_lock_taken_over(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fileio.lock_path(out / "a.png").write_text(f"{os.getppid()} {socket.gethostname()}\n")  # alive
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fileio.lock_path(out / "b.png").write_text(f"{dead.pid} {socket.gethostname()}\n")  # gone
    summary = run_inpaint(config(photos, out))
    assert summary["done"] == ["b.png"] and summary["skipped"] == ["a.png"]
    assert "another facefill process" in summary["notes"]["a.png"]
    assert not (out / "a.png").exists() and (out / "b.png").exists()
    assert fileio.lock_path(out / "a.png").exists() and not fileio.lock_path(out / "b.png").exists()


# ------------------------------------------------------------------- tracebacks -> one line

def test_weights_with_mismatched_shapes_is_one_line(photos, tmp_path):
    from facefill.registry import create_method

    other = create_method("dense-gan", **{**TINY_DENSE, "base_channels": 8}).export_state()
    weights = tiny_weights(tmp_path / "w.pt", state_dict=other)
    result = cli("inpaint", photos, tmp_path / "out", "--weights", weights, "--device", "cpu")
    assert_one_line_error(result, "w.pt", "does not match its config")


def test_weights_with_a_bad_config_value_is_one_line(photos, tmp_path):
    from facefill.checkpoint import config_dict
    from facefill.registry import make_config

    bad = {**config_dict(make_config("dense-gan", TINY_DENSE)), "growth": "abc"}
    weights = tiny_weights(tmp_path / "w.pt", config=bad)
    result = cli("inpaint", photos, tmp_path / "out", "--weights", weights, "--device", "cpu")
    assert_one_line_error(result, "w.pt", "growth='abc'")


def test_weights_with_a_string_format_version_is_one_line(photos, tmp_path):
    weights = tiny_weights(tmp_path / "w.pt", format_version="1")
    result = cli("inpaint", photos, tmp_path / "out", "--weights", weights, "--device", "cpu")
    assert_one_line_error(result, "w.pt", "format_version '1'")


def test_weights_naming_a_method_without_weights_is_one_line(photos, tmp_path):
    weights = tiny_weights(tmp_path / "w.pt", method="telea")
    result = cli("inpaint", photos, tmp_path / "out", "--weights", weights, "--device", "cpu")
    assert_one_line_error(result, "w.pt", "'telea' has no weights")


def test_int8_weights_with_bad_scales_are_one_line(photos, tmp_path):
    weights = tiny_weights(tmp_path / "w.pt", scales=[1, 2])
    result = cli("inpaint", photos, tmp_path / "out", "--weights", weights, "--device", "cpu")
    assert_one_line_error(result, "w.pt", "scales must be dicts")


def test_bench_pipeline_from_a_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("bench", "--methods", "telea", "--size", "32", "--batch-sizes", "1", "--repeat", "1",
                 "--pipeline-images", "2", "--pipeline-from", tmp_path / "empty", "--out", tmp_path / "b.json")
    assert_one_line_error(result, "empty", "no images for the pipeline measurement")


def test_export_of_a_file_holding_a_list_is_one_line(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    result = cli("export", tmp_path / "list.pt", tmp_path / "w.pt")
    assert_one_line_error(result, "list.pt", "holds a list")
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("command", [
    ["inpaint", "{photos}", "{out}", "--method", "telea"],
    ["eval", "--data", "{data}", "--methods", "telea"],
    ["bench", "--methods", "telea", "--pipeline-images", "0", "--repeat", "1", "--out", "{out}/b.json"],
])
def test_device_bogus_is_one_line(photos, small_dataset, tmp_path, command):
    values = {"photos": photos, "out": tmp_path / "out", "data": small_dataset}
    args = [part.format(**{k: str(v) for k, v in values.items()}) for part in command]
    result = cli(*args, "--device", "bogus")
    assert_one_line_error(result, "--device 'bogus'", "unknown device")


def test_resolve_device_validates_names():
    from facefill.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    for name in ("bogus", "cuda:x", "gpu"):
        with pytest.raises(ValueError, match="unknown device"):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_set_a_setting_of_the_wrong_type_is_one_line():
    from facefill.registry import make_config

    with pytest.raises(ValueError, match="base_channels='abc'"):
        make_config("dense-gan", {"base_channels": "abc"})
    assert make_config("dense-gan", {"lr": 1}).lr == 1  # an int where a float is expected is fine


def test_size_7_is_one_line(small_dataset, tmp_path):
    """bench and prepare refuse it up front; a method that cannot train at it says so."""
    bench = cli("bench", "--methods", "telea", "--size", "3", "--out", tmp_path / "b.json")
    assert_one_line_error(bench, "--size must be at least 4")
    prepare = cli("prepare", small_dataset / "train", tmp_path / "d", "--size", "7")
    assert_one_line_error(prepare, "size must be at least 8")
    train = cli("train", "--method", "dense-gan", "--data", small_dataset, "--size", "7", "--steps", "1",
                "--batch-size", "2", "--workers", "0", "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(train, "dense-gan needs a size divisible by 32")
    from facefill.registry import create_method

    with pytest.raises(ValueError, match="autoencoder needs a size divisible by 32"):
        create_method("autoencoder", size=48)


def test_eval_names_a_truncated_test_image(small_dataset):
    victim = sorted((small_dataset / "test").glob("*.png"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    result = cli("eval", "--data", small_dataset, "--methods", "telea", "--device", "cpu",
                 "--report", small_dataset.parent / "report")
    assert_one_line_error(result, victim.name, "truncated")


# ------------------------------------------------------------------------------- lost work

def test_stale_temporaries_of_a_killed_write_are_removed(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = ("import sys, os, signal; from facefill import fileio\n"
              "with fileio.atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(out / "a.png")])
    assert killed.returncode == -signal.SIGKILL
    left = [p.name for p in out.iterdir()]
    assert len(left) == 1 and left[0].startswith(".a.png.") and ".tmp" in left[0]
    live = out / f".b.png.{os.getppid()}-abcdefgh.tmp.png"  # a live process's write stays
    live.write_bytes(b"busy")
    run_inpaint(config(photos, out))
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.png", "b.png", "summary.json", live.name])


def test_ctrl_c_writes_the_summary_of_what_was_done_and_exits_130(tmp_path, monkeypatch):
    from facefill.engine import inpaint

    src = tmp_path / "in"
    src.mkdir()
    for index in range(6):
        Image.fromarray(boxed_face(seed=index)).save(src / f"{index}.png")
    real_fill = inpaint.fill_batch
    calls = []

    def fill_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fill(*args, **kwargs)

    monkeypatch.setattr(inpaint, "fill_batch", fill_then_interrupt)
    result = cli("inpaint", src, tmp_path / "out", "--method", "telea", "--device", "cpu",
                 "--batch-size", "2")
    assert result.exit_code == 130, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["done"] == ["0.png", "1.png"]
    assert summary["not_processed"] == ["2.png", "3.png", "4.png", "5.png"] and summary["failed"] == []
    assert not list((tmp_path / "out").glob(".*.lock"))


def test_export_refuses_an_empty_weights_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    result = cli("export", tmp_path / "empty.pt", tmp_path / "w.pt")
    assert_one_line_error(result, "empty.pt", "empty file")
    assert not (tmp_path / "w.pt").exists()


def test_max_pixels_refuses_a_huge_image_before_decoding(tmp_path, monkeypatch):
    from facefill.data import folders

    src = tmp_path / "in"
    src.mkdir()
    Image.new("L", (3000, 3000)).save(src / "huge.png")  # 9 MP, a few KB
    Image.fromarray(boxed_face()).save(src / "small.png")
    opened = []
    real_open = folders._open
    monkeypatch.setattr(folders, "_open",
                        lambda path, what: opened.append(path.name) or real_open(path, what))
    summary = run_inpaint(config(src, tmp_path / "out", max_pixels=1_000_000))
    assert summary["done"] == ["small.png"] and opened == ["small.png"]
    assert summary["failed"] == [{"file": "huge.png", "reason": "image is 3000x3000 (9.0 MP), over the "
                                  "--max-pixels limit of 1 MP; raise it to fill this image"}]


def test_a_newline_in_a_file_name_stays_on_one_report_line(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "bad\nname.png").write_bytes(b"not an image")
    Image.fromarray(boxed_face()).save(src / "good.png")
    result = cli("inpaint", src, tmp_path / "out", "--method", "telea", "--device", "cpu")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "bad\\nname.png" in failed[0] and "cannot decode" in failed[0]


# --------------------------------------------------------- files as users have them (issue 13)

def test_a_single_image_file_as_input(photos, tmp_path):
    result = cli("inpaint", photos / "a.png", tmp_path / "out", "--method", "telea", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "summary.json"]
    same = cli("inpaint", photos / "a.png", photos, "--method", "telea")
    assert_one_line_error(same, "would replace its input")


def test_ext_suffix_and_quality(photos, tmp_path):
    out = tmp_path / "out"
    result = cli("inpaint", photos, out, "--method", "telea", "--device", "cpu", "--ext", "jpg",
                 "--suffix", "_filled", "--quality", "60")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a_filled.jpg", "b_filled.jpg"]
    low = (out / "a_filled.jpg").stat().st_size
    cli("inpaint", photos, out, "--method", "telea", "--ext", "jpg", "--suffix", "_filled", "--overwrite")
    assert (out / "a_filled.jpg").stat().st_size > low  # default quality 95
    webp = cli("inpaint", photos, tmp_path / "webp", "--method", "telea", "--ext", "webp")
    assert webp.exit_code == 0, webp.output
    with Image.open(tmp_path / "webp" / "a.webp") as image:
        assert image.format == "WEBP"
        filled = np.asarray(image.convert("RGB"))
    hole = np.pad(np.ones((8 + 4, 16 + 4), bool), ((6, 14), (6, 6)))   # box + detection dilation
    assert np.array_equal(filled[~hole], boxed_face(seed=1)[~hole])  # lossless by default
    bad = cli("inpaint", photos, tmp_path / "x", "--quality", "0")
    assert bad.exit_code == 2
