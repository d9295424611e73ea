"""M-SAM against its rivals, its ρ, its ablation and per-encoder sharpness: the runs behind notebook 08
and the ``fig_rivals_comparison`` / ``fig_rho_sweep`` / ``fig_fixed_dominant`` / ``fig_sharpness_timeline``
figures of ``make figures``.

    from msam_lab import rivals
    s = rivals.rival_settings()            # full, or quick in quick mode (MSAM_LAB_QUICK=1)
    rivals.rivals_table(s)                 # M-SAM, MASAM, MIE, SAM, joint on one budget (sweep summary)
    rivals.rho_table(s)                    # the ρ grid for the SAM-type methods
    rivals.ablation_table(s)               # which modality M-SAM perturbs (column ``arm``)
    rivals.sharpness_timeline(s)           # λ_max and tr H per encoder over epochs (long table)

Every table comes from ``msam_lab.experiments.sweep.run_sweep`` under ``notebook_utils.runs_root()``, in a folder
named after the resolved base config (``<section>-<hash>``): finished runs are reused, never
retrained, so a second call costs only reading them; changing a setting trains new runs elsewhere.

"Same budget": every method gets the same data, epochs, batch size, optimizer settings and seeds;
only each method's own published knobs differ (``method_overrides``: MASAM's ρ = 0.3, MIE's stage
lengths shortened to fit the epochs). This module sits above ``sweep``/``runs`` (nothing below imports it).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from msam_lab import paths
from msam_lab.analysis.sharpness_timeline import SHARPNESS_CSV
from msam_lab.datasets import load_dataset
from msam_lab.experiments.sweep import run_dir, run_sweep
from msam_lab.training.setup import config_hash, resolve

RHO_GRID = (0.01, 0.05, 0.1, 0.2, 0.5)
RIVALS = ("joint", "sam", "masam", "mie", "msam")
SHARPNESS_METHODS = ("joint", "sam", "masam", "msam")
# "fixed" stands for one arm per modality (fixed:<m>); see ablation_arms
ABLATION_ARMS = ("shapley", "fixed", "random", "alternate")


ARM_LABELS = {"shapley": "Shapley-dominant (M-SAM)", "random": "random per step", "alternate": "alternating per step"}


def arm_label(arm: str) -> str:
    """Display name of an ablation arm (an ``msam_dominant`` value): ``fixed:audio`` -> ``fixed: audio``,
    ``shapley`` -> ``Shapley-dominant (M-SAM)``; unknown values as they are."""
    arm = str(arm)
    if arm.startswith("fixed:"):
        return f"fixed: {arm.split(':', 1)[1]}"
    return ARM_LABELS.get(arm, arm)


def rival_settings(quick: bool | None = None) -> dict:
    """Everything the four sections depend on, full or quick (``None``: ``notebook_utils.quick_mode()``).

    Keys: ``quick``; ``data`` (``{"dataset": ..., "data": {...}}``); ``epochs``; ``seeds``; ``base`` (fields
    every run shares); ``methods`` (the comparison); ``method_overrides`` (``{method: {field: value}}``,
    applied wherever that method runs); ``rhos`` and ``rho_methods`` (the ρ sweep); ``ablation_variant``
    and ``ablation_arms``; ``sharpness`` (``methods``, ``seeds``, ``every``, ``samples``, ``probes``).

    Full mode trains 64 runs on av-digits (5 epochs, 3 seeds): 30–45 minutes on 2 CPU cores.
    """
    quick = paths.quick_mode() if quick is None else bool(quick)
    epochs = 2 if quick else 5
    return dict(
        quick=quick,
        data=dict(paths.QUICK_DATA) if quick else {"dataset": "av-digits"},
        epochs=epochs,
        seeds=[0] if quick else [0, 1, 2],
        base={"checkpoint_every": 0},
        methods=list(RIVALS),
        # MASAM's released ρ; MIE's default stages (25, 50 epochs) would train one modality only
        method_overrides={"masam": {"rho": 0.3}, "mie": {"mie_stage_epochs": [1] if quick else [2]}},
        rhos=[0.05, 0.5] if quick else list(RHO_GRID),
        rho_methods=["sam", "msam"],
        ablation_variant="params",
        ablation_arms=list(ABLATION_ARMS),
        sharpness=dict(
            methods=list(SHARPNESS_METHODS),
            seeds=[0],
            every=1 if quick else 2,
            samples=32 if quick else 128,
            probes=2 if quick else 8,
        ),
    )


def base_config(s: dict, method: str | None = None, **fields) -> dict:
    """The config every run of ``s`` shares (data, epochs, ``base``), plus ``method``'s overrides and ``fields``."""
    cfg = {**s["data"], "epochs": int(s["epochs"]), **s["base"]}
    if method is not None:
        cfg.update(s["method_overrides"].get(method, {}))
    cfg.update(fields)
    return cfg


def sweep_dir(section: str, config: dict) -> Path:
    """Where a section's sweep lives: ``runs_root()/<section>-<hash of the config>``."""
    return paths.runs_root() / f"{section}-{config_hash(config)}"


def _groups(methods, s: dict) -> list[tuple[list[str], dict]]:
    """Methods that share a config (the same overrides) in one sweep each, in first-seen order."""
    groups: dict[str, tuple[list[str], dict]] = {}
    for m in methods:
        over = s["method_overrides"].get(m, {})
        key = repr(sorted(over.items()))
        groups.setdefault(key, ([], over))[0].append(m)
    return list(groups.values())


def _sweep(section, methods, s, config, seeds=None, rhos=None, quiet=True) -> pd.DataFrame:

    tag = section + "-" + "+".join(methods)
    return run_sweep(
        list(methods),
        seeds=list(s["seeds"] if seeds is None else seeds),
        rhos=rhos,
        config=config,
        out=sweep_dir(tag, config),
        quiet=quiet,
    )


def _ordered(table: pd.DataFrame, methods) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(methods)}
    key = table["method"].map(order)
    return table.assign(_k=key).sort_values(["_k", "rho"], kind="stable").drop(columns="_k").reset_index(drop=True)


def rivals_table(s: dict | None = None, methods=None, quiet: bool = True) -> pd.DataFrame:
    """M-SAM, MASAM, MIE, SAM and joint (``s["methods"]``) on the same budget: the sweep summary
    (one row per method, mean ± std over ``s["seeds"]``; ``msam_lab.experiments.sweep.summarise``), in that order."""
    s = rival_settings() if s is None else s
    methods = list(s["methods"] if methods is None else methods)
    tables = [_sweep("rivals", group, s, base_config(s, group[0]), quiet=quiet) for group, _ in _groups(methods, s)]
    return _ordered(pd.concat(tables, ignore_index=True), methods)


def rho_table(s: dict | None = None, methods=None, rhos=None, quiet: bool = True) -> pd.DataFrame:
    """The ρ sweep: each of ``s["rho_methods"]`` (SAM-type) at every ρ of ``s["rhos"]``; one row per
    (method, ρ), sorted by method then ρ. A method's own ρ override (MASAM's 0.3) is replaced by the grid."""
    s = rival_settings() if s is None else s
    methods = list(s["rho_methods"] if methods is None else methods)
    rhos = [float(r) for r in (s["rhos"] if rhos is None else rhos)]
    tables = []
    for group, _ in _groups(methods, s):
        cfg = {k: v for k, v in base_config(s, group[0]).items() if k != "rho"}
        tables.append(_sweep("rho", group, s, cfg, rhos=rhos, quiet=quiet))
    return _ordered(pd.concat(tables, ignore_index=True), methods)


def ablation_arms(s: dict, modalities=None) -> list[str]:
    """``msam_dominant`` values of the ablation: ``s["ablation_arms"]`` with ``"fixed"`` expanded to
    ``fixed:<m>`` for each modality (``modalities``: default the dataset's), duplicates dropped."""
    arms = []
    for arm in s["ablation_arms"]:
        if arm == "fixed":
            mods = dataset_modalities(s["data"]) if modalities is None else list(modalities)
            arms += [f"fixed:{m}" for m in mods]
        else:
            arms.append(arm)
    return list(dict.fromkeys(arms))


def dataset_modalities(data: dict) -> list[str]:
    """The modalities of ``data`` (``{"dataset": ..., "data": {...}}``), in the dataset's order."""

    cfg = resolve(dict(data))
    return list(load_dataset(cfg.dataset, **cfg.data).modalities)


def ablation_table(s: dict | None = None, arms=None, quiet: bool = True) -> pd.DataFrame:
    """The fixed-dominant ablation: M-SAM with ``msam_variant = s["ablation_variant"]`` and each
    ``msam_dominant`` arm (``ablation_arms(s)``), one sweep per arm, combined into one table with an
    ``arm`` column (the ``msam_dominant`` value) and ``arm_label`` before the sweep summary's columns.

    In every arm the perturbed modality takes the Shapley-dominant one's share (docs/methods.md,
    "Ablations"): the amount of SAM is the same, only its target differs.
    """
    s = rival_settings() if s is None else s
    arms = ablation_arms(s) if arms is None else list(arms)
    rows = []
    for arm in arms:
        cfg = base_config(s, "msam", msam_variant=s["ablation_variant"], msam_dominant=arm)
        t = _sweep("ablation", ["msam"], s, cfg, quiet=quiet)
        t.insert(0, "arm_label", arm_label(arm))
        t.insert(0, "arm", arm)
        rows.append(t)
    return pd.concat(rows, ignore_index=True)


TIMELINE_COLUMNS = (
    "method",
    "seed",
    "epoch",
    "scope",
    "block",
    "lambda_1",
    "trace",
    "trace_se",
    "eps_sharpness",
    "loss",
    "n_parameters",
    "n_samples",
    "probes",
    "run",
)


def read_timeline(runs: dict) -> pd.DataFrame:
    """``{(method, seed): run dir}`` -> the long table of their ``sharpness.csv`` rows: columns
    ``TIMELINE_COLUMNS`` (``block``: ``encoder`` or ``fusion``), sorted by method, seed, epoch, scope.
    A run without sharpness.csv is an error (trained without ``sharpness_every``)."""

    frames = []
    for (method, seed), path in runs.items():
        csv = Path(path) / SHARPNESS_CSV
        if not csv.is_file():
            raise FileNotFoundError(f"{csv} is missing: {path} was trained without sharpness_every")
        df = pd.read_csv(csv)
        df = df[df["split"] == "train"] if "split" in df else df
        df = df.assign(
            method=method,
            seed=int(seed),
            run=str(path),
            block=["fusion" if sc == "fusion" else "model" if sc == "model" else "encoder" for sc in df["scope"]],
        )
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    cols = [c for c in TIMELINE_COLUMNS if c in out]
    scope_order = {sc: i for i, sc in enumerate(dict.fromkeys(out["scope"]))}
    method_order = {m: i for i, m in enumerate(dict.fromkeys(out["method"]))}
    out = out.assign(_m=out["method"].map(method_order), _s=out["scope"].map(scope_order))
    return out.sort_values(["_m", "seed", "epoch", "_s"]).loc[:, cols].reset_index(drop=True)


def sharpness_timeline(s: dict | None = None, methods=None, quiet: bool = True) -> pd.DataFrame:
    """Runs of ``s["sharpness"]["methods"]`` (with their overrides) trained with ``sharpness_every``:
    λ_max and the Hutchinson trace of each encoder block and the fusion over epochs, read from each
    run's sharpness.csv (``read_timeline``). Besides ``sharpness_*`` they are the comparison's runs,
    so they train exactly like its seeds (the measurement leaves no trace)."""

    s = rival_settings() if s is None else s
    sh = s["sharpness"]
    methods = list(sh["methods"] if methods is None else methods)
    fields = dict(
        sharpness_every=int(sh["every"]), sharpness_samples=int(sh["samples"]), sharpness_probes=int(sh["probes"])
    )
    paths = {}
    for group, _ in _groups(methods, s):
        cfg = base_config(s, group[0], **fields)
        _sweep("sharpness", group, s, cfg, seeds=sh["seeds"], quiet=quiet)
        out = sweep_dir("sharpness-" + "+".join(group), cfg)
        for m in group:
            for seed in sh["seeds"]:
                paths[(m, seed)] = run_dir(out, m, int(seed))
    return read_timeline({k: paths[k] for k in sorted(paths, key=lambda k: (methods.index(k[0]), k[1]))})


def all_tables(s: dict | None = None, quiet: bool = True) -> dict:
    """The four results of ``s``: ``{"rivals", "rho", "ablation", "sharpness"}`` (trained or reused)."""
    s = rival_settings() if s is None else s
    return {
        "rivals": rivals_table(s, quiet=quiet),
        "rho": rho_table(s, quiet=quiet),
        "ablation": ablation_table(s, quiet=quiet),
        "sharpness": sharpness_timeline(s, quiet=quiet),
    }
