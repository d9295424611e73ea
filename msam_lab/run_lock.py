"""One trainer per run directory: a lock file holding the owner's pid and host.

The lock is created with O_EXCL, so two trainers cannot both take it. A lock whose pid no longer
runs on this host is *stale* (its trainer was killed): it is named and may be taken over, which
is what resuming a killed run does. A lock from another host cannot be checked by pid; it counts
as stale once its run's heartbeat is older than ``STALE_AFTER`` seconds.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK = "lock"
STALE_AFTER = 300.0       # seconds without a heartbeat before another host's lock counts as stale


class RunLockedError(RuntimeError):
    """Another live trainer holds the run."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by someone else
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


def read_lock(run_dir) -> LockInfo | None:
    path = Path(run_dir) / LOCK
    try:
        data = json.loads(path.read_text())
        return LockInfo(int(data["pid"]), str(data["host"]), float(data["since"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):   # a lock torn by a crash while it was written: stale
        return LockInfo(-1, "unknown", 0.0)


class RunLock:
    """``RunLock(run_dir).acquire(heartbeat)`` -> the stale lock it replaced (or None); ``release()``."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        self.held = True
        return True

    def acquire(self, heartbeat: float | None = None) -> LockInfo | None:
        if self._create():
            return None
        owner = read_lock(self.path.parent)
        if owner is not None and owner.alive(heartbeat):
            raise RunLockedError(f"run {self.path.parent} is being trained by {owner.describe()}; "
                                 f"wait for it to finish or stop that process first")
        self.path.unlink(missing_ok=True)       # stale: its trainer is gone
        if not self._create():                  # lost a race with a third trainer
            raise RunLockedError(f"run {self.path.parent} was just taken by another trainer")
        return owner

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
