"""Leave no trace: the one context manager every landscape and sharpness call runs inside.

``preserved(model)`` records, on entry, for every module of ``model``:
the Parameter and buffer *objects* and a bitwise copy of their values (and
memory layout), each parameter's ``requires_grad`` flag and ``.grad``, and
each module's own ``training`` flag (per module, not just the root's, so a
submodule frozen in eval mode stays in eval mode). On exit, normal or by an
exception, all of it is put back: the same objects re-seated, their values
copied back bit for bit, flags and modes reset.

Inside the block the caller may do anything to the values: write perturbed
weights, switch to eval mode, toggle ``requires_grad``, convert to
channels-last. It may not change shapes or dtypes of the model's tensors
(those are put back too, by re-seating the saved copy).
"""

from __future__ import annotations

import torch
from torch import nn


def _clone(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone(memory_format=torch.preserve_format)


def _restore_values(live: torch.Tensor, saved: torch.Tensor) -> None:
    """Put ``saved``'s values (and layout) back into ``live`` without replacing the object."""
    same_layout = (
        live.shape == saved.shape
        and live.dtype == saved.dtype
        and live.device == saved.device
        and live.stride() == saved.stride()
    )
    if same_layout:
        live.data.copy_(saved)
    else:  # e.g. converted to channels-last inside the block
        live.data = saved


class preserved:
    """Context manager: on exit ``model`` is bitwise what it was on entry (see module doc)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self._params, self._buffers, self._modes = [], [], []
        for module in self.model.modules():
            self._modes.append((module, module.training))
            for name, p in module._parameters.items():
                if p is None:
                    self._params.append((module, name, None, None, None, None, None))
                    continue
                grad = p.grad
                self._params.append(
                    (module, name, p, _clone(p), p.requires_grad, grad, None if grad is None else _clone(grad))
                )
            for name, b in module._buffers.items():
                self._buffers.append((module, name, b, None if b is None else _clone(b)))
        return self.model

    def __exit__(self, *exc) -> bool:
        with torch.no_grad():
            for module, name, p, value, requires_grad, grad, grad_value in self._params:
                module._parameters[name] = p
                if p is None:
                    continue
                _restore_values(p, value)
                p.requires_grad_(requires_grad)
                if grad is not None:
                    _restore_values(grad, grad_value)
                p.grad = grad
            for module, name, b, value in self._buffers:
                module._buffers[name] = b
                if b is not None:
                    _restore_values(b, value)
        for module, training in self._modes:
            module.training = training
        self._params = self._buffers = self._modes = None
        return False
