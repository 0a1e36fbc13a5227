"""Atomic writes: a temporary file in the target folder, then ``os.replace``; per-file locks.

Temporaries are named ``.<name>.<pid>-<random>.tmp<suffix>``: a process killed mid-write (kill -9)
leaves one behind, and :func:`remove_stale_temporaries` removes those whose writer is gone.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path

#: ``.<name>.<pid>-<random>.tmp<suffix>`` (this module's temporaries); group 1 is the pid.
TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.tmp(\.[^.]*)?$")
#: Temporaries of the older naming (``.<name>.<random>.tmp<suffix>``, no pid) older than this are stale.
LEGACY_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")
STALE_SECONDS = 3600


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside ``path``; on success it replaces ``path``, else vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp" + path.suffix,
                               dir=path.parent)
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


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists but is someone else's
    return True


def _age(path: Path) -> float:
    return time.time() - path.lstat().st_mtime


def remove_stale_temporaries(folder) -> list[Path]:
    """Remove this module's temporaries in ``folder`` whose writing process is gone (a kill -9
    mid-write); those of a live process (a concurrent run) stay. Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        try:
            if match:
                stale = not _process_alive(int(match.group(1)))
            else:
                stale = bool(LEGACY_TEMPORARY.match(entry.name)) and _age(entry) > STALE_SECONDS
            if stale and entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
        except OSError:
            continue
    return removed


# ------------------------------------------------------------------------------------------ locks

def lock_path(path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    try:
        pid, _, host = lock.read_text().partition(" ")
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


def _lock_is_stale(lock: Path) -> bool:
    """A lock whose process is gone: same host and a dead pid, or unreadable/foreign and old."""
    owner = _lock_owner(lock)
    try:
        if owner is not None and owner[1] == socket.gethostname():
            return not _process_alive(owner[0])
        return _age(lock) > STALE_SECONDS
    except FileNotFoundError:
        return True


def try_lock(path) -> tuple[Path | None, int | None]:
    """Take the lock of output ``path`` (``.<name>.lock`` beside it, created with O_EXCL and
    holding ``<pid> <host>``). Returns ``(lock, None)`` when taken, ``(None, pid)`` when a live
    process holds it. A stale lock (its process is gone) is taken over."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _lock_is_stale(lock):
                owner = _lock_owner(lock)
                return None, owner[0] if owner else None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock, None
    owner = _lock_owner(lock)
    return None, owner[0] if owner else None


def release_lock(lock: Path | None) -> None:
    if lock is not None:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
