"""Sharpness over training: λ_max and the Hessian trace of each encoder's block and of the fusion.

``sharpness_every = K`` (config) measures, at epoch 0, every K-th epoch and the last, the Hessian
of the fused training loss restricted to each block of parameters — ``encoders.<m>`` for every
modality m, and ``fusion`` — on a fixed seeded subset of the train split
(the samples the run trains on; a validation hold-out is not among them). Restricted to a
block, the Hessian is the diagonal block of the full Hessian; its top eigenvalue (power
iteration) and trace (Hutchinson, Rademacher probes) answer "do the non-dominant modalities
end up in sharper minima?" — MASAM's figure is the per-encoder trace over epochs.

Rows go to ``<run>/sharpness.csv`` in the format ``msam-lab sharpness`` writes; one row per
(epoch, scope, settings) — a re-measured epoch (a resumed run) replaces its rows.
``msam-lab sharpness RUN --timeline`` computes the same rows after the fact from the
checkpoints (msam_lab.landscape.for_run.timeline_for_run), with the same numbers.

The measurement runs in eval mode, draws only from generators of its own and gives the model
back bitwise as it was (mode, values, BatchNorm statistics, ``requires_grad``), so a run
with ``sharpness_every`` trains exactly as one without.
"""

from __future__ import annotations

from msam_lab.analysis.hessian import block_sharpness, fused_loss_fn
from msam_lab.analysis.metrics import train_eval_subset
from msam_lab.models.multimodal import eval_mode

SHARPNESS_CSV = "sharpness.csv"
# a row's identity: the same key means the same measurement, and a new row replaces the old one
KEYS = ("epoch", "scope", "split", "n_samples", "subset_seed", "seed", "topk", "probes", "rho")
# the fixed settings (those a run's config does not choose); `msam-lab sharpness --timeline` uses them too
SPLIT, TOPK, SEED, SUBSET_SEED, RHO, MAX_ITER, TOL, BATCH_SIZE = "train", 1, 0, 0, 0.05, 100, 1e-3, 64


def scopes(modalities) -> list[str]:
    """The blocks measured: each modality's encoder and the fusion.

    Not the whole model: its Hessian-vector product costs as much as the largest encoder's (on
    av-digits +50 % per measurement); ``msam-lab sharpness RUN --epoch all --scope model`` adds it.
    """
    return [*modalities, "fusion"]


def due(epoch: int, cfg) -> bool:
    """Whether ``epoch`` is measured: 0, every ``sharpness_every``-th and the last (never when 0)."""
    k = cfg.sharpness_every
    return bool(k) and (epoch == 0 or epoch == cfg.epochs or epoch % k == 0)


def _prefix(model, scope: str) -> str:
    return f"encoders.{scope}." if scope in model.modalities else f"{scope}."


def measure(model, data, epoch: int, n_samples: int = 256, probes: int = 16) -> list[dict]:
    """sharpness.csv rows of ``model`` at ``epoch``: one per scope, on ``n_samples`` of ``data`` (0: all).

    The subset is ``metrics.train_eval_subset(data, n_samples, SUBSET_SEED)``: the same samples
    ``landscape.eval_subset`` picks.
    """
    device = next(model.parameters()).device
    subset = train_eval_subset(data, n_samples, SUBSET_SEED).to(device)
    settings = {
        "epoch": epoch,
        "split": SPLIT,
        "n_samples": len(subset),
        "subset_seed": SUBSET_SEED,
        "seed": SEED,
        "topk": TOPK,
        "probes": probes,
    }
    rows = []
    with eval_mode(model):
        loss_fn = fused_loss_fn(model, subset, BATCH_SIZE)
        for scope in scopes(model.modalities):
            prefix = _prefix(model, scope)
            params = [p for name, p in model.named_parameters() if name.startswith(prefix)]
            rows.append(
                {
                    **settings,
                    "scope": scope,
                    **block_sharpness(
                        model, loss_fn, params, rho=RHO, topk=TOPK, probes=probes, seed=SEED, max_iter=MAX_ITER, tol=TOL
                    ),
                }
            )
    return rows


def at_epoch(writer, model, data, epoch: int, cfg) -> None:
    """The trainer's hook: measure ``model`` on ``data`` (the train split) if ``epoch`` is due; rows via ``writer``
    (None on the ranks other than 0 of a data-parallel run: they measure, as every rank runs the same passes, and
    rank 0 writes)."""
    if due(epoch, cfg):
        rows = measure(model, data, epoch, cfg.sharpness_samples, cfg.sharpness_probes)
        if writer is not None:
            writer.replace_rows(SHARPNESS_CSV, rows, KEYS)
