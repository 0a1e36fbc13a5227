"""facefill reproduce: the papers' numbers, the comparison tables, the RESULTS.md section, the
command end to end on a tiny synthetic set, and the training configurations."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facefill import papers
from facefill.checkpoint import export_weights
from facefill.cli import main
from facefill.config import EvalConfig, ReproduceConfig, TrainConfig
from facefill.engine.evaluate import METRICS, run_eval
from facefill.engine.reproduce import (compare_row, comparison_rows, difference, prepare_command, prepare_config,
                                       select_items)
from facefill.registry import create_method, get_method_class, make_config
from facefill.report.reproduce import SECTION_BEGIN, SECTION_END, update_section

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.toml"))


# ----------------------------------------------------------------------------------- tiny data

def _face(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour field with a bright ellipse: enough structure for inpainting."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.2, 0.8, 3) + 0.3 * np.stack([x, y, x * y], -1) * rng.uniform(-1, 1, 3)
    ellipse = ((x - 0.5) / 0.3) ** 2 + ((y - 0.55) / 0.4) ** 2 < 1
    base[ellipse] += 0.2
    return (np.clip(base + rng.normal(0, 0.02, base.shape), 0, 1) * 255).astype(np.uint8)


def make_prepared(root: Path, size: int = 32, train: int = 8, test: int = 4, kinds=("center",)) -> Path:
    """A prepared-data layout as `facefill prepare` writes it, with sharpness scores (stem t003 the sharpest)."""
    rng = np.random.default_rng(0)
    stems = {"train": [f"r{i:03d}" for i in range(train)], "test": [f"t{i:03d}" for i in range(test)]}
    for split, names in stems.items():
        (root / split).mkdir(parents=True)
        for stem in names:
            Image.fromarray(_face(rng, size)).save(root / split / f"{stem}.png")
    for kind in kinds:
        (root / "masks" / kind).mkdir(parents=True)
        for stem in stems["test"]:
            mask = np.zeros((size, size), np.uint8)
            mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
            Image.fromarray(mask).save(root / "masks" / kind / f"{stem}.png")
    scores = {stem: float(i) for i, stem in enumerate(stems["test"])}
    (root / "manifest.json").write_text(json.dumps({"size": size, "sharpness": {"scores": scores}}))
    return root


TINY_REPORTED = papers.Reported("dense-gan", "center", {"psnr": 30.0, "ssim": 0.9}, "Tiny et al., Table 1")
TINY_VARIANT = papers.Reported("dense-gan", "center", {"psnr": 25.0}, "Tiny et al., Table 2", variant="no skips",
                               config="dense-gan-noskips")


@pytest.fixture
def tiny_paper(monkeypatch, tmp_path):
    """A one-paper world: paper `tiny` on data set `tiny32`; a tiny dense-gan as the shipped weights."""
    weights = tmp_path / "weights"
    weights.mkdir()
    method = create_method("dense-gan", size=32, base_channels=8, max_channels=16, growth=4, layers_per_block=1)
    export_weights(method, weights / "dense-gan-32.pt", {"size": 32, "steps": 7})
    monkeypatch.setenv("FACEFILL_WEIGHTS", str(weights))
    paper = papers.Paper(key="tiny", title="Tiny et al.", method="dense-gan", data="tiny32", masks=("center",),
                         methods=("dense-gan", "telea", "glcic"), metrics=("psnr", "ssim", "l2"),
                         protocol="tiny faces", reported=(TINY_REPORTED, TINY_VARIANT))
    monkeypatch.setattr(papers, "PAPERS", (paper,))
    monkeypatch.setattr(papers, "PAPER_KEYS", ("tiny",))
    monkeypatch.setitem(papers.DATASETS, "tiny32", papers.DataSpec("data32", "faces", 32, "center", ("center",)))
    return paper


# ---------------------------------------------------------------------------- the papers' data

def test_papers_table_is_complete_and_well_formed():
    assert {p.key for p in papers.PAPERS} == {"two-stage", "dense-gan", "ddpm-ffc", "wgan", "glcic"}
    assert papers.PAPER_KEYS == tuple(p.key for p in papers.PAPERS)
    config_names = {path.stem for path in CONFIGS}
    for paper in papers.PAPERS:
        spec = papers.DATASETS[paper.data]
        assert set(paper.masks) <= set(spec.masks), paper.key
        assert paper.methods[0] == paper.method and "telea" in paper.methods
        for name in paper.methods:
            get_method_class(name)  # registered
        assert set(paper.metrics) <= set(METRICS)
        assert paper.protocol and paper.title
        for reported in paper.reported:
            assert reported.method == paper.method and reported.masks in paper.masks
            assert reported.metrics and set(reported.metrics) <= set(paper.metrics)
            assert paper.title.split(",")[0] in reported.source  # names its paper
            assert reported.config in config_names, f"configs/{reported.config}.toml is missing"
            for metric, value in reported.metrics.items():
                low, high = {"psnr": (10, 50), "ssim": (0, 1), "l2": (0, 100)}[metric]
                assert low < value < high, (paper.key, metric, value)
        if not paper.reported:  # a qualitative paper says so
            assert "qualitative" in paper.protocol
    main_numbers = {(p.key, r.masks): r.metrics for p in papers.PAPERS for r in p.reported if not r.variant}
    assert main_numbers == {("two-stage", "center"): {"psnr": 26.51, "ssim": 0.88},
                            ("dense-gan", "center"): {"psnr": 23.31, "ssim": 0.795, "l2": 2.74},
                            ("ddpm-ffc", "center"): {"psnr": 24.93, "ssim": 0.882},
                            ("ddpm-ffc", "random"): {"psnr": 25.01, "ssim": 0.886}}


def test_select_papers():
    assert papers.select_papers("all") == papers.PAPERS
    assert [p.key for p in papers.select_papers("wgan, two-stage,wgan")] == ["wgan", "two-stage"]
    with pytest.raises(ValueError, match="unknown paper 'nope'"):
        papers.select_papers("two-stage,nope")
    with pytest.raises(ValueError):
        papers.select_papers(" , ")


def test_prepare_command_names_every_setting(tmp_path):
    settings = prepare_config("celeba64", tmp_path / "data64", Path("/raw"))
    assert prepare_command(settings) == (f"facefill prepare /raw/celeba-aligned {tmp_path / 'data64'} --size 64 "
                                         f"--crop celeba --masks center,irregular "
                                         f"--identities /raw/celeba-aligned/identities.csv")


# ------------------------------------------------------------------------------------ the tables

def test_differences_are_facefill_minus_paper():
    assert difference(24.03, 26.51) == pytest.approx(-2.48)
    assert difference(0.9, 0.88) == pytest.approx(0.02)
    assert difference(None, 26.51) is None and difference(24.0, None) is None
    assert difference(math.nan, 26.51) is None and difference(math.inf, 1.0) is None

    row = compare_row(("psnr", "ssim", "l2"), "dense-gan", "center", TINY_REPORTED,
                      {"psnr": 31.5, "ssim": 0.85, "l2": 1.0}, images=4)
    assert row["paper"] == {"psnr": 30.0, "ssim": 0.9, "l2": None}
    assert row["difference"]["psnr"] == pytest.approx(1.5)
    assert row["difference"]["ssim"] == pytest.approx(-0.05)
    assert row["difference"]["l2"] is None and row["source"] == "Tiny et al., Table 1"


def test_comparison_rows_cover_methods_variants_and_missing_weights(tiny_paper):
    measured = {"dense-gan": {"masks": {"center": {"means": {"psnr": 28.0, "ssim": 0.8, "l2": 2.0}}}},
                "telea": {"masks": {"center": {"means": {"psnr": 20.0, "ssim": 0.7, "l2": 5.0}}}},
                "glcic": {"error": "no shipped weights"}}
    rows = comparison_rows(tiny_paper, measured, {"center": 4})
    assert [(r["method"], r["variant"]) for r in rows] == [("dense-gan", ""), ("telea", ""), ("glcic", ""),
                                                          ("dense-gan", "no skips")]
    assert rows[0]["difference"]["psnr"] == pytest.approx(-2.0)
    assert rows[1]["paper"]["psnr"] is None and rows[1]["difference"]["psnr"] is None
    assert rows[2]["facefill"]["psnr"] is None and rows[2]["note"] == "no shipped weights"
    assert rows[3]["paper"]["psnr"] == 25.0 and rows[3]["facefill"]["psnr"] is None
    assert "configs/dense-gan-noskips.toml" in rows[3]["note"]


def test_select_items_takes_the_sharpest_then_the_limit(tmp_path):
    data = make_prepared(tmp_path / "d", test=6)
    sharp = dataclasses.replace(papers.get_paper("two-stage"), sharpest=0.5)
    items, counts = select_items(sharp, data, "center", None)
    assert [item.stem for item in items] == ["t003", "t004", "t005"]
    assert counts == {"test_images": 6, "protocol_images": 3, "scored": 3}
    items, counts = select_items(sharp, data, "center", 2)
    assert [item.stem for item in items] == ["t003", "t004"] and counts["scored"] == 2
    items, _ = select_items(papers.get_paper("dense-gan"), data, "center", 4)
    assert [item.stem for item in items] == ["t000", "t001", "t002", "t003"]


def test_results_section_is_rewritten_not_appended():
    text = "# Results\n\nhand-written\n"
    once = update_section(text, {"two-stage": "### two-stage\n\nA\n"})
    assert once.startswith(text) and once.count(SECTION_BEGIN) == 1 and once.endswith(SECTION_END + "\n")
    assert update_section(once, {"two-stage": "### two-stage\n\nA\n"}) == once
    both = update_section(once + "\n## After\n", {"wgan": "### wgan\n\nW\n"})
    assert both.index("### two-stage") < both.index("### wgan") and both.endswith("## After\n")
    replaced = update_section(both, {"two-stage": "### two-stage\n\nB\n"})
    assert "\nA\n" not in replaced and "\nB\n" in replaced and "\nW\n" in replaced
    assert replaced.count(SECTION_BEGIN) == 1 and replaced.count("<!-- reproduce two-stage: begin -->") == 1
    assert replaced.replace("\nB\n", "\nA\n") == both


# ------------------------------------------------------------------------------- the command

def _reproduce(*args):
    return CliRunner().invoke(main, ["reproduce", *args, "--device", "cpu"])


def test_reproduce_end_to_end(tiny_paper, tmp_path):
    data = make_prepared(tmp_path / "root" / "data32")
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results of the shipped weights\n\nkept\n")
    report = tmp_path / "report"
    args = ["--paper", "tiny", "--data-root", str(tmp_path / "root"), "--report", str(report),
            "--results", str(results), "--batch-size", "3"]
    outcome = _reproduce(*args)
    assert outcome.exit_code == 0, outcome.output
    for name in ("README.md", "tiny.md", "results.json", "per_image.csv"):
        assert (report / name).is_file()
    summary = json.loads((report / "results.json").read_text())
    (result,) = summary["papers"]
    assert result["images"] == {"center": {"test_images": 4, "protocol_images": 4, "scored": 4}}
    assert result["methods"]["dense-gan"]["weights"] == "dense-gan-32.pt"
    assert "glcic" in result["methods"]["glcic"]["error"]

    # the same numbers as facefill eval on the same images
    expected = run_eval(EvalConfig(data=str(data), masks="center", methods=("telea", "dense-gan"),
                                   report=str(tmp_path / "eval"), device="cpu", batch_size=3))
    for name in ("telea", "dense-gan"):
        ours = result["methods"][name]["masks"]["center"]["means"]
        assert ours["psnr"] == pytest.approx(expected["methods"][name]["means"]["psnr"], abs=1e-9)
    row = next(r for r in result["table"] if r["method"] == "dense-gan" and not r["variant"])
    assert row["difference"]["psnr"] == pytest.approx(row["facefill"]["psnr"] - 30.0)

    text = results.read_text()
    assert text.startswith("# Results of the shipped weights\n\nkept\n") and text.count(SECTION_BEGIN) == 1
    assert "| dense-gan | center | 4 | 30.00 |" in text and "no shipped weights" in text
    assert "configs/dense-gan-noskips.toml" in text
    assert _reproduce(*args).exit_code == 0
    again = results.read_text()
    assert again.count(SECTION_BEGIN) == 1 and again.count("<!-- reproduce tiny: begin -->") == 1
    strip = [line for line in again.splitlines() if not line.startswith("Measured ")]
    assert strip == [line for line in text.splitlines() if not line.startswith("Measured ")]


def test_reproduce_prepares_missing_data_from_shared(tiny_paper, tmp_path):
    shared = tmp_path / "shared"
    (shared / "faces").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(10):
        Image.fromarray(_face(rng, 48)).save(shared / "faces" / f"{index:03d}.png")
    outcome = _reproduce("--paper", "tiny", "--data-root", str(tmp_path / "root"), "--shared", str(shared),
                         "--report", str(tmp_path / "report"), "--no-results")
    assert outcome.exit_code == 0, outcome.output
    manifest = json.loads((tmp_path / "root" / "data32" / "manifest.json").read_text())
    assert manifest["size"] == 32 and manifest["counts"]["test"] == 2
    assert "preparing" in outcome.output


def test_reproduce_without_data_or_source_names_the_prepare_command(tiny_paper, tmp_path):
    results = tmp_path / "RESULTS.md"
    outcome = _reproduce("--paper", "tiny", "--data-root", str(tmp_path / "root"), "--shared",
                         str(tmp_path / "nothing"), "--report", str(tmp_path / "report"), "--results", str(results))
    assert outcome.exit_code == 1
    assert f"facefill prepare {tmp_path / 'nothing' / 'faces'} {tmp_path / 'root' / 'data32'}" in outcome.output
    assert not results.exists()  # nothing measured, nothing written into the results file


@pytest.mark.parametrize("args, message", [
    (["--paper", "bogus"], "error: unknown paper 'bogus'; known: two-stage, dense-gan, ddpm-ffc, wgan, glcic, all"),
    (["--data", "data99=/x"], "error: --data data99=...: unknown data set"),
    (["--data", "data128"], "error: --data expects SET=PATH"),
    (["--limit", "0"], "error: --limit must be at least 1, got 0"),
])
def test_reproduce_usage_errors_are_one_line(args, message, tmp_path):
    outcome = _reproduce(*args, "--no-results", "--report", str(tmp_path / "r"), "--data-root", str(tmp_path))
    assert outcome.exit_code == 2
    assert outcome.output.strip().startswith(message) and len(outcome.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------- training configurations

def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_every_method_has_a_paper_config():
    names = {path.stem for path in CONFIGS}
    assert {"two-stage-gan", "two-stage-gan-stages1", "two-stage-gan-stages3", "two-stage-gan-no-lstm",
            "dense-gan", "ddpm-ffc-256", "ddpm-ffc-128", "ddpm-ffc-128-noffc", "wgan-128", "glcic",
            "context-encoder", "autoencoder"} <= names
    trainable = {name for name in ("dense-gan", "autoencoder", "context-encoder", "ddpm-ffc", "two-stage-gan",
                                   "wgan", "glcic") if get_method_class(name).trainable}
    assert trainable <= {_load(path)["train"]["method"] for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid_for_train_and_its_method(path):
    values = _load(path)
    assert set(values) <= {"train", "method"}
    train = values["train"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(train) <= fields, set(train) - fields
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in train.items()})
    assert path.stem.startswith(config.method) and get_method_class(config.method).trainable
    assert all(d.startswith("data/") for d in config.data) and config.out == f"runs/{path.stem}"
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in values.get("method", {}).items()}
    make_config(config.method, {**settings, "size": config.size})
    assert f"--config configs/{path.name}" in path.read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_starts_training(path, tmp_path):
    """`facefill train --method M --config FILE` runs a step with tiny overrides (size, batch, data)."""
    data = make_prepared(tmp_path / "data", size=32, train=4, test=1)
    method = _load(path)["train"]["method"]
    outcome = CliRunner().invoke(main, [
        "train", "--method", method, "--config", str(path), "--data", str(data), "--size", "32", "--steps", "1",
        "--batch-size", "2", "--no-amp", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"),
        "--set", "val_images=0"])
    assert outcome.exit_code == 0, outcome.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["steps"] == 1 and saved["method"]["size"] == 32
    for key, value in _load(path).get("method", {}).items():
        assert saved["method"][key] == value, key


def test_standard_error():
    from facefill.engine.reproduce import standard_error

    # values 1, 2, 3: sample sd 1, n 3 -> 1 / sqrt(3); non-finite values are left out
    assert standard_error([1.0, 2.0, 3.0, math.inf, math.nan]) == pytest.approx(1 / math.sqrt(3))
    assert standard_error([5.0]) is None
