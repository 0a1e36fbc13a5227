"""``load_inpainter``: every command gets its method the same way (as timm's ``create_model``),
and where its weights came from travels with it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from facefill.checkpoint import best_shipped, resolve_inpainter

DEFAULT = "default"


@dataclass
class Loaded:
    """A ready inpainter; ``source`` is ``builtin`` (classical), ``shipped`` or ``weights``;
    ``meta`` the weights' card (size, data, metrics ...), empty for classical methods."""

    inpainter: object
    source: str
    weights: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return getattr(self.inpainter, "name", "") or type(self.inpainter).__name__


def load_inpainter(name: str | None = None, weights: str | None = None, device="cpu",
                   image_size: int | None = None) -> Loaded:
    """``name`` is a method (``telea``, ``dense-gan`` ...), ``"default"``/None (the best shipped
    learned method, else telea) or a path to a weights file; ``weights`` pins a file for ``name``.
    ``image_size`` picks among shipped sizes (the smallest at least that large)."""
    if name and name != DEFAULT and (name.endswith(".pt") or "/" in name):
        name, weights = None, name
    if name == DEFAULT:
        name = None
    inpainter = resolve_inpainter(name, weights, torch.device(device), image_size)
    meta = dict(getattr(inpainter, "weights_meta", {}) or {})
    if weights:
        return Loaded(inpainter, "weights", str(weights), meta)
    if not getattr(inpainter, "trainable", False):
        return Loaded(inpainter, "builtin")
    card = best_shipped(image_size, inpainter.name)
    return Loaded(inpainter, "shipped", getattr(inpainter, "weights_path", None) or (card or {}).get("path"), meta)
