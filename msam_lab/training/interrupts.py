"""SIGTERM (a scheduler pre-empting a job, ``kill PID``) handled like Ctrl-C while a run trains,
so the run is marked ``interrupted`` and kept instead of dying mid-write."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield                       # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
