"""M-SAM, the optimizer: SAM applied to the dominant modality's share of the loss (DESIGN §2).

The shape of ``davda54/sam``. Per batch: the Shapley values of coalition accuracy give shares v and the dominant
modality d; the loss splits into L_d (d's share) and L_s (the rest); ``first_step`` climbs to θ+ε with
ε = ρ·∇L_d/‖∇L_d‖ and keeps the plain part ∇L_s(θ); ``second_step`` restores θ bit for bit, adds ∇L_s(θ) to
the gradient ∇L_d(θ+ε) taken there, and lets the base optimizer step. Three ways to drive it:

    opt = msam_lab.MSAM(model.parameters(), torch.optim.SGD, modalities=("image", "audio"), model=model,
                        rho=0.05, lr=0.05, momentum=0.9)      # other keyword arguments go to the base optimizer
    rec = opt.step(forward, labels)     # the whole step from forward(present: frozenset[str]) -> logits

    rec = opt.observe(forward, labels)                          # torch's closure form: the split first,
    opt.backward(F.cross_entropy(model(x), y))                  # then ∇ at θ,
    opt.step(lambda: opt.dominant_loss(model(x), y).backward())  # then first_step, closure, second_step

    ... or ``first_step(zero_grad=True)``, a backward of ``dominant_loss`` at θ+ε, ``second_step()`` by hand.

``forward(present)`` computes logits with only the modalities in ``present``; how the others are
removed (zeros, mask tokens, dropped tokens) is the caller's choice. The observation (``observe``) runs the
2^M coalition passes with no grad and ``model`` in eval mode (its mode restored after), or one call of a
``coalitions(presents) -> (K, B, C)`` hook; msam_lab's trainer observes through that hook.

Variants, each a named loss (``dominant_loss``, ``unimodal_losses``):
- ``default``: L_d = v_d·ℓ, L_s = (1−v_d)·ℓ with ℓ the fused loss: g = v_d·∇ℓ(θ+ε) + (1−v_d)·∇ℓ(θ);
- ``params``: as default, but ε moves only the perturbed modality's parameters (``modality_parameters=
  {name: [params]}``, found by itself on a msam_lab model);
- ``unimodal``: L_m = v_m·loss(out_m), out_m modality m's Shapley-decomposed logits over every non-empty
  coalition with grad (``coalition_logits``: 2^M − 1 forwards per pass instead of one).

Ablation of the choice (``dominant="fixed:<m>" | "random" | "alternate"``, the trainer's ``msam_dominant``;
not with ``default``, whose ε names no modality): another modality c takes d's place entirely, share included
(the shares of c and d are swapped before the split), so every arm applies the same amount of SAM, v_d, and
only where ε points differs. ``rec.perturbed`` names c, ``rec.dominant`` stays the Shapley-dominant one.

``precision="bf16" | "fp16"`` runs every forward of ``step(forward, labels)`` under autocast (fp16 with a
GradScaler: an overflowing step is skipped and ``rec.overflow`` is True); a caller's own ``torch.autocast``
works too for bf16, because SAM clears autocast's weight cache at θ+ε.

In a DDP loop pass the wrapper as ``model`` (``model=DistributedDataParallel(net)``, ``forward`` calling
the wrapper) and call ``step(forward, labels)`` on every rank: the first pass, forward included, runs under
``model.no_sync()`` (ε follows each rank's shard, as in SAM under DDP), the coalition accuracies are
all-reduced before the Shapley values (every rank picks the same dominant modality and shares), and
the plain part ∇L_s(θ) is put into ``p.grad`` before the perturbed backward, so that DDP's one
all-reduce of that backward averages the whole update gradient (tests/training/test_distributed.py).
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
from msam_lab.models.coalitions import (
    CoalitionStats,
    coalition_losses,
    decomposed_logits,
    modality_shapley,
    present_of,
    presents_of,
)
from msam_lab.models.multimodal import running_stats_kept
from msam_lab.optim.precision import Precision
from msam_lab.optim.sam import SAM, add_to_grads

VARIANTS = ("default", "unimodal", "params")


@dataclass
class ShapleyRecord:
    """One batch's Shapley observation: values, shares and the dominant modality (by name)."""

    loss: float  # the fused loss at θ (nan for ``observe``, which takes no loss pass)
    dominant: str
    shares: dict[str, float]
    shapley: dict[str, float]
    overflow: bool = False  # fp16: the GradScaler met inf/NaN gradients and skipped this update
    perturbed: str | None = None  # the modality that got ε (``step`` only; the dominant one unless dominant= says)


# -- the losses of the variants ---------------------------------------------------------------------------
def coalition_logits(forward, modalities) -> torch.Tensor:
    """Logits (2^M, B, C) of every coalition from ``forward(present)``, with grad, in mask order. The empty
    coalition counts as zero logits (the decomposition's convention), so it is never run."""
    names = tuple(modalities)
    logits = [None] + [forward(present_of(mask, names)) for mask in range(1, 1 << len(names))]
    logits[0] = torch.zeros_like(logits[-1])
    return torch.stack(logits)


def unimodal_losses(coalition_logits, labels, shares, d: int, loss_fn=F.cross_entropy):
    """(L_d, L_s) of the unimodal variant: L_m = v_m·loss(out_m), out_m modality m's Shapley-decomposed logits
    (``decomposed_logits`` of every coalition's logits), L_s the sum over the modalities other than d."""
    per_modality = decomposed_logits(coalition_logits)
    losses = [loss_fn(per_modality[m], labels) for m in range(len(per_modality))]
    l_s = sum(float(shares[m]) * losses[m] for m in range(len(losses)) if m != d)
    return float(shares[d]) * losses[d], l_s


def unimodal_dominant_loss(coalition_logits, labels, v_d: float, d: int, loss_fn=F.cross_entropy) -> torch.Tensor:
    """L_d of the unimodal variant alone (the perturbed pass): v_d·loss(out_d)."""
    return v_d * loss_fn(decomposed_logits(coalition_logits)[d], labels)


def fused_dominant_loss(logits, labels, v_d, loss_fn=F.cross_entropy) -> torch.Tensor:
    """L_d of the default and params variants: v_d·ℓ, ℓ the fused loss (L_s = (1−v_d)·ℓ). ``v_d``: a float,
    or a 0-d tensor on the device (taken in ℓ's dtype, as a float would be: the same bits)."""
    loss = loss_fn(logits, labels)
    return (v_d.to(loss.dtype) if torch.is_tensor(v_d) else v_d) * loss


# -- the observation ----------------------------------------------------------------------------------
def observe(
    forward,
    labels: torch.Tensor,
    modalities,
    model=None,
    loss_fn=F.cross_entropy,
    share_rule: str = "clip",
    tie_rule: str = "lowest",
    shapley_value: str = "accuracy",
    exact_max: int = shapley.EXACT_MAX,
    n_permutations: int = 64,
    seed: int = 0,
    previous: int | None = None,
    share_temperature: float = 1.0,
    coalitions=None,
) -> ShapleyRecord:
    """The Shapley record of one batch from ``forward(present)`` alone (no update, no grad).
    Computed on the device by ``observe_tensors`` (same arguments), then read in one host sync.

    ``model``: put in eval mode for the coalition passes and restored after (None: left as it is).
    ``loss_fn``: a batch-mean loss, called per coalition; None: cross-entropy of all coalitions in one call.
    ``previous``: the last dominant index, for ``tie_rule="previous"``.
    ``coalitions``: optional ``coalitions(presents) -> logits (K, B, C)``, every coalition of the list
    in one call (called in eval mode, no grad): a model that encodes each modality once and fuses K
    times makes the observation about one forward, as the built-in trainer's is (docs/api.md).
    """
    names = tuple(modalities)
    phi, share, d = observe_tensors(
        forward, labels, names, model, loss_fn, share_rule, tie_rule, shapley_value, exact_max, n_permutations,
        seed, previous, share_temperature, coalitions,
    )  # fmt: skip
    host = torch.cat([phi, share, d.reshape(1).to(phi.dtype)]).tolist()  # the one host sync
    n = len(names)
    return ShapleyRecord(float("nan"), names[int(host[-1])], dict(zip(names, host[n:-1])), dict(zip(names, host[:n])))


def observe_tensors(
    forward,
    labels: torch.Tensor,
    modalities,
    model=None,
    loss_fn=F.cross_entropy,
    share_rule: str = "clip",
    tie_rule: str = "lowest",
    shapley_value: str = "accuracy",
    exact_max: int = shapley.EXACT_MAX,
    n_permutations: int = 64,
    seed: int = 0,
    previous=None,
    share_temperature: float = 1.0,
    coalitions=None,
):
    """``observe`` on the device: ``(phi, shares, dominant)``, float64 (M,) tensors and a 0-d int64 index,
    with no host sync (one all-reduce through the host under data parallelism). ``previous``: an int,
    a 0-d tensor or None."""
    names = tuple(modalities)
    if not names:
        raise ValueError("modalities must name at least one modality, e.g. modalities=('image', 'audio')")
    was_training = model.training if model is not None else None

    @torch.no_grad()
    def stats(masks, losses: bool = shapley_value == "loss") -> CoalitionStats:
        """The game on ``masks``; the coalitions' losses only where a rule reads them (``loss``: None)."""
        presents = presents_of(tuple(int(mask) for mask in masks), names)
        logits = coalitions(presents) if coalitions is not None else torch.stack([forward(p) for p in presents])
        if logits.shape[:2] != (len(presents), len(labels)):
            raise ValueError(
                f"coalitions(presents) must return logits of shape (K, B, C) = ({len(presents)}, "
                f"{len(labels)}, C), got {tuple(logits.shape)}"
            )
        # float64 on the device: the accuracies and losses ``coalition_stats`` gives, without its host copy
        accuracy = (logits.argmax(-1) == labels).float().mean(1).double()
        both = torch.stack([accuracy, coalition_losses(logits, labels, loss_fn)]) if losses else accuracy[None]
        if distributed.active():  # the global batch's, so that every rank picks the same dominant modality
            both = torch.as_tensor(distributed.mean_over_ranks(both.cpu().numpy(), len(labels)), device=both.device)
        return CoalitionStats(both[0], both[1] if losses else None)

    try:
        if model is not None:
            model.eval()
        phi = modality_shapley(stats, len(names), shapley_value, exact_max, n_permutations, seed)
        # the loss rule reads each modality's lone loss: M more coalitions, evaluated for that rule only
        alone = stats(shapley.singleton_masks(len(names)), losses=True).loss if share_rule == "loss" else None
    finally:
        if model is not None:
            model.train(was_training)
    share = shapley.shares(phi, share_rule, share_temperature, alone)
    return phi, share, shapley.dominant_index(share, tie_rule, previous)


@dataclass
class Split:
    """One batch's split of the loss: the modality ε follows, and the shares (its and d's swapped).
    On the host (ints and floats), or on the device (``perturbed`` a 0-d tensor, ``shares`` a tensor):
    the ``default`` variant keeps it there, for its ε names no modality (no host sync)."""

    perturbed: int | torch.Tensor
    shares: np.ndarray | torch.Tensor

    def __post_init__(self):  # v once: backward, the perturbed pass and the record read it
        if torch.is_tensor(self.shares):
            index = torch.as_tensor(self.perturbed, device=self.shares.device).reshape(1)
            self._v = self.shares.gather(0, index)[0]
        else:
            self._v = float(self.shares[self.perturbed])

    @property
    def v(self) -> float | torch.Tensor:
        """v_d, the perturbed share: the amount of SAM in this update (a 0-d tensor on the device)."""
        return self._v


# -- the optimizer --------------------------------------------------------------------------------------
class MSAM(SAM):
    """SAM applied to the dominant modality's share of the loss (see the module docstring)."""

    def __init__(
        self,
        params,
        base_optimizer=torch.optim.SGD,
        modalities=(),
        model=None,
        rho: float = 0.05,
        adaptive: bool = False,
        variant: str = "default",
        share_rule: str = "clip",
        tie_rule: str = "lowest",
        shapley_value: str = "accuracy",
        exact_max: int = shapley.EXACT_MAX,
        n_permutations: int = 64,
        seed: int = 0,
        bn_policy: str = "restore",
        modality_parameters: dict | None = None,
        precision: str | Precision = "fp32",
        share_temperature: float = 1.0,
        dominant: str = "shapley",
        **kwargs,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if share_rule not in shapley.SHARE_RULES or tie_rule not in shapley.TIE_RULES:
            raise ValueError(
                f"share_rule must be one of {', '.join(shapley.SHARE_RULES)} and tie_rule one of "
                f"{', '.join(shapley.TIE_RULES)}; got {share_rule!r}, {tie_rule!r}"
            )
        if shapley_value not in ("accuracy", "loss"):
            raise ValueError(f"shapley_value must be accuracy or loss, got {shapley_value!r}")
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
            raise ValueError(
                f"dominant={dominant!r} changes nothing with variant='default' (its ε names no "
                "modality); use variant='params' or 'unimodal'"
            )
        self.model = model
        if variant == "params":
            inner = getattr(model, "module", model)  # a DDP wrapper's model
            if modality_parameters is None and inner is not None and hasattr(inner, "encoder_parameters"):
                modality_parameters = {m: inner.encoder_parameters(m) for m in self.modalities}
            if modality_parameters is None:
                raise ValueError(
                    "variant='params' needs modality_parameters={modality: [parameters]} "
                    "(or a msam_lab MultimodalModel as model)"
                )
        self.modality_parameters = modality_parameters
        self.options = dict(
            variant=variant,
            share_rule=share_rule,
            tie_rule=tie_rule,
            shapley_value=shapley_value,
            exact_max=exact_max,
            n_permutations=n_permutations,
            seed=seed,
            bn_policy=bn_policy,
            share_temperature=share_temperature,
        )
        self.previous_dominant: int | None = None
        self.backward_at_theta = False  # backward() ran: step(closure) then takes the closure at θ+ε only
        self.split: Split | None = None  # this batch's, set by observe (or choose)
        device = next((p.device for g in self.param_groups for p in g["params"]), torch.device("cpu"))
        # the trainer passes its own Precision: one GradScaler for every backward of the step
        self.precision = precision if isinstance(precision, Precision) else Precision(precision, device)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    # -- the split of one batch ----------------------------------------------------------------------
    def observe(self, forward, labels, loss_fn=F.cross_entropy, coalitions=None) -> ShapleyRecord:
        """The batch's Shapley record (module-level ``observe`` with this optimizer's options); it also
        chooses the batch's split (``choose``: the ablation's draw included) and sets ``rec.perturbed``."""
        o = self.options
        rec = observe(
            forward,
            labels,
            self.modalities,
            self.model,
            loss_fn,
            o["share_rule"],
            o["tie_rule"],
            o["shapley_value"],
            o["exact_max"],
            o["n_permutations"],
            o["seed"],
            self.previous_dominant,
            o["share_temperature"],
            coalitions,
        )
        d = self.modalities.index(rec.dominant)
        self.previous_dominant = d
        split = self.choose([rec.shares[m] for m in self.modalities], d)
        rec.perturbed = self.modalities[split.perturbed]
        return rec

    def choose(self, shares, dominant) -> Split:
        """This batch's split from its shares and dominant index: the modality ε follows (``dominant=``
        option) and the shares with its and d's swapped. Sets ``self.split``.

        Device tensors (``shares``, a 0-d ``dominant``) stay there for the ``default`` variant, whose ε
        names no modality: no host sync. ``params`` and ``unimodal`` must know the modality on the host:
        shares and index come over in one sync."""
        if torch.is_tensor(shares) and self.options["variant"] == "default":
            self.split = Split(dominant, shares)
            return self.split
        if torch.is_tensor(shares):
            host = torch.cat([shares.double(), torch.as_tensor(dominant).reshape(1).to(shares)]).tolist()  # one sync
            shares, dominant = host[:-1], int(host[-1])
        c = self.perturbed(dominant)
        self.split = Split(c, shapley.swap_shares(shares, dominant, c))
        return self.split

    def _need_split(self) -> Split:
        if self.split is None:
            raise RuntimeError("MSAM has no split for this batch: call observe(forward, labels) (or choose) first")
        return self.split

    def dominant_loss(self, output, labels, loss_fn=F.cross_entropy) -> torch.Tensor:
        """L_d at the current weights: what the closure (or the perturbed pass) backpropagates.
        ``output``: the fused logits (default, params), or ``coalition_logits(forward, modalities)`` (unimodal)."""
        split = self._need_split()
        if self.options["variant"] == "unimodal":
            return unimodal_dominant_loss(output, labels, split.v, split.perturbed, loss_fn)
        return fused_dominant_loss(output, labels, split.v, loss_fn)

    def split_losses(self, coalition_logits, labels, loss_fn=F.cross_entropy):
        """(L_d, L_s) of the unimodal variant at the current weights, for ``backward``."""
        split = self._need_split()
        return unimodal_losses(coalition_logits, labels, split.shares, split.perturbed, loss_fn)

    @torch.enable_grad()
    def backward(self, loss) -> None:
        """The backward at θ: the direction of ∇L_d(θ) into ``p.grad`` (for ε), the plain part ∇L_s(θ) kept
        for ``second_step``. ``loss``: ℓ, the fused loss (default, params), or ``split_losses(...)`` (unimodal)."""
        split, params, scale = self._need_split(), self._params(), self.precision.scale
        unimodal = self.options["variant"] == "unimodal"
        if unimodal != isinstance(loss, tuple):
            raise TypeError("backward takes the pair split_losses(...) with variant='unimodal', else the fused loss")
        if unimodal:
            l_d, l_s = loss
            plain = (
                torch.autograd.grad(scale(l_s), params, retain_graph=True, allow_unused=True)
                if torch.is_tensor(l_s)
                else [None] * len(params)
            )
            scale(l_d).backward()
        else:
            scale(loss).backward()
            # ∇L_d(θ) = v_d·∇ℓ: v_d cancels in ε, so p.grad = ∇ℓ already points the right way
            keep, cast = 1.0 - split.v, {}  # a device scalar for the default variant: no host sync

            def keep_in(dtype):  # in the gradient's dtype, as a Python float is taken: the same bits
                if torch.is_tensor(keep) and dtype not in cast:
                    cast[dtype] = keep.to(dtype)
                return cast.get(dtype, keep)

            scaled = {}  # parameter -> its plain part; one fused multiply per gradient dtype
            for dtype in {p.grad.dtype for p in params if p.grad is not None}:
                same = [p for p in params if p.grad is not None and p.grad.dtype == dtype]
                scaled.update(zip(same, torch._foreach_mul([p.grad for p in same], keep_in(dtype))))
            plain = [scaled.get(p) for p in params]
        for p, g in zip(params, plain):
            if g is not None:
                self.state[p]["plain"] = g
        self.backward_at_theta = True

    # -- the two steps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, only=None):
        """θ <- θ + ε from ``p.grad`` (∇L_d's direction); variant ``params``: only the perturbed modality's
        parameters move (``only`` overrides). The old weights are kept per parameter for ``restore``."""
        split = self._need_split()  # without it there is no plain part: the step would be SAM's
        if only is None and self.options["variant"] == "params":
            only = self.modality_parameters[self.modalities[split.perturbed]]
        super().first_step(zero_grad=zero_grad, only=only)

    @torch.no_grad()
    def add_plain(self) -> None:
        """``p.grad += ∇L_s(θ)``, the plain part ``backward`` kept (once; later calls add nothing)."""
        params = self._params()
        add_to_grads(params, [self.state[p].pop("plain", None) for p in params])

    @torch.no_grad()
    def restore(self):
        """θ+ε -> θ bit for bit, then the plain part added to the gradient taken at θ+ε."""
        super().restore()
        self.add_plain()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False):
        """Restore θ, add ∇L_s(θ), and let the base optimizer step (unscaled first under fp16)."""
        self.restore()
        self.precision.unscale(self.base_optimizer)
        self.precision.step(self.base_optimizer)
        self.split = None  # the next batch observes again
        self.backward_at_theta = False
        self._opt_called = True  # what torch's LR schedulers read: a scheduler on this optimizer sees the step
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None, labels=None, loss_fn=F.cross_entropy, coalitions=None):
        """``step(closure)``, torch's contract, after ``observe``: ``closure()`` zeroes the gradients, computes the
        fused loss ℓ, calls ``ℓ.backward()`` and returns ℓ; it runs at θ and at θ+ε (``closure_step``) and the
        step returns ℓ(θ). After ``backward(loss)`` (∇ at θ already in place) the closure backpropagates
        ``dominant_loss`` at θ+ε only: ``first_step``, ``closure()``, ``second_step``, as in davda54/sam.
        ``step(forward, labels)``: the whole step from ``forward(present)``, as ``step_forward``."""
        if labels is not None:
            return self.step_forward(closure, labels, loss_fn, coalitions)
        if closure is None:
            raise ValueError(
                "MSAM.step needs a closure (zero_grad, forward, loss.backward(), return loss) or step(forward, "
                "labels); Lightning's precision='16-mixed' steps without the closure: use 'bf16-mixed' or '32-true'"
            )
        if not self.backward_at_theta:
            return self.closure_step(closure)
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            out = closure()
        self.second_step()
        return out

    def closure_step(self, closure):
        """The step from torch's closure (``step(closure)``): ℓ(θ) and its gradient (under ``no_sync`` for a DDP
        ``model``), θ+ε, ℓ(θ+ε), then g = v_d·∇ℓ(θ+ε) + (1−v_d)·∇ℓ(θ) and the base step. Returns ℓ(θ)."""
        if self.options["variant"] == "unimodal":
            raise ValueError(
                "variant='unimodal' needs every coalition's logits, which a closure's loss does not give: "
                "use opt.step(forward, labels) (forward(present) -> logits)"
            )
        split = self._need_split()  # observe, once per step: the closure alone cannot choose d
        if self.precision.scaler is not None:
            raise ValueError("step(closure) cannot scale the closure's loss for fp16: use step(forward, labels)")
        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        params = self._params()
        self.zero_grad(set_to_none=True)
        with torch.enable_grad(), self.model.no_sync() if ddp else contextlib.nullcontext():
            loss = closure()
        with torch.no_grad():  # ∇L_d(θ) = v_d·∇ℓ points as ∇ℓ does; the plain part waits in the state
            for p in params:
                if p.grad is not None:
                    self.state[p]["plain"] = (1.0 - split.v) * p.grad
        self.first_step(zero_grad=True)
        keep = self.options["bn_policy"] == "restore"
        with (
            torch.enable_grad(),
            running_stats_kept(self.model, keep) if self.model is not None else (contextlib.nullcontext()),
        ):
            closure()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(split.v)
            if ddp:  # the plain part is this rank's (no_sync): one all-reduce averages the sum, as DDP would
                self.add_plain()
                distributed.average_gradients(params, 1)
        self.second_step()
        self.precision.end_step()
        return loss

    # -- the whole step from forward(present) ----------------------------------------------------------
    def step_forward(self, forward, labels, loss_fn=F.cross_entropy, coalitions=None) -> ShapleyRecord:
        """One M-SAM update; returns the batch's record (``loss`` is the fused loss at θ).
        ``coalitions``: see ``observe`` (the observation's coalition passes in one call)."""
        with self.precision.autocast():
            rec, loss = self._step(forward, labels, loss_fn, coalitions)
        rec.overflow = self.precision.end_step()
        rec.loss = float(loss.detach())
        return rec

    def _step(self, forward, labels, loss_fn, coalitions):
        full = frozenset(self.modalities)
        ddp = isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        self.zero_grad(set_to_none=True)
        with self.model.no_sync() if ddp else contextlib.nullcontext():  # the first pass stays on this rank
            if self.options["variant"] == "unimodal":
                # the graph of every coalition first (train mode), then the eval-mode observation
                output = coalition_logits(forward, self.modalities)
                rec = self.observe(forward, labels, loss_fn, coalitions)
                with torch.no_grad():
                    loss = loss_fn(output[-1], labels)
                self.backward(self.split_losses(output, labels, loss_fn))
            else:
                # the clean forward first, then the coalitions: as in the built-in trainer, the eval-mode
                # passes see the BatchNorm statistics this batch's train-mode forward has just updated
                loss = loss_fn(forward(full), labels)
                rec = self.observe(forward, labels, loss_fn, coalitions)
                self.backward(loss)
        self.first_step(zero_grad=True)
        if ddp:
            self.add_plain()  # before the synchronised backward: DDP averages the sum
        keep = self.options["bn_policy"] == "restore"  # BN statistics move once per step, as in SAM
        with running_stats_kept(self.model, keep) if self.model is not None else contextlib.nullcontext():
            again = (
                coalition_logits(forward, self.modalities) if self.options["variant"] == "unimodal" else forward(full)
            )
            self.precision.scale(self.dominant_loss(again, labels, loss_fn)).backward()
        self.second_step()
        return rec, loss

    def state_dict(self):
        return {
            **super().state_dict(),
            "previous_dominant": self.previous_dominant,
            "precision": self.precision.state_dict(),
            "perturbed": self.perturbed.state_dict(),
        }

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.previous_dominant = state_dict.pop("previous_dominant", None)
        self.precision.load_state_dict(state_dict.pop("precision", {}))
        if "perturbed" in state_dict:
            self.perturbed.load_state_dict(state_dict.pop("perturbed"))
        super().load_state_dict(state_dict)
