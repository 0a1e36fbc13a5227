"""Training checkpoints and inference weights files (DESIGN.md: one self-contained dict)."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import os
from pathlib import Path

import torch

import facefill
from facefill.config import config_dict
from facefill.fileio import atomic_path, write_bytes_atomic, write_json_atomic
from facefill.registry import get_method_class, make_config

FORMAT_VERSION = 2          # 2: int8 storage (``scales``); float16 files are still written as 1
STORAGES = ("float16", "int8")
INT8_MIN_ELEMENTS = 256     # smaller tensors (biases, norms) stay float16 under int8 storage
PARTS_KIND = "facefill-checkpoint-parts"
PARTS_MAGIC = b'{\n "kind": "' + PARTS_KIND.encode()


class WeightsError(ValueError):
    pass


def save_checkpoint(path, state: dict, part_mib: float | None = None) -> None:
    """Atomic ``torch.save``: a killed write never leaves a truncated checkpoint behind. With
    ``part_mib``, a checkpoint larger than that is written as ``PATH.part-NNN`` files of at most
    ``part_mib`` MiB each and ``PATH`` becomes a small JSON index of them, written last (the commit)."""
    if not part_mib:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    limit = max(1, int(part_mib * 1024 * 1024))
    if len(data) <= limit:
        write_bytes_atomic(path, data)
        remove_parts(path)
        return
    path = Path(path)
    parts = []
    for number, start in enumerate(range(0, len(data), limit)):
        chunk = data[start:start + limit]
        write_bytes_atomic(path.with_name(f"{path.name}.part-{number:03d}"), chunk)
        parts.append({"file": f"{path.name}.part-{number:03d}", "bytes": len(chunk),
                      "sha256": hashlib.sha256(chunk).hexdigest()})
    index = {"kind": PARTS_KIND, "bytes": len(data), "parts": parts}
    write_bytes_atomic(path, json.dumps(index, indent=1).encode())
    remove_parts(path, keep=len(parts))


def remove_parts(path, keep: int = 0) -> None:
    """Delete ``PATH.part-NNN`` files numbered ``keep`` and above (left by an earlier write)."""
    path = Path(path)
    for part in path.parent.glob(f"{glob.escape(path.name)}.part-*"):
        number = part.name.rsplit("-", 1)[-1]
        if number.isdigit() and int(number) >= keep:
            part.unlink(missing_ok=True)


def _read_parts(path: Path) -> io.BytesIO:
    try:
        index = json.loads(path.read_text())
        parts = index["parts"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise WeightsError(f"{path}: not a readable checkpoint parts index") from None
    chunks = []
    for part in parts:
        part_path = path.with_name(part["file"])
        try:
            chunk = part_path.read_bytes()
        except OSError:
            raise WeightsError(f"{part_path}: checkpoint part missing") from None
        if len(chunk) != part["bytes"] or hashlib.sha256(chunk).hexdigest() != part["sha256"]:
            raise WeightsError(f"{part_path}: checkpoint part damaged (size or checksum differs)")
        chunks.append(chunk)
    return io.BytesIO(b"".join(chunks))


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint or weights file (whole, or a parts index with its parts) with weights_only."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise WeightsError(f"{path}: empty file (0 bytes), not a facefill weights file or checkpoint")
    source = path
    try:
        with open(path, "rb") as stream:
            if stream.read(len(PARTS_MAGIC)) == PARTS_MAGIC:
                source = _read_parts(Path(path))
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except WeightsError:
        raise
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a weights file"
        raise WeightsError(f"{path}: not a readable facefill weights file ({error.__class__.__name__})") from None


def half_precision(state: dict) -> dict:
    """Float tensors stored as float16 (half the file; loading casts back to the model's float32)."""
    return {k: half_precision(v) if isinstance(v, dict) else v.half() if v.is_floating_point() else v
            for k, v in state.items()}


def quantize_int8(state: dict) -> tuple[dict, dict]:
    """Weight-only int8 storage (a quarter of float32): every float tensor of two or more dimensions
    and at least INT8_MIN_ELEMENTS elements becomes int8 with one float16 scale per slice along its
    first dimension (symmetric, max |w| -> 127); the rest is stored as float16. Returns
    (state with int8 tensors, {module: {key: scales}})."""
    stored, scales = {}, {}
    for module, tensors in state.items():
        stored[module], scales[module] = {}, {}
        for key, value in tensors.items():
            if value.is_floating_point() and value.dim() >= 2 and value.numel() >= INT8_MIN_ELEMENTS:
                flat = value.detach().float().flatten(1)
                scale = (flat.abs().amax(1) / 127).clamp_min(1e-12).half()
                quantized = (flat / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
                stored[module][key] = quantized.view_as(value)
                scales[module][key] = scale
            else:
                stored[module][key] = value.half() if value.is_floating_point() else value
    return stored, scales


def stored_state(payload: dict) -> dict:
    """A weights file's state dict in float32 where it was quantized (its ``scales``)."""
    scales = payload.get("scales") or {}
    state = payload["state_dict"]
    if not scales:
        return state
    restored = {}
    for module, tensors in state.items():
        module_scales = scales.get(module, {})
        restored[module] = {key: value.float() * module_scales[key].float().view(-1, *[1] * (value.dim() - 1))
                            if key in module_scales else value for key, value in tensors.items()}
    return restored


def weights_payload(method, meta: dict, storage: str = "float16") -> dict:
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    state = method.export_state()
    # int8 files are format 2: an older facefill refuses them instead of loading the values unscaled
    payload = {"format_version": 2 if storage == "int8" else 1, "method": method.name,
               "config": config_dict(method.config)}
    if storage == "int8":
        payload["state_dict"], payload["scales"] = quantize_int8(state)
    else:
        payload["state_dict"] = half_precision(state)
    payload["meta"] = {"facefill_version": facefill.__version__, **meta, "storage": storage}
    return payload


def export_weights(method, path, meta: dict, storage: str = "float16") -> dict:
    """Write the inference-only weights file and its JSON card (``.json`` beside it)."""
    payload = weights_payload(method, meta, storage)
    save_checkpoint(path, payload)
    card = {"method": payload["method"], "file": Path(path).name, "config": payload["config"],
            **payload["meta"]}
    write_json_atomic(Path(path).with_suffix(".json"), card)
    return card


def load_weights(path, device="cpu"):
    """Rebuild a method from a weights file alone (its ``method`` and ``config``)."""
    return method_from_payload(load_checkpoint(path), path, device)


def check_payload(payload, path) -> type:
    """The method class of a loaded weights file, or a one-line WeightsError naming ``path``."""
    if not isinstance(payload, dict) or "method" not in payload or "state_dict" not in payload:
        raise WeightsError(f"{path}: not a facefill weights file (no method/state_dict)")
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise WeightsError(f"{path}: format_version {version!r} is not a number")
    if version > FORMAT_VERSION:
        raise WeightsError(f"{path}: written by a newer facefill (format {version})")
    name = payload["method"]
    if not isinstance(name, str):
        raise WeightsError(f"{path}: method {name!r} is not a method name")
    try:
        cls = get_method_class(name)
    except KeyError as error:
        raise WeightsError(f"{path}: {error}") from None
    if not cls.trainable:
        raise WeightsError(f"{path}: method {name!r} has no weights to load (use --method {name})")
    if not all(isinstance(payload.get(key, {}), dict) for key in ("config", "state_dict", "scales")):
        raise WeightsError(f"{path}: config, state_dict and scales must be dicts")
    return cls


def method_from_payload(payload, path, device="cpu"):
    """The method a loaded weights file describes; ``path`` names it in errors and records."""
    cls = check_payload(payload, path)
    try:
        config = config_from_dict(payload["method"], payload.get("config", {}))
        method = cls(config)
    except Exception as error:  # a setting of the wrong type or value
        raise WeightsError(f"{path}: its config cannot build {payload['method']!r} "
                           f"({_first_line(error)})") from None
    try:
        method.load_export_state(stored_state(payload))
    except Exception as error:  # missing keys, shapes that differ from the config's networks
        raise WeightsError(f"{path}: its state_dict does not match its config "
                           f"({_first_line(error)})") from None
    method.eval()
    method.weights_meta = payload.get("meta", {})
    method.weights_path = str(path)
    method = method.to_device(torch.device(device))
    method.prepare_inference()
    return method


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    detail = next((line.strip() for line in text[1:] if line.strip()), "") if len(text) > 1 else ""
    return f"{error.__class__.__name__}: {text[0] if text else ''}{' ' + detail if detail else ''}"[:300]


def config_from_dict(name: str, values: dict):
    """Rebuild a method's config from stored plain values (JSON/pickle lists back to tuples)."""
    fields = {f.name: f for f in dataclasses.fields(get_method_class(name).config_class)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in fields}
    return make_config(name, values)


def weights_dir() -> Path:
    """``$FACEFILL_WEIGHTS`` if set, else the repository's ``weights/`` folder."""
    env = os.environ.get("FACEFILL_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def shipped_cards() -> list[dict]:
    """Every card in the weights folder whose weights file is there too."""
    cards = []
    for card_path in sorted(weights_dir().glob("*.json")):
        try:
            card = json.loads(card_path.read_text())
        except (OSError, ValueError):
            continue
        weights = card_path.with_suffix(".pt")
        if weights.exists() and "method" in card:
            cards.append({**card, "path": str(weights)})
    return cards


def card_psnr(card: dict) -> float:
    return card.get("metrics", {}).get("center", {}).get("psnr", float("-inf"))


def smallest_fill(card: dict) -> int:
    """The smallest square an any-size card's model fills at (smaller face crops are enlarged)."""
    default = get_method_class(card["method"]).config_class.min_fill_size
    return min(int(card["size"]), int(card.get("config", {}).get("min_fill_size", default)))


def fills_any_size(card: dict) -> bool:
    """Whether the card's method is fully convolutional (it has ``fill_size``): one weights file
    that fills crops of every size, so it fits images of any size."""
    try:
        return hasattr(get_method_class(card["method"]), "fill_size")
    except KeyError:
        return False


def largest_trained(cards: list[dict]) -> dict:
    """Of one any-size method's cards, the one trained at the largest size (the best centre PSNR
    among equals); its smaller sizes fill the smaller face crops (``with_smaller_scales``)."""
    return max(cards, key=lambda c: (int(c["size"]), card_psnr(c)))


def best_shipped(size: int | None = None, method: str | None = None) -> dict | None:
    """The shipped card to use: for ``method`` if given, else the best centre-mask PSNR of the
    methods that fill any size (the default model; of its cards, the one trained at the largest
    size), else of all; among fixed sizes, the smallest native size that is at least ``size``
    (else the largest). Images smaller than the faces the default model learned from go to a
    fixed-size card of their scale where one ships."""
    cards = [c for c in shipped_cards() if method is None or c["method"] == method]
    if not cards:
        return None
    any_size = [c for c in cards if fills_any_size(c)]
    if method is not None and len(any_size) == len(cards):
        return largest_trained(cards)
    if method is None and any_size:
        best_method = max(any_size, key=card_psnr)["method"]
        best = largest_trained([c for c in any_size if c["method"] == best_method])
        smaller = [c for c in cards if size is not None and size <= c["size"] < smallest_fill(best)]
        if not smaller:
            return best
        cards = smaller
    if size is not None:
        sizes = sorted({c["size"] for c in cards})
        fitting = [s for s in sizes if s >= size]
        chosen = fitting[0] if fitting else sizes[-1]
        cards = [c for c in cards if c["size"] == chosen]
    return max(cards, key=card_psnr)


def resolve_inpainter(method: str | None, weights: str | None, device="cpu", image_size: int | None = None):
    """What ``inpaint``/``eval``/``bench`` run: explicit weights, a method (shipped weights for
    a learned one), or by default the best shipped learned method for the size, else telea."""
    from facefill.registry import create_method

    if weights:
        loaded = load_weights(weights, device)
        if method and loaded.name != method:
            raise WeightsError(f"{weights}: holds {loaded.name!r} weights, not {method!r}")
        return loaded
    if method and not get_method_class(method).trainable:
        return create_method(method)
    card = best_shipped(image_size, method)
    if card is None:
        if method:
            raise WeightsError(f"no shipped weights for {method!r} in {weights_dir()}; "
                               f"train it (facefill train) and pass --weights")
        return create_method("telea")
    return with_smaller_scales(load_weights(card["path"], device), card, device)


def with_smaller_scales(inpainter, card: dict, device="cpu"):
    """An any-size default card's model with the same method's shipped cards of smaller sizes
    added (``add_smaller_scale``), so that each face crop is filled by the scale it fits."""
    if not hasattr(inpainter, "add_smaller_scale"):
        return inpainter
    smaller = [c for c in shipped_cards() if c["method"] == card["method"] and int(c["size"]) < int(card["size"])]
    if smaller:
        below = largest_trained(smaller)
        inpainter.add_smaller_scale(with_smaller_scales(load_weights(below["path"], device), below, device))
    return inpainter
