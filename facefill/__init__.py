"""facefill: restore occluded faces with classical and learned inpainting methods.

    import facefill
    model = facefill.load("default")          # or "telea", "dense-gan", "path/to/weights.pt"
    filled = model.fill(image, mask)          # numpy arrays or PIL images; mask white = hole
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Loaded on first use, so that `facefill --help` does not import torch.
    if name in ("load", "FaceFill"):
        from facefill.inference import model

        return getattr(model, name)
    raise AttributeError(f"module 'facefill' has no attribute {name!r}")
