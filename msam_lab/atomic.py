"""Atomic file replacement: write a temporary file beside the target, fsync it, rename it over.

A reader (or a resumed trainer after a kill) sees either the old file or the new one, never a
half-written one: ``os.replace`` is atomic on POSIX within one filesystem, and the fsync before
it makes the new bytes durable before the name points at them.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; fsync the folder so it survives a crash too.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:          # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def torch_save(path, obj) -> Path:
    """``torch.save`` through a buffer, so a checkpoint is replaced atomically like any other file."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())
