"""Faults of the environment in one line, and the checks made before writing into a run folder.

``describe(err)`` puts an OSError into words with its path: ``no space left on device writing
runs/x/steps.csv``, ``read-only file system: runs/x``, ``permission denied: runs/x/lock``. The
command line prints it and exits 1 (msam_lab.cli.commands); a trainer marks its run failed with it first.

``refuse_symlinks`` refuses to write through a symlink inside a run folder (a ``landscapes/`` or
``checkpoints/`` linked elsewhere would make the toolkit write outside the run). ``check_writable``
is what an analysis runs before it computes (``msam-lab landscape``, ``sharpness``): no symlink on
the way, the folder writable, and some free space, so an hour of computing does not end in a
failed write.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

# errno -> (what happened, with {} the path; the fix)
_WORDS = {
    errno.ENOSPC: ("no space left on device writing {}", "free some space"),
    errno.EDQUOT: ("disk quota exceeded writing {}", "free some space or raise the quota"),
    errno.EROFS: ("read-only file system: {}", "write to a writable file system"),
    errno.EACCES: ("permission denied: {}", "check the folder's owner and permissions"),
    errno.EPERM: ("operation not permitted: {}", "check the folder's owner and permissions"),
    errno.EIO: ("input/output error on {}", "check the disk"),
    errno.EFBIG: ("file too large: {}", "write to another file system"),
    errno.ENOENT: ("no such file or directory: {}", "was it deleted or moved meanwhile?"),
    errno.ELOOP: ("refusing to write through the symlink {}", "replace the link with a real file or folder"),
}


# faults of the machine, not of the input: a command stops on them with exit 1
ENVIRONMENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG})


class SymlinkInRun(ValueError):
    """A file or folder the toolkit would write inside a run folder is a symlink: refused. Bad input, as
    a ConfigError is (exit 2); not one itself, so that this module, imported by the lock and the atomic
    writes, needs no config (which needs torch)."""


class NotWritable(OSError):
    """``check_writable``'s refusal, before anything was computed: its message is the whole line."""

    def __str__(self) -> str:
        return self.strerror


def _path_text(err: OSError) -> str:
    name = err.filename
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    return str(name) if name is not None and not isinstance(name, int) else "(unnamed file)"


def describe(err: OSError) -> str:
    """One line: what went wrong, on which path, and what to do."""
    if isinstance(err, NotWritable) or err.errno is None:  # a message of our own (no errno)
        return str(err)
    words = _WORDS.get(err.errno)
    if words is None:
        cause = err.strerror or type(err).__name__
        return f"{cause.lower()}: {_path_text(err)}"
    what, fix = words
    return f"{what.format(_path_text(err))} ({fix})"


def named(err: OSError, path) -> OSError:
    """``err`` naming ``path`` (a failed ``write`` or ``fsync`` names no file; a temporary name is no help)."""
    err.filename, err.filename2 = str(path), None
    return err


def _is_link(path: Path) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def refuse_symlinks(root, *paths) -> None:
    """``SymlinkInRun`` if ``root/path`` or a folder between ``root`` and it is a symlink (``root``
    itself may be one: it is the path the user gave)."""
    root = Path(root)
    for path in map(Path, paths):
        current = root
        for part in (path.relative_to(root) if path.is_relative_to(root) else path).parts:
            current = current / part
            if _is_link(current):
                raise SymlinkInRun(
                    f"{current} is a symlink inside the run {root}: refusing to write through it "
                    f"(replace the link with a real file or folder)"
                )


def free_bytes(folder) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def check_writable(root, folder, need_bytes: int = 0, what: str = "the results") -> None:
    """Before computing: ``folder`` (inside the run ``root``, created later if absent) can receive
    about ``need_bytes``. Raises ``SymlinkInRun`` (a link on the way), or ``NotWritable`` (read-only,
    no permission, not enough free space), each one line naming the folder."""
    root, folder = Path(root), Path(folder)
    refuse_symlinks(root, folder)
    existing = folder
    while not existing.exists() and existing != root and existing.parent != existing:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        try:
            os.write(fd, b"x")  # a full disk may let a file be created but not a byte written
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        code = err.errno if err.errno in _WORDS else errno.EACCES
        raise NotWritable(
            code,
            f"cannot write {what} into {folder}: {_cause(code)} ({_WORDS[code][1]}); nothing was computed",
            str(existing),
        ) from None
    free = free_bytes(existing)
    if free < need_bytes:
        raise NotWritable(
            errno.ENOSPC,
            f"cannot write {what} into {folder}: about {_megabytes(need_bytes)} "
            f"needed, {_megabytes(free)} free (free some space); nothing was computed",
            str(existing),
        )


def _cause(code: int) -> str:
    text = os.strerror(code)
    return text[:1].lower() + text[1:]
