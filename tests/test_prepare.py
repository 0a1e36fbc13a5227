"""``facefill prepare``: sharpness ranking, crops, splits, stored masks, manifest, bad files, CLI."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from facefill import __version__
from facefill.config import PrepareConfig
from facefill.data import prepare as prepare_module
from facefill.data.prepare import (celeba_box, center_box, detect_box, prepare, split_identities,
                                   split_images, unique_stems)


def run(src, out, **options):
    options = {"size": 32, "masks": ("center", "irregular"), **options}
    return prepare(PrepareConfig(src=str(src), out=str(out), **options))


def tree(root) -> dict:
    """Every file under ``root`` -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stems(folder) -> set[str]:
    return {p.stem for p in folder.glob("*.png")}


def test_layout_and_manifest(celeba_sources, tmp_path):
    out = tmp_path / "data"
    manifest = run(celeba_sources, out, test_fraction=0.25, seed=1)
    counts = manifest["counts"]
    assert counts == {"found": 12, "kept": 12, "train": 9, "test": 3, "skipped": 0, "dropped": 0}
    assert stems(out / "train") == set(manifest["split"]["train"])
    assert stems(out / "test") == set(manifest["split"]["test"])
    assert not stems(out / "train") & stems(out / "test")
    with Image.open(next((out / "test").glob("*.png"))) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (32, 32)
    for kind in ("center", "irregular"):
        assert stems(out / "masks" / kind) == stems(out / "test")
        for path in (out / "masks" / kind).glob("*.png"):
            with Image.open(path) as image:
                assert image.mode == "L" and image.size == (32, 32)
                assert set(np.unique(np.asarray(image))) <= {0, 255}
    assert manifest["masks"]["center"] == {"count": 3, "mean_area": 0.25}
    assert 0.1 <= manifest["masks"]["irregular"]["mean_area"] <= 0.5
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for key, value in {"size": 32, "crop": "celeba", "seed": 1, "keep": None, "test_fraction": 0.25,
                       "identities": None, "source": str(celeba_sources), "skipped": [],
                       "facefill_version": __version__}.items():
        assert manifest[key] == value, key
    assert set(manifest["sharpness"]["scores"]) == stems(out / "train") | stems(out / "test")
    assert manifest["files"]["000002"] == "000002.jpg"


def test_celeba_crop_is_the_aligned_face_square(celeba_sources, tmp_path):
    run(celeba_sources, tmp_path / "data", size=178, masks=(), test_fraction=0.0)
    source = np.asarray(Image.open(celeba_sources / "000002.jpg").convert("RGB"))
    written = np.asarray(Image.open(tmp_path / "data" / "train" / "000002.png"))
    assert np.array_equal(written, source[20:198])
    assert celeba_box(178, 218) == (0, 20, 178, 198)
    assert celeba_box(89, 109) == (0, 10, 89, 99)
    assert celeba_box(256, 256) == center_box(256, 256) == (0, 0, 256, 256)
    assert center_box(300, 200) == (50, 0, 250, 200)


def test_same_arguments_same_bytes(celeba_sources, tmp_path):
    first = run(celeba_sources, tmp_path / "a", seed=5)
    second = run(celeba_sources, tmp_path / "b", seed=5)
    assert first == second
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    before = tree(tmp_path / "a")
    run(celeba_sources, tmp_path / "a", seed=5)             # re-run over existing output
    assert tree(tmp_path / "a") == before


def test_another_seed_another_split_and_no_stale_files(celeba_sources, tmp_path):
    out = tmp_path / "data"
    first = run(celeba_sources, out, seed=0, test_fraction=0.5)
    second = run(celeba_sources, out, seed=1, test_fraction=0.5, masks=("center",))
    assert first["split"]["test"] != second["split"]["test"]
    assert stems(out / "train") == set(second["split"]["train"])
    assert stems(out / "test") == stems(out / "masks" / "center") == set(second["split"]["test"])
    assert not (out / "masks" / "irregular").exists()


def test_keep_drops_the_blurriest_first(celeba_sources, tmp_path):
    image = cv2.imread(str(celeba_sources / "000058.jpg"))
    cv2.imwrite(str(celeba_sources / "blurred.png"), cv2.GaussianBlur(image, (9, 9), 3))
    everything = run(celeba_sources, tmp_path / "all", masks=())
    scores = everything["sharpness"]["scores"]
    assert list(scores.values()) == sorted(scores.values(), reverse=True)
    assert min(scores, key=scores.get) == "blurred"
    assert scores["blurred"] < scores["000058"]
    kept = run(celeba_sources, tmp_path / "kept", keep=10, masks=())
    assert kept["counts"]["kept"] == 10 and kept["counts"]["dropped"] == 3
    survivors = set(kept["split"]["train"]) | set(kept["split"]["test"])
    assert "blurred" not in survivors
    assert survivors == set(list(scores)[:10])
    assert kept["sharpness"]["threshold"] == min(scores[s] for s in survivors)
    assert not (tmp_path / "kept" / "train" / "blurred.png").exists()


def test_identity_split_is_disjoint(celeba_sources, tmp_path):
    files = sorted(p.name for p in celeba_sources.glob("*.jpg"))
    identity = {name: f"person{i % 4}" for i, name in enumerate(files[:-1])}  # the last one is not listed
    csv_path = tmp_path / "identities.csv"
    csv_path.write_text("file,identity\n" + "".join(f"{f},{i}\n" for f, i in identity.items()))
    for seed in range(3):
        manifest = run(celeba_sources, tmp_path / f"data{seed}", identities=str(csv_path), seed=seed,
                       test_fraction=0.3, masks=())
        train_ids = {identity[f"{s}.jpg"] for s in manifest["split"]["train"]}
        test_ids = {identity[f"{s}.jpg"] for s in manifest["split"]["test"]}
        assert train_ids and test_ids and not train_ids & test_ids
        assert manifest["counts"]["test"] in (2, 3)              # near 0.3 * 11 in groups of 2-3
        assert manifest["skipped"] == [{"file": files[-1], "reason": "not in the identities file"}]
        assert manifest["identities"] == str(csv_path) and manifest["split"]["by"] == "identity"


def test_split_helpers():
    names = [f"{i:03d}" for i in range(100)]
    train, test = split_images(names, 0.2, seed=0)
    assert len(test) == 20 and sorted(train + test) == names
    assert split_images(names, 0.2, seed=0) == (train, test) != split_images(names, 0.2, seed=1)
    assert split_images(["a", "b"], 0.2, seed=0)[1] != []       # at least one test image when asked
    groups = {name: str(int(name) // 10) for name in names}    # 10 identities of 10
    train, test = split_identities(groups, 0.2, seed=0)
    assert len(test) == 20 and not {groups[s] for s in train} & {groups[s] for s in test}


def test_unreadable_files_are_skipped_with_a_reason(celeba_sources, tmp_path):
    (celeba_sources / "empty.jpg").write_bytes(b"")
    (celeba_sources / "notes.jpg").write_text("not an image at all\n")
    manifest = run(celeba_sources, tmp_path / "data")
    assert manifest["counts"]["found"] == 14 and manifest["counts"]["kept"] == 12
    reasons = {item["file"]: item["reason"] for item in manifest["skipped"]}
    assert reasons.keys() == {"empty.jpg", "notes.jpg"}
    assert "empty" in reasons["empty.jpg"] and "cannot decode" in reasons["notes.jpg"]


def test_recursive_listing_and_unique_stems(celeba_sources, tmp_path):
    src = tmp_path / "nested"
    for sub in ("a", "b"):
        (src / sub).mkdir(parents=True)
        shutil.copy(celeba_sources / "000002.jpg", src / sub / "000002.jpg")
    shutil.copy(celeba_sources / "000058.jpg", src / "a" / "face.JPEG")
    (src / "a" / "readme.txt").write_text("ignored")
    manifest = run(src, tmp_path / "data", test_fraction=0.0)
    assert sorted(manifest["split"]["train"]) == ["a_000002", "b_000002", "face"]
    assert manifest["files"]["b_000002"] == "b/000002.jpg"
    assert unique_stems(["x.jpg", "x.png"]) == ["x_jpg", "x_png"]
    clash = unique_stems(["a/x.jpg", "a_x.jpg", "b/x.jpg"])
    assert len(set(clash)) == 3 and clash[2] == "b_x"


def test_no_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images found"):
        run(tmp_path / "empty", tmp_path / "data")
    with pytest.raises(ValueError, match="unknown mask kind"):
        run(tmp_path / "empty", tmp_path / "data", masks=("blob",))


@pytest.mark.skipif(not prepare_module.detector_available(), reason="this OpenCV has no CascadeClassifier")
def test_detect_finds_the_face(celeba_sources):
    image = np.asarray(Image.open(celeba_sources / "000002.jpg").convert("RGB"))
    (left, top, right, bottom), note = detect_box(image)
    assert note is None
    assert right - left == bottom - top >= 100
    assert 0 <= left and 0 <= top and right <= 178 and bottom <= 218


def test_detect_crop_runs_and_notes_fallbacks(celeba_sources, tmp_path):
    for path in sorted(celeba_sources.glob("*.jpg"))[4:]:
        path.unlink()
    Image.new("RGB", (120, 90), (128, 128, 128)).save(celeba_sources / "flat.png")   # no face in it
    manifest = run(celeba_sources, tmp_path / "data", crop="detect", masks=())
    assert manifest["crop"] == "detect" and manifest["counts"]["kept"] == 5
    assert manifest["notes"], "the flat image (or a missing detector) must be noted"
    with Image.open(tmp_path / "data" / ("train" if "flat" in manifest["split"]["train"] else "test")
                    / "flat.png") as image:
        assert image.size == (32, 32)


def test_detect_without_a_detector_falls_back(celeba_sources, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "_cascade", lambda: False)
    manifest = run(celeba_sources, tmp_path / "data", crop="detect", masks=())
    assert manifest["counts"]["kept"] == 12
    assert manifest["notes"] == [{"file": None, "note": prepare_module.NO_DETECTOR}]


def test_cli_prepare(celeba_sources, tmp_path):
    from facefill.cli import main

    out = tmp_path / "data"
    result = CliRunner().invoke(main, ["prepare", str(celeba_sources), str(out), "--size", "32",
                                       "--masks", "center,random", "--keep", "10", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "8 train, 2 test, 0 skipped" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["keep"] == 10 and set(manifest["masks"]) == {"center", "random"}
    assert 0.2 <= manifest["masks"]["random"]["mean_area"] <= 0.3
    (tmp_path / "nothing").mkdir()
    result = CliRunner().invoke(main, ["prepare", str(tmp_path / "nothing"), str(out)])
    assert result.exit_code == 2 and "no images found" in result.output


def test_cli_prepare_reports_skipped_files_and_exits_non_zero(celeba_sources, tmp_path):
    from facefill.cli import main

    (celeba_sources / "broken.jpg").write_bytes(b"")
    result = CliRunner().invoke(main, ["prepare", str(celeba_sources), str(tmp_path / "data"), "--size", "32"])
    assert result.exit_code == 1
    assert "skipped: broken.jpg:" in result.output and "1 skipped" in result.output
    assert len(list((tmp_path / "data" / "train").glob("*.png"))) > 0  # the good files are still prepared

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_text("not an image")
    result = CliRunner().invoke(main, ["prepare", str(only_bad), str(tmp_path / "data2")])
    assert result.exit_code == 2 and "no usable face images" in result.output


def test_pack_round_trip_and_shards_within_the_limit(celeba_sources, tmp_path):
    from facefill.data.dataset import load_split

    folder = prepare(PrepareConfig(src=str(celeba_sources), out=str(tmp_path / "folder"), size=32, workers=1))
    packed = prepare(PrepareConfig(src=str(celeba_sources), out=str(tmp_path / "packed"), size=32, workers=1,
                                   pack=True, shard_mib=8 / 1024))  # 8 KiB: several shards
    shards = packed["pack"]["train"]
    assert len(shards) > 1 and sum(s["images"] for s in shards) == packed["counts"]["train"]
    for shard in shards:
        assert (tmp_path / "packed" / shard["file"]).stat().st_size == shard["bytes"] <= 8 * 1024
    assert not list((tmp_path / "packed" / "train").glob("*.png"))
    assert folder["split"] == packed["split"]  # the same split; the test split stays as files
    assert sorted(p.name for p in (tmp_path / "packed" / "test").iterdir()) == \
        sorted(p.name for p in (tmp_path / "folder" / "test").iterdir())
    images, stems = load_split(tmp_path / "packed", "train", 32)
    reference, reference_stems = load_split(tmp_path / "folder", "train", 32)
    assert stems == reference_stems and images.shape == reference.shape == (len(stems), 32, 32, 3)
    assert np.abs(images.astype(int) - reference.astype(int)).mean() < 4  # WebP quality 90
    unpacked = prepare(PrepareConfig(src=str(celeba_sources), out=str(tmp_path / "packed"), size=32, workers=1))
    assert "pack" not in unpacked and not list((tmp_path / "packed").glob("train-*.npz"))


def test_test_fraction_zero_makes_a_train_only_set(celeba_sources, tmp_path):
    manifest = prepare(PrepareConfig(src=str(celeba_sources), out=str(tmp_path / "d"), size=32, workers=1,
                                     test_fraction=0, pack=True))
    assert manifest["counts"]["test"] == 0 and manifest["counts"]["train"] == 12
