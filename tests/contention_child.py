"""Processes that race on the same run files, for tests/runs/test_contention.py; not a test module.

    python tests/contention_child.py lock ROOT ID ROUNDS   # each round: take over ROOT/<round>/lock
    python tests/contention_child.py rows CSV ID N          # N replace_rows calls, one new row each

Each writes ``ROOT/ready-ID`` once imported and waits for the parent's ``go`` file, so that all
of them start at once. ``lock`` imports only msam_lab.runs.lock and what it needs (no torch: eight
of them start in a second); a winner keeps the lock until the parent writes ``ROOT/done`` (a
process that ends leaves a stale lock, which the next one may rightly take over).
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLL = 0.0002
WAIT = 120.0


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + WAIT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {WAIT} s")
        time.sleep(POLL)


def lock(root: Path, ident: str, rounds: int) -> None:
    # the package without its __init__ (which imports torch): its modules import as usual
    package = types.ModuleType("msam_lab")
    package.__path__ = [str(REPO / "msam_lab")]
    sys.modules["msam_lab"] = package
    from msam_lab.runs.lock import RunLock, RunLockedError

    held = []  # winners keep their locks, as a live trainer does
    (root / f"ready-{ident}").touch()
    for r in range(rounds):
        folder = root / str(r)
        wait_for(folder / "go")
        lock = RunLock(folder)
        try:
            lock.acquire()
            outcome = "won"
            held.append(lock)
        except RunLockedError:
            outcome = "lost"
        (folder / f"result-{ident}").write_text(outcome)
    wait_for(root / "done")  # alive until the parent has checked the last round


def rows(csv: Path, ident: str, n: int) -> None:
    from msam_lab.analysis.sharpness_timeline import KEYS
    from msam_lab.runs.writer import replace_rows

    (csv.parent / f"ready-{ident}").touch()
    wait_for(csv.parent / "go")
    for i in range(n):
        replace_rows(
            csv,
            [
                {
                    "epoch": int(ident),
                    "scope": f"s{i}",
                    "split": "train",
                    "n_samples": 8,
                    "subset_seed": 0,
                    "seed": 0,
                    "topk": 1,
                    "probes": 2,
                    "rho": 0.05,
                    "lambda_1": float(i),
                    "writer": ident,
                }
            ],
            KEYS,
        )


if __name__ == "__main__":
    mode, path, ident, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    {"lock": lock, "rows": rows}[mode](path, ident, count)
