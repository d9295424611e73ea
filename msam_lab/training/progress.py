"""Progress for a person watching: a bar on a terminal, one line per unit of work elsewhere.

A log file, CI or a notebook gets no bar: tqdm's refreshes written to a file are thousands of
carriage-return frames. They get one line per evaluated epoch (``Progress``) or per twentieth of the
work (``Counter``, e.g. the points of a landscape, with an estimate of the time left) instead;
``quiet`` silences both.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def is_terminal(stream) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    def __init__(self, total_steps: int, epochs: int, desc: str, quiet: bool = False, done: int = 0, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.epochs, self.desc, self.quiet = epochs, desc, quiet
        self.bar = (
            tqdm(total=total_steps, initial=done, desc=desc, unit="step", leave=False, file=self.stream)
            if is_terminal(self.stream) and not quiet
            else None
        )

    def step(self, row: dict) -> None:
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", dominant=row.get("dominant"), refresh=False)

    def epoch(self, row: dict) -> None:
        if self.quiet or self.bar is not None:
            return
        parts = [f"{self.desc}: epoch {row['epoch']}/{self.epochs}"]
        if "train_loss" in row:
            parts.append(f"train loss {row['train_loss']:.4f}")
        if "test_acc" in row:
            parts.append(f"test acc {row['test_acc']:.4f}")
        if "test_dominant" in row:
            parts.append(f"dominant {row['test_dominant']}")
        parts.append(f"{row['wall_time']:.1f} s")
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Counter:
    """``counter(done, total)`` after each unit of work: a bar on a terminal, else a line at every
    twentieth of ``total`` (and at the end) with the time spent and an estimate of the time left."""

    LINES = 20

    def __init__(self, desc: str, unit: str = "points", quiet: bool = False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.bar, self.started, self.first, self.next_line = None, None, 0, 0

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.started is None:  # a resumed computation starts with done - 1 units behind it
            self.started, self.first = time.perf_counter(), max(0, done - 1)
            if is_terminal(self.stream):
                self.bar = tqdm(
                    total=total, initial=self.first, unit=self.unit, leave=False, desc=self.desc, file=self.stream
                )
        if self.bar is not None:
            self.bar.n = done
            self.bar.refresh()
            return
        if done < self.next_line and done < total:
            return
        every = max(1, -(-total // self.LINES))
        self.next_line = (done // every + 1) * every
        spent = time.perf_counter() - self.started
        line = f"{self.desc}: {done}/{total} {self.unit} ({done / max(total, 1):.0%}), {format_seconds(spent)}"
        if self.first < done < total:
            line += f", ~{format_seconds(spent / (done - self.first) * (total - done))} left"
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
