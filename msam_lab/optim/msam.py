"""M-SAM as an optimizer for any model and any training loop, in the shape of ``davda54/sam``.

    opt = msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=("image", "audio"), model=model,
                        rho=0.05, lr=0.05, momentum=0.9)      # other keyword arguments go to the base optimizer
    rec = opt.step(forward, labels)     # forward(present: frozenset[str]) -> logits
    rec.loss, rec.dominant, rec.shares, rec.shapley

``forward(present)`` computes logits with only the modalities in ``present``; how the others are
removed (zeros, mask tokens, dropped tokens) is the caller's choice. ``step`` does all of M-SAM's work
(DESIGN §2): the clean forward, the 2^M coalition passes with no grad and ``model`` in eval mode
(its mode restored after), the Shapley values of coalition accuracy, shares and the dominant modality d; then
g = v_d·∇ℓ(θ+ε) + (1−v_d)·∇ℓ(θ) with ε = ρ·∇ℓ/‖∇ℓ‖, and the base optimizer's step.

Variants (DESIGN §2): ``default`` as above; ``params`` perturbs only the dominant modality's
parameters (``modality_parameters={name: [params]}``, found by itself on a msam_lab model);
``unimodal`` splits the loss over each modality's Shapley-decomposed logits, computed here from
``forward`` over every non-empty coalition with grad (2^M − 1 forwards per pass instead of one).
``dominant="fixed:<m>" | "random" | "alternate"`` (not with ``default``) perturbs another modality in d's
place, its share swapped with d's, as the built-in ``msam_dominant`` does (msam_lab/methods/msam.py);
``rec.perturbed`` names it, ``rec.dominant`` stays the Shapley-dominant one.

``precision="bf16" | "fp16"`` runs every forward under autocast (fp16 with a GradScaler: an overflowing
step is skipped and ``rec.overflow`` is True); a caller's own ``torch.autocast`` around ``step`` works
too for bf16, because SAM clears autocast's weight cache at θ+ε.

On msam_lab's own ``MultimodalModel`` with ``forward = lambda present: model(inputs, present)`` it
takes the built-in trainer's M-SAM steps (tests/test_msam_optimizer.py, float64).

In a DDP loop pass the wrapper as ``model`` (``model=DistributedDataParallel(net)``, ``forward`` calling
the wrapper) and call ``step`` on every rank: the first pass, forward included, runs under
``model.no_sync()`` (ε follows each rank's shard, as in SAM under DDP), the coalition accuracies are
all-reduced before the Shapley values (every rank picks the same dominant modality and shares), and
the plain part (1−v_d)·∇ℓ(θ) is put into ``p.grad`` before the perturbed backward, so that DDP's one
all-reduce of that backward averages the whole update gradient (tests/test_distributed.py).
Not supported: ``shapley_batch`` (pass a smaller batch to ``forward`` yourself), and gradient clipping
inside ``step`` (clip in ``base_optimizer`` or a hook if you need it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from msam_lab import distributed, shapley
from msam_lab.models.coalitions import CoalitionStats, decomposed_logits, modality_shapley, present_of
from msam_lab.models.multimodal import running_stats_kept
from msam_lab.optim.precision import Precision
from msam_lab.optim.sam import SAM, add_to_grads

VARIANTS = ("default", "unimodal", "params")


@dataclass
class ShapleyRecord:
    """One batch's Shapley observation: values, shares and the dominant modality (by name)."""
    loss: float                   # the fused loss at θ (nan for ``observe``, which takes no loss pass)
    dominant: str
    shares: dict[str, float]
    shapley: dict[str, float]
    overflow: bool = False        # fp16: the GradScaler met inf/NaN gradients and skipped this update
    perturbed: str | None = None  # the modality that got ε (``step`` only; the dominant one unless dominant= says)


def observe(forward, labels: torch.Tensor, modalities, model=None, loss_fn=F.cross_entropy,
            share_rule: str = "clip", tie_rule: str = "lowest", shapley_value: str = "accuracy",
            exact_max: int = shapley.EXACT_MAX, n_permutations: int = 64, seed: int = 0,
            previous: int | None = None, share_temperature: float = 1.0, coalitions=None) -> ShapleyRecord:
    """The Shapley record of one batch from ``forward(present)`` alone (no update, no grad).

    ``model``: put in eval mode for the coalition passes and restored after (None: left as it is).
    ``previous``: the last dominant index, for ``tie_rule="previous"``.
    ``coalitions``: optional ``coalitions(presents) -> logits (K, B, C)``, every coalition of the list
    in one call (called in eval mode, no grad): a model that encodes each modality once and fuses K
    times makes the observation about one forward, as the built-in trainer's is (docs/api.md).
    """
    names = tuple(modalities)
    if not names:
        raise ValueError("modalities must name at least one modality, e.g. modalities=('image', 'audio')")
    was_training = model.training if model is not None else None

    @torch.no_grad()
    def stats(masks) -> CoalitionStats:
        presents = [present_of(int(mask), names) for mask in masks]
        logits = coalitions(presents) if coalitions is not None else torch.stack([forward(p) for p in presents])
        if logits.shape[:2] != (len(presents), len(labels)):
            raise ValueError(f"coalitions(presents) must return logits of shape (K, B, C) = ({len(presents)}, "
                             f"{len(labels)}, C), got {tuple(logits.shape)}")
        # one host sync for all coalitions, not two per coalition
        acc = (logits.argmax(-1) == labels).float().mean(1)
        loss = torch.stack([loss_fn(z, labels) for z in logits])
        both = torch.stack([acc.double(), loss.double()]).cpu().numpy()      # exact: no value is rounded
        both = distributed.mean_over_ranks(both, len(labels))    # data parallel: the global batch's
        return CoalitionStats(both[0], both[1])

    try:
        if model is not None:
            model.eval()
        phi = modality_shapley(stats, len(names), shapley_value, exact_max, n_permutations, seed)
        alone = stats(shapley.singleton_masks(len(names))).loss if share_rule == "loss" else None
    finally:
        if model is not None:
            model.train(was_training)
    share = shapley.shares(phi, share_rule, share_temperature, alone)
    d = shapley.dominant(share, tie_rule, previous)
    return ShapleyRecord(float("nan"), names[d], dict(zip(names, map(float, share))),
                         dict(zip(names, map(float, phi))))


class MSAM(SAM):
    """SAM applied to the dominant modality's share of the loss (see the module docstring)."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, modalities=(), model=None, rho: float = 0.05,
                 adaptive: bool = False, variant: str = "default", share_rule: str = "clip",
                 tie_rule: str = "lowest", shapley_value: str = "accuracy", exact_max: int = shapley.EXACT_MAX,
                 n_permutations: int = 64, seed: int = 0, bn_policy: str = "restore",
                 modality_parameters: dict | None = None, precision: str = "fp32", share_temperature: float = 1.0,
                 dominant: str = "shapley", **kwargs):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if share_rule not in shapley.SHARE_RULES or tie_rule not in shapley.TIE_RULES:
            raise ValueError(f"share_rule must be one of {', '.join(shapley.SHARE_RULES)} and tie_rule one of "
                             f"{', '.join(shapley.TIE_RULES)}; got {share_rule!r}, {tie_rule!r}")
        if not share_temperature > 0:
            raise ValueError(f"share_temperature must be > 0, got {share_temperature}")
        if bn_policy not in ("restore", "update"):
            raise ValueError(f"bn_policy must be restore or update, got {bn_policy!r}")
        super().__init__(params, base_optimizer, rho=rho, adaptive=adaptive, **kwargs)
        self.modalities = tuple(modalities)
        if not self.modalities:
            raise ValueError("MSAM needs modalities=(...): the names forward(present) understands")
        self.perturbed = shapley.PerturbedModality(dominant, self.modalities, seed)
        if dominant != "shapley" and variant == "default":
            raise ValueError(f"dominant={dominant!r} changes nothing with variant='default' (its ε names no "
                             "modality); use variant='params' or 'unimodal'")
        self.model = model
        if variant == "params":
            inner = getattr(model, "module", model)           # a DDP wrapper's model
            if modality_parameters is None and inner is not None and hasattr(inner, "encoder_parameters"):
                modality_parameters = {m: inner.encoder_parameters(m) for m in self.modalities}
            if modality_parameters is None:
                raise ValueError("variant='params' needs modality_parameters={modality: [parameters]} "
                                 "(or a msam_lab MultimodalModel as model)")
        self.modality_parameters = modality_parameters
        self.options = dict(variant=variant, share_rule=share_rule, tie_rule=tie_rule,
                            shapley_value=shapley_value, exact_max=exact_max, n_permutations=n_permutations,
                            seed=seed, bn_policy=bn_policy, share_temperature=share_temperature)
        self.previous_dominant: int | None = None
        device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
        self.precision = Precision(precision, device)

    def observe(self, forward, labels, loss_fn=F.cross_entropy, coalitions=None) -> ShapleyRecord:
        o = self.options
        rec = observe(forward, labels, self.modalities, self.model, loss_fn, o["share_rule"], o["tie_rule"],
                      o["shapley_value"], o["exact_max"], o["n_permutations"], o["seed"], self.previous_dominant,
                      o["share_temperature"], coalitions)
        self.previous_dominant = self.modalities.index(rec.dominant)
        return rec

    def step(self, forward, labels, loss_fn=F.cross_entropy, coalitions=None) -> ShapleyRecord:
        """One M-SAM update; returns the batch's record (``loss`` is the fused loss at θ).
        ``coalitions``: see ``observe`` (the observation's coalition passes in one call)."""
        with self.precision.autocast():
            rec, loss = self._step(forward, labels, loss_fn, coalitions)
        rec.overflow = self.precision.end_step()
        rec.loss = float(loss.detach())
        return rec

    def _step(self, forward, labels, loss_fn, coalitions):
        params = [p for g in self.param_groups for p in g["params"]]
        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        self.zero_grad(set_to_none=True)
        with self.model.no_sync() if ddp else contextlib.nullcontext():     # the first pass stays on this rank
            rec, loss, grads_s, perturbed_loss = self._first_pass(forward, labels, loss_fn, coalitions, params)
        only = self.modality_parameters[rec.perturbed] if self.options["variant"] == "params" else None
        self.first_step(zero_grad=True, only=only)
        if ddp:
            add_to_grads(params, grads_s)   # before the synchronised backward: DDP averages the sum
        keep = self.options["bn_policy"] == "restore"     # BN statistics move once per step, as in SAM
        with running_stats_kept(self.model, keep) if self.model is not None else contextlib.nullcontext():
            self.precision.scale(perturbed_loss()).backward()
        self.restore()
        if not ddp:
            add_to_grads(params, grads_s)
        self.precision.unscale(self.base_optimizer)
        self.precision.step(self.base_optimizer)
        return rec, loss

    def _first_pass(self, forward, labels, loss_fn, coalitions, params):
        """The clean pass and the observation: (record, fused loss, the plain part's grads, L_d's closure);
        ∇L_d(θ) is left in ``p.grad`` for ε."""
        scale = self.precision.scale
        if self.options["variant"] == "unimodal":
            # the graph of every coalition first (train mode), then the eval-mode observation
            l_d, l_s, loss, rec, share = self._unimodal_losses(forward, labels, loss_fn, None, coalitions)
            grads_s = (torch.autograd.grad(scale(l_s), params, retain_graph=True, allow_unused=True)
                       if torch.is_tensor(l_s) else [None] * len(params))
            scale(l_d).backward()

            def perturbed_loss():
                return self._unimodal_losses(forward, labels, loss_fn, (rec, share), coalitions)[0]
        else:
            # the clean forward first, then the coalitions: as in the built-in trainer, the eval-mode passes
            # see the BatchNorm statistics this batch's train-mode forward has just updated
            loss = loss_fn(forward(frozenset(self.modalities)), labels)
            rec = self.observe(forward, labels, loss_fn, coalitions)
            v_d = self._choose(rec)[rec.perturbed]
            scale(loss).backward()
            # ∇L_d(θ) = v_d·∇ℓ: v_d cancels in ε, so p.grad = ∇ℓ already points the right way
            grads_s = [None if p.grad is None else (1.0 - v_d) * p.grad for p in params]

            def perturbed_loss():
                return v_d * loss_fn(forward(frozenset(self.modalities)), labels)
        return rec, loss, grads_s, perturbed_loss

    def _unimodal_losses(self, forward, labels, loss_fn, split, coalitions=None):
        """(L_d, L_s, fused loss, record, shares): L_m = v_m·loss(out_m), out_m modality m's Shapley-decomposed
        logits over every coalition (the empty one counts as zero logits, so it is never run), d the perturbed
        modality. ``split`` None: observe the batch after the coalition graph is built, as the built-in trainer
        does, and choose d; else the (record, shares) of that first call."""
        names, n = self.modalities, len(self.modalities)
        coalition = [None] + [forward(present_of(mask, names)) for mask in range(1, 1 << n)]
        coalition[0] = torch.zeros_like(coalition[-1])
        per_modality = decomposed_logits(torch.stack(coalition))
        if split is None:
            rec = self.observe(forward, labels, loss_fn, coalitions)
            split = rec, self._choose(rec)
        rec, share = split
        d = rec.perturbed
        losses = {m: loss_fn(per_modality[i], labels) for i, m in enumerate(names)}
        l_s = sum(share[m] * losses[m] for m in names if m != d)
        with torch.no_grad():
            loss = loss_fn(coalition[-1], labels)
        return share[d] * losses[d], l_s, loss, rec, share

    def _choose(self, rec: ShapleyRecord) -> dict[str, float]:
        """Set ``rec.perturbed``; return the shares with its and the dominant one's swapped (the split's)."""
        names = self.modalities
        d = names.index(rec.dominant)
        c = self.perturbed(d)
        rec.perturbed = names[c]
        swapped = shapley.swap_shares([rec.shares[m] for m in names], d, c)
        return dict(zip(names, map(float, swapped)))

    def state_dict(self):
        return {**super().state_dict(), "previous_dominant": self.previous_dominant,
                "precision": self.precision.state_dict(), "perturbed": self.perturbed.state_dict()}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.previous_dominant = state_dict.pop("previous_dominant", None)
        self.precision.load_state_dict(state_dict.pop("precision", {}))
        if "perturbed" in state_dict:
            self.perturbed.load_state_dict(state_dict.pop("perturbed"))
        super().load_state_dict(state_dict)
