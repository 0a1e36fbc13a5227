"""``--device`` names: checked here once, for every command, with a one-line error."""
import re

import torch

#: What ``--device`` accepts: auto, cpu, cuda, cuda:N, mps.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unknown name, ``cuda`` without a GPU or a GPU
    index that does not exist is a ValueError with one line naming the device."""
    name = (name or "auto").strip().lower()
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"--device {name!r}: unknown device; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for, but no CUDA device is available")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps asked for, but MPS is not available")
    return torch.device(name)
