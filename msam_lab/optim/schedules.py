"""Learning rate per epoch: linear warm-up, then none | step | cosine.

A pure function of the epoch, not a scheduler object: a resumed run sets the same lr from the
epoch it resumes at, and methods that create optimizers mid-run (ReconBoost's phases) or own
several (CGGM's auxiliary heads) scale them all alike. The closed forms equal torch's LinearLR,
StepLR and CosineAnnealingLR (tests/optim/test_optim.py checks them against torch).
"""

from __future__ import annotations

import math


def lr_factor(epoch: int, config) -> float:
    """lr of 0-based ``epoch`` divided by the configured ``lr``."""
    w, total = config.warmup_epochs, config.epochs
    if epoch < w:  # LinearLR(start_factor=1/(w+1), total_iters=w)
        return (epoch + 1) / (w + 1)
    t, span = epoch - w, max(total - w, 1)
    if config.lr_schedule == "none":
        return 1.0
    if config.lr_schedule == "step":  # StepLR(step_size=lr_step, gamma=lr_gamma)
        return config.lr_gamma ** (t // config.lr_step)
    if config.lr_schedule == "cosine":  # CosineAnnealingLR(T_max=epochs − warmup, eta_min)
        floor = config.lr_min / config.lr if config.lr > 0 else 0.0
        return floor + (1.0 - floor) * (1 + math.cos(math.pi * t / span)) / 2
    raise ValueError(f"lr_schedule must be none, step or cosine, got {config.lr_schedule!r}")


def set_lr_factor(optimizer, factor: float) -> None:
    """Scale every param group's lr to ``factor`` times the lr it was created with."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # the key torch's schedulers use for the same thing
        group["lr"] = group["initial_lr"] * factor
