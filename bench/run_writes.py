"""The cost of writing a run while it trains (a benchmark, not a test).

Trains the same av-digits M-SAM run with the streaming run store (status.json heartbeats, step
rows appended every ``flush_every`` s, a resume checkpoint per epoch, every file fsynced and
replaced atomically) and with the old in-memory path (tables kept in memory and written once at
the end), interleaved, each in a fresh process, and reports the median training wall time of
each and their ratio. The old path is the trainer at git ref ``--old`` (default: the commit
before durable runs), checked out into a temporary worktree.

Both evaluate the whole train split every epoch in chunks of 512 (``train_eval_samples=0``,
``eval_batch_size=512`` on the new path, as the old one did). To compare how the run is written
and nothing else, give ``--new c56b82a`` (the durable-runs commit, before evaluation got cheaper:
the same evaluation code as the old path); by default the new side is this working tree, whose
evaluation is also faster. Target (writing alone): ratio <= 1.03.

    python bench/run_writes.py [--repeats 3] [--epochs 15] [--old 502a79d] [--new REF]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, torch
import msam_lab
cfg = json.loads(sys.argv[1])
run = msam_lab.train(cfg, out=sys.argv[2], quiet=True)
print(json.dumps({"wall": run.summary["wall_time"], "package": msam_lab.__file__}))
"""


def one(tree: Path, cfg: dict, out: Path) -> float:
    # cwd outside both trees: ``python -c`` puts the cwd first on sys.path, ahead of PYTHONPATH
    env = {**os.environ, "PYTHONPATH": str(tree)}
    text = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg), str(out)],
        env=env,
        cwd=out.parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(text.strip().splitlines()[-1])
    if not Path(result["package"]).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"imported {result['package']}, not the package of {tree}")
    return result["wall"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--old", default="502a79d", help="git ref of the in-memory trainer")
    ap.add_argument("--new", default=None, help="git ref of the streaming trainer (default: this tree)")
    args = ap.parse_args(argv)
    base = {"method": "msam", "epochs": args.epochs, "seed": 0, "device": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"old": tmp / "old", "new": tmp / "new" if args.new else ROOT}
        refs = {"old": args.old, "new": args.new}
        for key, tree in trees.items():
            if refs[key]:
                subprocess.run(
                    ["git", "worktree", "add", "--detach", str(tree), refs[key]],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
        new_cfg = {**base, "train_eval_samples": 0, "eval_batch_size": 512}
        try:
            times = {"in-memory (old)": [], "streaming (new)": []}
            for r in range(args.repeats):
                times["in-memory (old)"].append(one(trees["old"], base, tmp / f"old{r}"))
                times["streaming (new)"].append(one(trees["new"], new_cfg, tmp / f"new{r}"))
        finally:
            for key, tree in trees.items():
                if refs[key]:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"old {args.old}, new {args.new or 'working tree'}; "
        f"av-digits M-SAM, {args.epochs} epochs, {args.repeats} runs each, interleaved; "
        f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}"
    )
    for k, v in times.items():
        print(f"  {k:18s} median {med[k]:7.2f} s   runs {', '.join(f'{x:.2f}' for x in v)}")
    print(f"  ratio streaming / in-memory: {med['streaming (new)'] / med['in-memory (old)']:.3f}  (target <= 1.03)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
