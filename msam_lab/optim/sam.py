"""Sharpness-aware minimisation as an optimizer wrapper.

The shape of ``davda54/sam``: ``first_step`` climbs to θ+ε using the current
gradients, ``second_step`` restores θ exactly and lets the base optimizer step
with the gradients computed at θ+ε. ``restore`` is exposed on its own so that
M-SAM can mix gradients between the two.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def add_to_grads(params, grads) -> None:
    """``p.grad += g`` for each pair (``g`` None: nothing to add; ``p.grad`` None: it becomes ``g``):
    how M-SAM puts the plain part ∇L_s(θ) back after the perturbed backward."""
    adds = []
    for p, g in zip(params, grads):
        if g is None:
            continue
        if p.grad is None:
            p.grad = g.clone()
        else:
            adds.append((p.grad, g))
    if adds:  # one fused add (per-tensor adds cost a dispatch each on a small model)
        torch._foreach_add_([a for a, _ in adds], [g for _, g in adds])


def _no_autocast(param_groups):
    """Autocast off for the parameters' device: SAM's norm and ε are computed in fp32."""
    device = next((p.device for g in param_groups for p in g["params"]), torch.device("cpu"))
    return torch.autocast(device.type, enabled=False)


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer=torch.optim.SGD, rho: float = 0.05, adaptive: bool = False, **kwargs):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        # The base optimizer shares our param groups, so lr/momentum live in one place.
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _scaled(self, p, group):
        return torch.abs(p) * p.grad if group["adaptive"] else p.grad

    @torch.no_grad()
    def grad_norm(self, only=None) -> torch.Tensor:
        """Global L2 norm of the (adaptively scaled) gradients of all, or ``only``, parameters."""
        # .float(): ε and its norm stay fp32 even if a caller keeps low-precision gradients
        norms = [
            self._scaled(p, g).float().norm(p=2)
            for g in self.param_groups
            for p in g["params"]
            if p.grad is not None and (only is None or p in only)
        ]
        if not norms:
            return torch.zeros(())
        return torch.norm(torch.stack(norms), p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, only=None):
        """θ <- θ + ε, ε = ρ·g/‖g‖ (ASAM: ρ·θ²·g/‖|θ|·g‖). ``only``: perturb just these params."""
        only = None if only is None else set(only)
        with _no_autocast(self.param_groups):
            self._perturb(self.grad_norm(only), only)
        # autocast caches its low-precision copy of each weight for the whole autocast region: without
        # this, the perturbed forward would reuse the copies of θ and SAM would silently become SGD
        torch.clear_autocast_cache()
        if zero_grad:
            self.zero_grad()

    def _perturb(self, norm, only):
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                if only is not None and p not in only:
                    continue
                e_w = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)

    @torch.no_grad()
    def restore(self):
        """θ+ε -> θ, copied back bit for bit."""
        for group in self.param_groups:
            for p in group["params"]:
                if "old_p" in self.state[p]:
                    p.data.copy_(self.state[p].pop("old_p"))
        torch.clear_autocast_cache()  # as in first_step: no forward may see cached copies of θ+ε

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False):
        self.restore()
        self.base_optimizer.step()
        self._opt_called = True  # what torch's LR schedulers read: a scheduler on this optimizer sees the step
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        raise RuntimeError("SAM needs two passes: call first_step() and second_step()")

    def state_dict(self):
        """The base optimizer's state (momentum, Adam moments) with the shared param groups (ρ too):
        SAM's own ``state`` holds only the transient ``old_p`` of a step in progress."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
