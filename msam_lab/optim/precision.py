"""Mixed precision for a training step: autocast, and a GradScaler where fp16 needs one.

``Precision(mode, device)`` is what a method talks to:

- ``autocast()`` wraps the step's forward passes (bf16/fp16; fp32 is a no-op);
- ``scale(loss)`` before every backward: fp16 multiplies by the GradScaler's scale, so small
  gradients do not flush to zero; the others return ``loss`` itself;
- ``unscale(optimizer)`` once per optimizer before anything reads gradient magnitudes
  (clipping, CGGM's direction term); ``step(optimizer)`` steps it (skipped by the scaler on
  an overflow); ``end_step()`` updates the scale after all of a step's optimizers stepped.

SAM's perturbation divides by the gradient norm, so the scale cancels in ε; its norms and ε are
computed outside autocast, in the parameters' fp32 (msam_lab/sam.py). Parameters, gradients and
optimizer states stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib
import typing

import torch

from msam_lab import config

PRECISIONS = typing.get_args(config.Precision)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, mode: str = "fp32", device="cpu"):
        if mode not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {mode!r}")
        self.mode = mode
        self.device_type = torch.device(device).type
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None
        self._unscaled: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.mode != "fp32"

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.mode])

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizer) -> None:
        """Divide ``optimizer``'s gradients by the scale (once per step; later calls do nothing)."""
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def step(self, optimizer) -> None:
        with torch.autocast(self.device_type, enabled=False):  # the update itself runs in fp32
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)

    def end_step(self) -> bool:
        """Close the step; True when fp16 met inf/NaN gradients and the scaler skipped the update
        (it then lowers the scale, which is how the overflow shows)."""
        self._unscaled.clear()
        if self.scaler is None:
            return False
        before = self.scaler.get_scale()
        self.scaler.update()
        return self.scaler.get_scale() < before

    def state_dict(self) -> dict:
        return {} if self.scaler is None else {"scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
