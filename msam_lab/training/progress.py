"""Training progress for a person watching: a bar on a terminal, one line per epoch elsewhere.

A log file, CI or a notebook gets no bar: tqdm's refreshes written to a file are thousands of
frames. They get one line per evaluated epoch instead; ``quiet`` silences both.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total_steps: int, epochs: int, desc: str, quiet: bool = False, done: int = 0, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.epochs, self.desc, self.quiet = epochs, desc, quiet
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = (
            tqdm(total=total_steps, initial=done, desc=desc, unit="step", leave=False, file=self.stream)
            if tty and not quiet
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
