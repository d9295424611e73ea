"""One trainer per run directory: a lock file holding the owner's pid and host.

The lock is written whole into a temporary file and hard-linked into place (``os.link`` fails
when the name exists), so two trainers cannot both create it and no reader sees it half-written.
A lock whose pid no longer runs on this host is *stale* (its trainer was killed): it is named and
may be taken over, which is what resuming a killed run does. A lock from another host cannot be
checked by pid; it counts as stale once its run's heartbeat is older than ``STALE_AFTER`` seconds.

A takeover is atomic: the taker holds an ``fcntl.flock`` on the stale lock file, checks that this
file is still the one at ``lock`` and that its owner is still gone, and renames its own lock over
it before letting go. A rival waiting on the same flock then finds another file at ``lock`` (or
a live owner) and gives up: of several trainers resuming one killed run, exactly one gets it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from msam_lab.faults import named
from msam_lab.runs.atomic import unique_temp, write_bytes

LOCK = "lock"
STALE_AFTER = 300.0  # seconds without a heartbeat before another host's lock counts as stale
BEING_WRITTEN = 2.0  # seconds an unreadable lock may be one still being written (a file system without links)
TAKEOVER_TRIES = 100


class RunLockedError(RuntimeError):
    """Another live trainer holds the run."""


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class LockInfo:
    pid: int
    host: str
    since: float

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self, heartbeat: float | None = None) -> bool:
        """True while the owner may still be training."""
        if self.here:
            return pid_alive(self.pid)
        last = heartbeat if heartbeat is not None else self.since
        return time.time() - last < STALE_AFTER

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def _parse(text: str) -> LockInfo:
    try:
        data = json.loads(text)
        return LockInfo(int(data["pid"]), str(data["host"]), float(data["since"]))
    except (ValueError, KeyError, TypeError):  # a lock torn by a crash while it was written: stale
        return LockInfo(-1, "unknown", 0.0)


def read_lock(run_dir) -> LockInfo | None:
    path = Path(run_dir) / LOCK
    try:
        return _parse(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):  # not a readable file (a folder, garbage bytes): stale
        return LockInfo(-1, "unknown", 0.0)


def _content() -> bytes:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()


class RunLock:
    """``RunLock(run_dir).acquire(heartbeat)`` -> the stale lock it replaced (or None); ``release()``."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _create(self) -> bool:
        """The lock, if nobody holds one: linked into place whole, or (no hard links) created with O_EXCL."""
        fd, tmp = None, None
        try:
            fd, tmp = unique_temp(self.path)
            os.write(fd, _content())
            os.fsync(fd)
            os.close(fd)
            fd = None
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                return self._create_exclusive()
        except OSError as err:
            raise named(err, self.path) from None
        finally:
            if fd is not None:
                os.close(fd)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self.held = True
        return True

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, _content())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)  # never leave an empty lock behind (a full disk)
            raise
        os.close(fd)
        self.held = True
        return True

    def acquire(self, heartbeat: float | None = None) -> LockInfo | None:
        if self._create():
            return None
        for _ in range(TAKEOVER_TRIES):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:  # released meanwhile
                if self._create():
                    return None
                continue
            except OSError as err:
                raise named(err, self.path) from None
            try:
                taken = self._take_over(fd, heartbeat)
            finally:
                os.close(fd)
            if taken is not None:
                return taken
        raise RunLockedError(f"run {self.path.parent} keeps being taken by other trainers; try again")

    def _take_over(self, fd: int, heartbeat: float | None) -> LockInfo | None:
        """Under the flock of the lock file ``fd``: its stale owner, after replacing it with ours;
        None when that file is no longer the one at ``lock`` (try again)."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        opened = os.fstat(fd)
        try:
            current = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if (opened.st_dev, opened.st_ino) != (current.st_dev, current.st_ino):
            return None  # a rival replaced it while we waited for the flock
        owner = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        if owner.alive(heartbeat):
            raise RunLockedError(
                f"run {self.path.parent} is being trained by {owner.describe()}; "
                f"wait for it to finish or stop that process first"
            )
        if owner.pid < 0 and time.time() - opened.st_mtime < BEING_WRITTEN:
            raise RunLockedError(f"run {self.path.parent} was just taken by another trainer")
        write_bytes(self.path, _content())  # renamed over the stale file while we hold its flock
        self.held = True
        return owner

    def release(self) -> None:
        if self.held:
            owner = read_lock(self.path.parent)
            # another host may have taken over a lock whose heartbeat aged past STALE_AFTER: leave theirs
            if owner is not None and (owner.pid, owner.host) == (os.getpid(), socket.gethostname()):
                self.path.unlink(missing_ok=True)
            self.held = False
