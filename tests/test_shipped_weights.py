"""Every shipped weights file loads safely, fills a face, and carries a complete card."""
import json

import pytest
import torch

from facefill.checkpoint import load_weights, weights_dir
from facefill.inference.options import FillOptions

SHIPPED = sorted(weights_dir().glob("*.pt"))
CARD_KEYS = {"method", "file", "config", "size", "data", "steps", "epochs", "batch_size", "command",
             "device", "wall_time_minutes", "metrics", "notes"}


def test_weights_ship():
    assert {p.stem for p in SHIPPED} >= {"dense-gan-128", "dense-gan-64", "two-stage-gan-128", "glcic-128",
                                         "wgan-64", "context-encoder-64", "autoencoder-64", "ddpm-ffc-64"}


def test_weights_folder_keeps_its_budget():
    """weights/ holds at most 64 MiB in all and no file over 16 MiB (the standards)."""
    files = [p for p in weights_dir().rglob("*") if p.is_file()]
    sizes = {p.name: p.stat().st_size for p in files}
    assert sum(sizes.values()) <= 64 * 2**20, f"weights/ holds {sum(sizes.values()) / 2**20:.1f} MiB"
    assert max(sizes.values()) <= 16 * 2**20, max(sizes, key=sizes.get)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_card_is_complete_and_records_test_metrics(path):
    card = json.loads(path.with_suffix(".json").read_text())
    assert CARD_KEYS <= set(card), CARD_KEYS - set(card)
    assert card["file"] == path.name and path.stem.startswith(card["method"])
    centre = card["metrics"]["center"]
    # a whole test split, never a sample: the smallest is CelebA-HQ's 500 faces (hq256)
    assert centre["split"] == "test" and centre["count"] >= 500
    assert 15 < centre["psnr"] < 40 and 0 < centre["ssim"] <= 1
    assert card["storage"] in ("float16", "int8")
    assert card["storage"] == torch.load(path, weights_only=True)["meta"]["storage"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_weights_load_and_fill_only_the_hole(path):
    method = load_weights(path)
    size = method.size
    torch.manual_seed(0)
    image = torch.rand(1, 3, size, size)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    with torch.no_grad():
        out = method.inpaint(image * (1 - mask), mask, FillOptions(steps=2) if method.option_names else None)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert torch.allclose(out * (1 - mask), image * (1 - mask), atol=1 / 255)
