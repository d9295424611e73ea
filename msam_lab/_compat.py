"""Old module paths (before the layered layout) keep importing for one release, with one warning each.

``import msam_lab.trainer`` still works: a finder on ``sys.meta_path`` answers for the old name with the
module that now holds the code, so both names are the same module object (monkeypatching either works).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "atomic": "runs.atomic",
    "checkpoint_io": "runs.checkpoint_io",
    "coalitions": "models.coalitions",
    "compare": "runs.compare",
    "data_parallel": "training.ranks",
    "encoders": "models.paper_encoders",
    "entry_points": "registry",
    "forward_eval": "analysis.forward_eval",
    "hessian": "analysis.hessian",
    "interrupts": "training.guards",
    "launch": "experiments.launch",
    "metrics": "analysis.metrics",
    "msam_optimizer": "optim.msam",
    "nonfinite": "training.guards",
    "precision": "optim.precision",
    "progress": "training.progress",
    "resume": "training.resume",
    "rivals": "experiments.rivals",
    "run_lock": "runs.lock",
    "run_logger": "runs.logger",
    "run_writer": "runs.writer",
    "sam": "optim.sam",
    "schedules": "optim.schedules",
    "selection": "runs.selection",
    "sharpness_timeline": "analysis.sharpness_timeline",
    "speed": "training.speed",
    "status": "runs.status",
    "sweep": "experiments.sweep",
    "trainer": "training.loop",
    "landscape.cli": "cli.landscape",
    "landscape.runs": "landscape.for_run",
}
MOVED = {f"msam_lab.{old}": f"msam_lab.{new}" for old, new in MOVED.items()}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass  # the module under its new name is already executed


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new}; the old path goes away in the next release", DeprecationWarning, stacklevel=3
        )
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
