"""Atomic file replacement: write a temporary file beside the target, fsync it, rename it over.

A reader (or a resumed trainer after a kill) sees either the old file or the new one, never a
half-written one: ``os.replace`` is atomic on POSIX within one filesystem, and the fsync before
it makes the new bytes durable before the name points at them. Each write has its own temporary
name (pid and random bytes, created with ``O_EXCL``), so processes and threads writing the same
file at once never share one, and a planted symlink at a temporary name is never followed.

Also here: ``locked`` (an exclusive ``fcntl.flock`` on a sidecar file, for read-modify-write
updates of a file several processes share) and the full-disk fallback for small files rewritten
often (``padded`` + ``overwrite_in_place``: status.json stays writable when the disk is full).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import secrets
from pathlib import Path

from msam_lab.faults import named

BLOCK = 4096  # status.json is padded to a multiple of this: the room an in-place rewrite has


def _fsync_dir(folder: Path) -> None:
    # The rename itself lives in the directory entry; fsync the folder so it survives a crash too.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unique_temp(path: Path) -> tuple[int, Path]:
    """A new temporary file beside ``path``, opened for writing, that no other writer shares."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:  # 48 random bits taken: draw again
            continue


def write_bytes(path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically. An OSError names ``path`` (not the temporary file)."""
    path = Path(path)
    try:
        fd, tmp = unique_temp(path)
    except OSError as err:
        raise named(err, path) from None
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError):
            named(err, path)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def padded(data: bytes, block: int = BLOCK) -> bytes:
    """``data`` with spaces before its final newline up to a multiple of ``block`` bytes, at least half a
    block of them: room for ``overwrite_in_place`` to write a longer text later (JSON stays valid)."""
    body = data.rstrip(b"\n")
    size = -(-(len(body) + 1 + block // 2) // block) * block
    return body + b" " * (size - len(body) - 1) + b"\n"


def overwrite_in_place(path, data: bytes) -> None:
    """Rewrite ``path``'s bytes where they are, padded with spaces to its current size: no block is
    allocated, so it works on a full disk where ``write_bytes`` cannot make its temporary file.
    Not atomic against a concurrent reader; the last resort of a file ``padded`` left room in."""
    path = Path(path)
    body = data.rstrip(b"\n")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise named(err, path) from None
    try:
        size = os.fstat(fd).st_size
        if len(body) + 1 > size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        os.pwrite(fd, body + b" " * (size - len(body) - 1) + b"\n", 0)
        os.fsync(fd)
    except OSError as err:
        raise named(err, path) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(lock_path):
    """An exclusive ``fcntl.flock`` on ``lock_path`` (created if absent) while the block runs: processes
    that read, modify and rewrite one shared file take turns. The kernel drops it if its holder dies."""
    lock_path = Path(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        raise named(err, lock_path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def torch_save(path, obj) -> Path:
    """``torch.save`` through a buffer, so a checkpoint is replaced atomically like any other file."""
    import torch  # noqa: PLC0415 - torch loads only when this runs (the rest of the module is torch-free)

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())
