"""Atomic writes: a temporary file in the target folder, then ``os.replace``."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside ``path``; on success it replaces ``path``, else vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_image_atomic(path, image, format: str | None = None, **save_kwargs) -> None:
    """Save a PIL image atomically; the format comes from the suffix unless given."""
    from PIL import Image

    fmt = format or Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    write_bytes_atomic(path, buffer.getvalue())
