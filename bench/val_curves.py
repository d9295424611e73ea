"""Validation accuracy per epoch, mean over the runs each glob matches, as a Markdown table: the convergence
check behind a budget choice (docs/results.md, AV-MNIST-mini).

    .venv/bin/python bench/val_curves.py "joint=runs/tables/avmnist-mini/main/joint/seed*" "SAM=.../sam/seed*"
"""

from __future__ import annotations

import argparse
import glob
import sys

import pandas as pd

import msam_lab


def val_table(groups: dict[str, str]) -> str:
    """``{label: glob of run folders}`` -> Markdown rows of the mean ``val_acc`` per epoch (finished runs only)."""
    curves = {}
    for label, pattern in groups.items():
        runs = [msam_lab.load_run(d) for d in sorted(glob.glob(pattern))]
        runs = [r for r in runs if r.finished]
        if not runs:
            raise ValueError(f"no finished run matches {pattern!r} ({label}); train it first")
        epochs = pd.concat([r.epochs.set_index("epoch")["val_acc"] for r in runs], axis=1)
        curves[f"{label} ({len(runs)} run{'' if len(runs) == 1 else 's'})"] = epochs.mean(axis=1)
    width = max(int(c.index.max()) for c in curves.values()) + 1
    lines = ["| runs | " + " | ".join(f"epoch {e}" for e in range(width)) + " |", "|---|" + "---|" * width]
    for label, curve in curves.items():
        cells = ["" if pd.isna(x) else f"{x:.2f}" for x in curve.reindex(range(width))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("groups", nargs="+", metavar="LABEL=GLOB", help="a label and a glob of run folders")
    args = p.parse_args(argv)
    groups = {}
    for item in args.groups:
        label, sep, pattern = item.partition("=")
        if not sep or not label or not pattern:
            p.error(f"expected LABEL=GLOB, got {item!r}")
        groups[label] = pattern
    try:
        print(val_table(groups))
    except (OSError, ValueError) as err:  # no run, or a missing or damaged run file: one line naming it
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
