"""The base optimizer a config asks for, and gradient clipping before an update.

Every method (and SAM / M-SAM, which wrap it) gets its optimizer from ``base_optimizer(config)``,
so ``optimizer: adamw`` changes all of them at once. Clipping has two rules:

- ``norm``: clip the global gradient norm to ``grad_clip`` before every update;
- ``agm``: AGM's released code (run/*_main.py) clips the global norm to T only on steps where
  some gradient entry of the output layer leaves [−T, T] (T = 1, UR-Funny 5), and does this
  only for AGM or early fusion; which runs get it is the config's choice here.
"""

from __future__ import annotations

import torch
from torch import nn

from msam_lab.config import OPTIMIZERS
from msam_lab.models.multimodal import last_linear


def base_optimizer(config, lr: float | None = None) -> tuple[type[torch.optim.Optimizer], dict]:
    """``(class, keyword arguments)`` of the configured optimizer; ``lr`` overrides the config's."""
    lr = config.lr if lr is None else lr
    if config.optimizer == "sgd":
        return torch.optim.SGD, {"lr": lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
    if config.optimizer == "adamw":  # momentum is SGD's; AdamW keeps its default betas (AGM's code too)
        return torch.optim.AdamW, {"lr": lr, "weight_decay": config.weight_decay}
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}")


def make_optimizer(params, config, lr: float | None = None) -> torch.optim.Optimizer:
    cls, kwargs = base_optimizer(config, lr)
    return cls(params, **kwargs)


def output_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights of the layers that produce the class logits: the fusion's last Linear, or the
    last Linear of each per-modality head of a summed-heads fusion."""
    fusion = getattr(model, "fusion", model)
    parts = list(fusion.heads) if hasattr(fusion, "heads") else [fusion]
    return [layer.weight for layer in map(last_linear, parts) if layer is not None]


@torch.no_grad()
def clip_gradients(params, max_norm: float, rule: str = "norm", watched=()) -> bool:
    """Clip the global gradient norm of ``params`` to ``max_norm`` as ``rule`` says; True if it ran.

    ``watched``: the tensors whose gradient entries trigger the ``agm`` rule (the output layer).
    """
    if max_norm <= 0:
        return False
    params = [p for p in params if p.grad is not None]
    if rule == "agm":
        grads = [w.grad for w in watched if w.grad is not None]
        if not grads or float(torch.stack([g.abs().max() for g in grads]).max()) <= max_norm:
            return False
    elif rule != "norm":
        raise ValueError(f"grad_clip_rule must be norm or agm, got {rule!r}")
    nn.utils.clip_grad_norm_(params, max_norm)
    return True
