"""Optimizers: SAM (sam.py), M-SAM (msam.py), the base optimizer and gradient clipping (base.py), learning
rate schedules (schedules.py) and mixed precision (precision.py)."""

from msam_lab.optim.base import clip_gradients, make_optimizer
from msam_lab.optim.msam import MSAM, ShapleyRecord, observe
from msam_lab.optim.sam import SAM

__all__ = ["MSAM", "SAM", "ShapleyRecord", "clip_gradients", "make_optimizer", "observe"]
