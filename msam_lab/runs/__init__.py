"""The run directory: its layout and reader (reader.py), the writer a run trains with (writer.py, lock.py,
atomic.py, checkpoint_io.py), RunLogger for your own loop (logger.py), and what reads many runs
(status.py, selection.py, compare.py).

The names below load on first use (PEP 562): importing ``msam_lab.runs.status`` runs this file first,
and ``reader`` imports torch (models, checkpoints), which ``msam-lab status`` does without."""

import importlib

_PUBLIC = {
    "Run": "msam_lab.runs.reader",
    "load_run": "msam_lab.runs.reader",
    "find_runs": "msam_lab.runs.layout",
    "is_run": "msam_lab.runs.layout",
    "is_run_dir": "msam_lab.runs.layout",
    "read_table": "msam_lab.runs.layout",
}
__all__ = ["Run", "find_runs", "is_run", "is_run_dir", "load_run", "read_table"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'msam_lab.runs' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
