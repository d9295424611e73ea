"""CPU time of ``msam-lab`` commands that should start fast, against ``python -c pass``.

Each command runs as ``python -m msam_lab ARGS`` in a fresh process; its CPU time is the child's user +
system time (``resource.getrusage(RUSAGE_CHILDREN)`` before and after), the median of ``--repeat`` runs.
CPU time, not wall time: it holds on a machine loaded by other jobs. ``msam-lab status`` reads a
folder of two small fake runs written here.

    python bench/cli_startup.py                              # this tree
    python bench/cli_startup.py --pythonpath /tmp/oldtree    # another tree's msam_lab, same interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = "{runs}"  # stands for the fake runs folder in COMMANDS

COMMANDS = [
    ("--help",),
    ("train", "--help"),
    ("compare", "--help"),
    ("demo", "--help"),
    ("status", "--help"),
    ("data", "--help"),
    ("data", "check", "--help"),
    ("data", "info", "--help"),
    ("data", "build-avmnist", "--help"),
    ("sweep", "--help"),
    ("landscape", "--help"),
    ("sharpness", "--help"),
    ("status", RUNS),
    ("data", "info"),
]


def fake_runs(folder: Path) -> None:
    """A finished run and one killed mid-training (says running, no lock), as the trainer writes them."""
    done = folder / "done"
    done.mkdir(parents=True)
    (done / "status.json").write_text(
        json.dumps({"state": "finished", "method": "msam", "epochs": 2, "last_step": 5, "last_epoch": 2})
    )
    (done / "summary.json").write_text(json.dumps({"steps": 6}))
    (done / "epochs.csv").write_text(
        "epoch,test_acc,test_dominant,test_share_image,test_share_audio\n"
        "0,0.25,image,0.6,0.4\n1,0.5,image,0.7,0.3\n2,0.75,image,0.8,0.2\n"
    )
    killed = folder / "killed"
    killed.mkdir()
    (killed / "status.json").write_text(
        json.dumps(
            {"state": "running", "method": "sam", "epochs": 3, "last_step": 2, "last_epoch": 0, "heartbeat_unix": 0.0}
        )
    )


def cpu_seconds(argv: list[str], env: dict, cwd: Path) -> float:
    """User + system CPU seconds of one run of ``argv`` (it must exit 0)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command; the median is shown (default 5)")
    parser.add_argument(
        "--pythonpath", default=str(ROOT), help="folder holding the msam_lab to time (default this tree)"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter (default this one)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    env = {**os.environ, "PYTHONPATH": args.pythonpath}
    env.pop("WORLD_SIZE", None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fake_runs(tmp / "runs")
        rows = [("python -c pass", [args.python, "-c", "pass"])]
        for command in COMMANDS:
            shown = " ".join("RUNS" if a == RUNS else a for a in command)
            rows.append(
                (
                    f"msam-lab {shown}",
                    [args.python, "-m", "msam_lab", *(str(tmp / "runs") if a == RUNS else a for a in command)],
                )
            )
        print(f"msam_lab from {args.pythonpath}; CPU s (user+sys), median of {args.repeat}\n")
        print(f"| {'command':<36} | {'CPU s':>6} | {'- python':>8} |")
        print(f"|{'-' * 38}|{'-' * 8}|{'-' * 10}|")
        base = None
        for label, cmd in rows:
            median = statistics.median(cpu_seconds(cmd, env, tmp) for _ in range(args.repeat))
            base = median if base is None else base
            print(f"| {label:<36} | {median:6.3f} | {median - base:8.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
