"""The run directory: its layout and reader (reader.py), the writer a run trains with (writer.py, lock.py,
atomic.py, checkpoint_io.py), RunLogger for your own loop (logger.py), and what reads many runs
(status.py, selection.py, compare.py)."""

from msam_lab.runs.reader import Run, find_runs, is_run, is_run_dir, load_run, read_table

__all__ = ["Run", "find_runs", "is_run", "is_run_dir", "load_run", "read_table"]
