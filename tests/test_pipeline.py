"""The one inference pipeline: faces found, aligned, filled, pasted back; eval = inpaint; the API."""
from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import facefill
from conftest import CELEBA_HQ
from facefill.checkpoint import export_weights
from facefill.config import InpaintConfig
from facefill.data import folders
from facefill.engine.evaluate import fill_tensor_batch
from facefill.engine.inpaint import run_inpaint
from facefill.inference.faces import FRAMINGS, detect_faces, face_transform, framing_for
from facefill.inference.fitting import PasteSettings, fill_batch, plan_fits
from facefill.inference.options import FillOptions
from facefill.methods.base import Inpainter
from facefill.registry import create_method

TINY_DDPM = {"size": 16, "base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
             "attention_resolutions": (8,), "num_heads": 2, "ffc_blocks": 1, "timesteps": 20,
             "beta_start": 1e-4, "beta_end": 0.2, "sample_steps": 3}


class Grey(Inpainter):
    """A fixed-size fake that fills with mid-grey and records what it saw."""

    name = "grey"

    def __init__(self, size=64):
        self.size = size
        self.seen = []

    def predict(self, image, mask):
        self.seen.append((image.clone(), mask.clone()))
        return torch.full_like(image, 0.5)


def hq_face(index: int) -> np.ndarray:
    path = CELEBA_HQ / "images" / f"{index}.jpg"
    if not path.is_file():
        pytest.skip("../shared/data/celeba-hq is not available")
    return np.asarray(Image.open(path).convert("RGB"))


def photo(side: int, faces: list[tuple[int, int, int, int]]) -> np.ndarray:
    """A ``side`` px canvas (a smooth backdrop) with CelebA-HQ faces (index, x, y, width) pasted in."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    canvas = np.stack([90 + 60 * xx, 110 + 40 * yy, 140 - 50 * xx * yy], 2).astype(np.uint8)
    for index, x, y, width in faces:
        canvas[y:y + width, x:x + width] = cv2.resize(hq_face(index), (width, width), interpolation=cv2.INTER_AREA)
    return canvas


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def centre_of(matrix: np.ndarray, point) -> np.ndarray:
    return matrix @ np.array([point[0], point[1], 1.0])


# ------------------------------------------------------------------------------------- faces

def test_a_face_at_512_px_with_a_jpeg_box_is_detected_and_cropped_around_the_face():
    image = photo(512, [(5, 230, 140, 220)])               # a face off-centre in a larger photo
    image[215:255, 270:420] = 0                              # a black bar over the eyes ...
    image = jpeg(image, 75)                                  # ... saved as JPEG quality 75
    hole = folders.detect_occluder(image)
    assert hole is not None and hole[218:252, 273:417].all()
    assert hole.sum() < 1.3 * 40 * 150                       # no more than the bar and its edge
    fits = plan_fits(0, image, hole, 64, FRAMINGS["celeba-hq"], aligned=False)
    assert len(fits) == 1
    face_centre = centre_of(fits[0].matrix, (230 + 110, 140 + 110))
    assert np.allclose(face_centre, (0.5 * 64, 0.55 * 64), atol=6)    # the face in the training framing
    scale = np.sqrt(abs(np.linalg.det(fits[0].matrix[:, :2])))
    assert 64 / 400 < scale < 64 / 220                       # the crop is about the face, not the photo


def test_two_faces_each_hole_goes_to_its_face():
    image = photo(640, [(3, 40, 120, 200), (5, 380, 260, 200)])
    faces = detect_faces(image)
    assert len(faces) == 2
    hole = np.zeros(image.shape[:2], bool)
    hole[200:230, 90:190] = True                             # over the first face's eyes
    hole[370:400, 430:530] = True                            # over the second's
    model = Grey(64)
    out = fill_batch(model, [image], [hole], settings=PasteSettings())[0]
    assert len(model.seen) == 1 and model.seen[0][0].shape[0] == 2   # two crops, one batch
    assert np.array_equal(out[~hole], image[~hole])
    fits = plan_fits(0, image, hole, 64, FRAMINGS["celeba-hq"], aligned=False)
    for fit, (x, y) in zip(sorted(fits, key=lambda f: -f.matrix[0, 2]), [(140, 220), (480, 360)]):
        assert np.allclose(centre_of(fit.matrix, (x, y)), (32, 35), atol=8)
        assert fit.hole.sum() == 3000


def test_a_hole_that_covers_no_face_is_filled_by_the_square_around_it():
    image = photo(300, [])
    hole = np.zeros((300, 300), bool)
    hole[20:40, 30:60] = True
    fits = plan_fits(0, image, hole, 64, FRAMINGS["celeba-hq"], aligned=False)
    assert len(fits) == 1 and np.allclose(fits[0].matrix, [[1, 0, -13], [0, 1, 0]])  # 64 px around it
    hole[:] = False
    hole[100:200, 50:150] = True                 # a larger hole: twice its extent, 200 px, shrunk to 64
    fits = plan_fits(0, image, hole, 64, FRAMINGS["celeba-hq"], aligned=False)
    assert np.allclose(fits[0].matrix[:, :2], np.eye(2) * 64 / 200)


class AnySize(Grey):
    """A fully convolutional fake: native 64 px, fills smaller crops at their own side."""

    def fill_size(self, side, depth=None):
        return min(self.size, -(-int(side) // 8) * 8)


def test_a_method_with_fill_size_fills_small_crops_at_their_own_resolution():
    image = photo(300, [])
    hole = np.zeros((300, 300), bool)
    hole[100:110, 100:110] = True                # context square: max(2 x 10, 64) = 64 px
    small = np.zeros((40, 40), bool)
    small[10:20, 10:20] = True                   # a 40 px aligned face: filled at 40, not enlarged to 64
    model = AnySize(64)
    fill_batch(model, [image, image[:40, :40].copy()], [hole, small], settings=PasteSettings(aligned=True))
    assert sorted(seen.shape[-1] for seen, _ in model.seen) == [40, 64]
    fits = plan_fits(0, image[:40, :40], small, 64, FRAMINGS["celeba-hq"], aligned=True, size_for=model.fill_size)
    assert fits[0].image.shape == (40, 40, 3) and np.allclose(fits[0].matrix[:, :2], np.eye(2))
    grown = plan_fits(0, image, hole, 64, FRAMINGS["celeba-hq"], aligned=False, size_for=model.fill_size)
    assert grown[0].image.shape == (64, 64, 3)


def test_hole_depth_counts_the_border_as_hole():
    from facefill.inference.fitting import hole_depth
    hole = np.zeros((40, 40), bool)
    assert hole_depth(hole) == 0
    hole[10:20, :] = True                        # a strip 10 px wide: its middle is 5 px from known rows
    assert hole_depth(hole) == pytest.approx(5, abs=0.1)
    hole[:] = False
    hole[:5, :] = True                           # 5 rows along the top edge: as deep as the strip
    assert hole_depth(hole) == pytest.approx(5, abs=0.1)
    assert hole_depth(np.ones((8, 8), bool)) > 1000       # no known pixel at all: as deep as can be


def test_aligned_skips_detection(monkeypatch):
    import facefill.inference.fitting as fitting

    monkeypatch.setattr(fitting, "detect_faces", lambda *a: pytest.fail("detection ran"))
    image = photo(64, [(1, 0, 0, 64)])
    hole = np.zeros((64, 64), bool)
    hole[20:30, 20:40] = True
    out = fill_batch(Grey(32), [image], [hole], settings=PasteSettings(aligned=True))[0]
    assert np.array_equal(out[~hole], image[~hole]) and (out[22:28, 22:38] == 128).all()


def test_a_tilted_face_is_turned_level_by_its_eyes():
    image = photo(512, [(3, 140, 130, 240)])
    tilted = cv2.warpAffine(image, cv2.getRotationMatrix2D((260, 250), 12, 1.0), (512, 512),
                            borderMode=cv2.BORDER_REFLECT)   # turned 12 degrees counter-clockwise
    faces = detect_faces(tilted)
    assert len(faces) == 1 and faces[0].eyes and abs(faces[0].angle + 12) < 4
    matrix = face_transform(faces[0], FRAMINGS["celeba-hq"], 64)
    turned = np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))
    assert abs(turned + faces[0].angle) < 1e-6 and faces[0].angle < 0   # the crop undoes the tilt


def test_framing_follows_the_weights_data():
    assert framing_for({"data": {"source": "../shared/data/celeba-hq"}}) == FRAMINGS["celeba-hq"]
    assert framing_for({"data": {"source": "../shared/data/celeba-aligned"}}) == FRAMINGS["celeba-aligned"]
    assert framing_for({}) == FRAMINGS["celeba-aligned"]


# ----------------------------------------------------------------------------------- pasting

def test_soft_edge_stays_inside_the_dilated_hole_and_replaces_the_hole():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    hole = np.zeros((48, 48), bool)
    hole[16:32, 16:32] = True
    out = fill_batch(Grey(48), [image], [hole], settings=PasteSettings(aligned=True, dilate=3, feather=3))[0]
    grown = cv2.dilate(hole.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    assert np.array_equal(out[~grown], image[~grown])        # nothing outside the dilated hole changes
    assert (out[hole] == 128).all()                          # the given hole is always wholly replaced
    ring = grown & ~hole
    mixed = (out[ring] != 128).any(1) & (out[ring] != image[ring]).any(1)
    assert mixed.mean() > 0.5                                # the ring blends fill and photo


def test_bad_paste_settings_are_usage_errors():
    for bad in ({"dilate": -1}, {"feather": 1.5}):
        with pytest.raises(ValueError, match="--"):
            PasteSettings(**bad)


# ------------------------------------------------------------------- eval scores what inpaint writes

def test_eval_scores_exactly_the_bytes_inpaint_writes(tmp_path):
    weights = tmp_path / "tiny.pt"
    export_weights(create_method("ddpm-ffc", **TINY_DDPM).eval(), weights, {"size": 16})
    rng = np.random.default_rng(3)
    image = cv2.GaussianBlur(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), (5, 5), 0)
    hole = np.zeros((40, 40), bool)
    hole[10:25, 12:30] = True
    hole[33, 5] = True                                       # a one-pixel hole, shrunk 2.5x
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image).save(src / "face.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(src / "face_mask.png")
    run_inpaint(InpaintConfig(input_dir=str(src), output_dir=str(tmp_path / "out"), weights=str(weights),
                              device="cpu", aligned=True, seed=5))
    written = (tmp_path / "out" / "face.png").read_bytes()

    from facefill.checkpoint import load_weights

    scored = fill_tensor_batch(load_weights(weights), torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255,
                               torch.from_numpy(hole)[None, None].float(), FillOptions(seed=5))
    scored = scored[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(scored).save(buffer, "PNG", **folders.encode_options("PNG"))
    assert buffer.getvalue() == written
    assert not np.array_equal(scored[hole], image[hole])


# ------------------------------------------------------------------------------- masks and API

def test_a_mask_of_the_same_aspect_is_resized_and_a_large_one_warns(tmp_path, caplog):
    small = np.zeros((10, 20), np.uint8)
    small[2:5, 4:10] = 255
    path = tmp_path / "m.png"
    Image.fromarray(small).save(path)
    hole = folders.read_mask_file(path, (40, 80))
    assert hole.shape == (40, 80) and hole[8:20, 16:40].all() and hole.sum() == 12 * 24
    Image.fromarray(255 - small).save(path)
    with caplog.at_level(logging.WARNING):
        folders.read_mask_file(path, (10, 20))
    assert "inverted" in caplog.text


def test_python_api_fills_numpy_and_pil_alike():
    model = facefill.load("telea", device="cpu")
    assert model.source == "builtin" and model.name == "telea"
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    mask[8:16, 8:20] = 1                                     # a 0/1 mask
    filled = model.fill(image, mask)
    assert isinstance(filled, np.ndarray) and filled.shape == image.shape
    hole = mask.astype(bool)
    assert np.array_equal(filled[~hole], image[~hole]) and not np.array_equal(filled[hole], image[hole])
    as_pil = model.fill(Image.fromarray(image), Image.fromarray(mask * 255))
    assert isinstance(as_pil, Image.Image) and np.array_equal(np.asarray(as_pil), filled)
    grey = model.fill(image[..., 0].copy(), mask)
    assert grey.shape == (24, 32) and np.array_equal(grey[~hole], image[..., 0][~hole])
    with pytest.raises(ValueError, match="--steps"):
        model.fill(image, mask, steps=0)


def test_python_api_default_loads_shipped_weights():
    model = facefill.load("default", device="cpu")
    assert model.source in ("shipped", "builtin")
    if model.source == "shipped":
        assert model.weights and model.size and model.meta.get("size") == model.size
