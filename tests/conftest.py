"""Shared fixtures: a handful of real CelebA faces, made tiny, so tests stay fast."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CELEBA = SHARED_DATA / "celeba-aligned"
CELEBA_HQ = SHARED_DATA / "celeba-hq"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)  # two threads on a loaded 2-core machine wait on each other


def _celeba_files(count: int) -> list[Path]:
    files = sorted(CELEBA.glob("*.jpg"))[:count]
    if len(files) < count:
        pytest.skip("../shared/data/celeba-aligned is not available")
    return files


def save_tiny_face(source: Path, target: Path, size: int = 32) -> None:
    """The aligned-CelebA face square (rows 20..198), resized to ``size``."""
    with Image.open(source) as image:
        image.convert("RGB").crop((0, 20, 178, 198)).resize((size, size), Image.Resampling.LANCZOS).save(target)


@pytest.fixture
def celeba_sources(tmp_path) -> Path:
    """12 original aligned-CelebA JPEGs (178x218) copied into a folder."""
    folder = tmp_path / "celeba"
    folder.mkdir()
    for file in _celeba_files(12):
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


@pytest.fixture
def tiny_faces(tmp_path) -> Path:
    """6 real faces as 32x32 PNGs."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for file in _celeba_files(6):
        save_tiny_face(file, folder / f"{file.stem}.png")
    return folder


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A prepared-data layout (as `facefill prepare` writes) at 32 px: 8 train, 4 test, centre masks."""
    root = tmp_path / "data32"
    files = _celeba_files(12)
    for split, chunk in (("train", files[:8]), ("test", files[8:])):
        (root / split).mkdir(parents=True)
        for file in chunk:
            save_tiny_face(file, root / split / f"{file.stem}.png")
    (root / "masks" / "center").mkdir(parents=True)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    for file in files[8:]:
        Image.fromarray(mask).save(root / "masks" / "center" / f"{file.stem}.png")
    (root / "manifest.json").write_text(json.dumps({"size": 32, "counts": {"train": 8, "test": 4}}))
    return root
