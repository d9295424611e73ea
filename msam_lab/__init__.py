"""msam_lab: study modality imbalance with M-SAM and its baselines.

    import msam_lab
    run = msam_lab.train({"method": "msam", "epochs": 5}, out="runs/try")
    run.epochs[["epoch", "test_acc", "test_acc_image", "test_acc_audio", "tau"]]

The public names below load on first use (PEP 562), so ``msam-lab --help`` and ``msam-lab status`` start
without importing torch. ARCHITECTURE.md draws where each one lives.
"""

import importlib

from msam_lab import _compat

__version__ = "0.1.0"

_PUBLIC = {
    "Config": "msam_lab.config",
    "ConfigError": "msam_lab.errors",
    "MSAM": "msam_lab.optim.msam",
    "Run": "msam_lab.runs.reader",
    "RunLogger": "msam_lab.runs.logger",
    "ShapleyRecord": "msam_lab.optim.msam",
    "build_model": "msam_lab.models.multimodal",
    "epoch_row": "msam_lab.analysis.metrics",
    "evaluate_forward": "msam_lab.analysis.forward_eval",
    "load_dataset": "msam_lab.datasets",
    "load_plugins": "msam_lab.plugins",
    "load_run": "msam_lab.runs.reader",
    "observe": "msam_lab.optim.msam",
    "register_dataset": "msam_lab.plugins",
    "register_encoder": "msam_lab.plugins",
    "register_method": "msam_lab.plugins",
    "train": "msam_lab.training.loop",
}
__all__ = sorted(_PUBLIC)

_compat.install()


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'msam_lab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
