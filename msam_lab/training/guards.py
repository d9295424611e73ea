"""What guards a training step: a non-finite loss or gradient (``nan_policy``), and SIGTERM.

SIGTERM (a scheduler pre-empting a job, ``kill PID``) is handled like Ctrl-C while a run trains
(``sigterm_as_keyboard_interrupt``), so the run is marked ``interrupted`` and kept instead of dying
mid-write.

Checked after each update, where one fused check sees everything: a non-finite gradient that was
applied leaves a non-finite parameter behind, so loss, gradients and parameters together catch it.

- ``stop``: raise ``NonFiniteError`` naming what was non-finite; the trainer marks the run failed.
- ``skip``: put the model and the method's whole state (optimizer, histories) back as they were
  before the batch and mark the step row ``skipped = 1``. This costs one copy of that state per
  step, which is why it is not the default. A run that skips most of its batches learns nothing
  while looking healthy, so from the ``MIN_BATCHES``-th batch on the guard warns once
  (``SkippedBatchesWarning``, one line) when the skipped share of the batches it has seen exceeds a
  quarter of ``max_skipped_fraction``, and stops (``TooManySkippedError``) when it exceeds
  ``max_skipped_fraction`` itself. The share counts the batches of this training process: a resumed
  run starts counting again unless ``start_from`` is given the run's counts.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import signal
import threading
import time
import warnings

import torch

MIN_BATCHES = 10  # batches seen before the skip limits apply: one early bad batch is no trend
WARN_SHARE = 0.25  # warn above this share of max_skipped_fraction
DEFAULT_MAX_SKIPPED = 0.5


class NonFiniteError(RuntimeError):
    """A non-finite loss, gradient or parameter; ``what`` names it."""

    fix = "lower lr, or nan_policy=skip to skip such batches"  # what the user can do about it

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what
        self.steps_ago = 0  # a deferred check (StepGuard.check): how many steps ago it happened

    def headline(self) -> str:
        return f"non-finite {self.what}"


def checked_tensors(model: torch.nn.Module, grads: bool = True) -> list[torch.Tensor]:
    """The tensors the guard checks: every parameter, and its gradient where it has one (unless ``grads=False``)."""
    params = [p.detach() for p in model.parameters()]
    return params + [p.grad.detach() for p in model.parameters() if grads and p.grad is not None]


def first_non_finite(loss: float, model: torch.nn.Module, grads: bool = True) -> str | None:
    """``None`` when loss, gradients (unless ``grads=False``) and parameters are all finite, else what is not."""
    if not math.isfinite(loss):
        return f"loss ({loss})"
    tensors = checked_tensors(model, grads)
    if not tensors or bool(all_finite(tensors)):
        return None  # the common case: one check, one sync
    for name, p in model.named_parameters():  # the rare case: name the culprit
        if grads and p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return f"gradient of {name}"
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return f"parameter {name}"
    return "a tensor"


def finite_flag(loss, model: torch.nn.Module, grads: bool = True) -> torch.Tensor:
    """``first_non_finite(...) is None`` as a 0-d bool tensor on the device: no host sync."""
    tensors = checked_tensors(model, grads)
    device = tensors[0].device if tensors else "cpu"
    return all_finite([torch.as_tensor(loss, device=device)] + tensors)


def all_finite(tensors) -> torch.Tensor:
    """Whether every element of ``tensors`` is finite, as a 0-d bool tensor (no host sync).

    A tensor's min and max are finite exactly when all its elements are (NaN propagates through
    both): one fused reduction per tensor and no elementwise bool copy, about 8x cheaper than
    ``isfinite(t).all()`` on a ResNet-18's parameters and gradients on CPU."""
    extremes = [x for t in tensors if t.numel() for x in torch.aminmax(t)]
    if not extremes:
        return torch.ones((), dtype=torch.bool)
    return torch.stack(extremes).isfinite().all()


class TooManySkippedError(NonFiniteError):
    """``nan_policy=skip`` skipped more than ``max_skipped_fraction`` of the batches seen."""

    fix = "lower lr, or raise max_skipped_fraction"

    def __init__(self, what: str, skipped: int, seen: int, limit: float):
        super().__init__(what)
        self.skipped, self.seen, self.limit = skipped, seen, limit

    def headline(self) -> str:
        return (
            f"nan_policy=skip skipped {self.skipped} of {self.seen} batches ({self.skipped / self.seen:.0%}), "
            f"more than max_skipped_fraction={self.limit:g} (the last: non-finite {self.what})"
        )


class SkippedBatchesWarning(RuntimeWarning):
    """``nan_policy=skip`` has skipped more than a quarter of ``max_skipped_fraction`` of the batches."""


class StepGuard:
    """``StepGuard(policy, model, method).step(inputs, labels)`` -> the step row, with ``skipped``.

    ``max_skipped_fraction``: the skip policy's limit (module docstring); None takes the method's
    config's (``method.config``, the run's Config), else ``DEFAULT_MAX_SKIPPED``.
    """

    def __init__(self, policy: str, model, method, max_skipped_fraction: float | None = None, check_every: float = 0.0):
        if policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be stop or skip, got {policy!r}")
        self.policy, self.model, self.method = policy, model, method
        if max_skipped_fraction is None:
            max_skipped_fraction = getattr(getattr(method, "config", None), "max_skipped_fraction", DEFAULT_MAX_SKIPPED)
        self.max_skipped_fraction = float(max_skipped_fraction)
        self.seen = self.skipped = 0
        self.last_skipped: str | None = None  # what was non-finite in the last skipped batch
        self.warned = False
        # stop: the finite checks are device flags read every check_every seconds (one sync then, as the
        # writer's flush), not per step; check() reads them; 0: every step. skip must know at once.
        self.check_every = float(check_every) if policy == "stop" else 0.0
        self._pending: list = []  # (loss, all-finite flag) of the steps not yet read
        self._last_check = time.monotonic()
        # a plug-in method may override train_step(inputs, labels) without `host`: it returns host values
        self._device_rows = "host" in inspect.signature(method.train_step).parameters

    def start_from(self, seen: int, skipped: int) -> None:
        """Count on from a resumed run's ``seen`` steps, ``skipped`` of them skipped."""
        self.seen, self.skipped = int(seen), int(skipped)

    def step(self, inputs, labels) -> dict:
        before = self._snapshot() if self.policy == "skip" else None
        # device values where the method can keep them: read at the writer's flush
        row = (
            self.method.train_step(inputs, labels, host=False)
            if self._device_rows
            else self.method.train_step(inputs, labels)
        )
        if self.check_every > 0:
            self._pending.append((row["loss"], finite_flag(row["loss"], self.model, grads=not row.get("overflow", 0))))
            self.seen += 1
            if time.monotonic() - self._last_check >= self.check_every:
                self.check()
            return {**row, "skipped": 0}
        # fp16: inf gradients on an overflow are the GradScaler's business (it skipped the update and
        # lowered the scale); loss and parameters are still checked
        what = first_non_finite(row["loss"], self.model, grads=not row.get("overflow", 0))
        self.seen += 1
        if what is None:
            self._check_share()
            return {**row, "skipped": 0}
        if self.policy == "stop":
            raise NonFiniteError(what)
        self.model.load_state_dict(before["model"])
        self.method.load_state_dict(before["method"])
        self.model.zero_grad(set_to_none=True)
        self.skipped, self.last_skipped = self.skipped + 1, what
        self._check_share()
        return {**row, "skipped": 1}

    def check(self) -> None:
        """Read the pending finite flags (one sync); raise ``NonFiniteError`` for the first bad step, its
        ``steps_ago`` saying how many steps before the last one it was."""
        pending, self._pending, self._last_check = self._pending, [], time.monotonic()
        if not pending:
            return
        ok = torch.stack([flag for _, flag in pending]).tolist()
        if all(ok):
            return
        first = ok.index(False)
        loss = float(pending[first][0])
        err = NonFiniteError(first_non_finite(loss, self.model) or "value")
        err.steps_ago = len(ok) - 1 - first
        raise err

    def _check_share(self) -> None:
        if self.policy != "skip" or self.seen < MIN_BATCHES or not self.skipped:
            return
        share = self.skipped / self.seen
        if share > self.max_skipped_fraction:
            raise TooManySkippedError(self.last_skipped or "value", self.skipped, self.seen, self.max_skipped_fraction)
        if share > WARN_SHARE * self.max_skipped_fraction and not self.warned:
            self.warned = True
            # warn_explicit at line 0: Python prints no source line under it, so this is one line
            warnings.warn_explicit(
                f"nan_policy=skip has skipped {self.skipped} of {self.seen} batches ({share:.0%}); the run "
                f"fails above max_skipped_fraction={self.max_skipped_fraction:g} (lower lr?)",
                SkippedBatchesWarning,
                "msam-lab",
                0,
            )

    def _snapshot(self) -> dict:
        return copy.deepcopy({"model": self.model.state_dict(), "method": self.method.state_dict()})


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
