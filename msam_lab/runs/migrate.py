"""Every older format of a run's files, read into today's: the one place that knows what old runs wrote.

config.json carries ``format_version`` (``msam_lab.config.FORMAT_VERSION``); the config is where the
formats differ, and the version travels with the file that needs it (a sweep compares config.json
alone, resume reads it alone). A config.json without the key is format 1:

- format 1 (up to issue 19): every baseline's options were ``Config`` fields, so each run's
  config.json held all of them (``FORMAT_1_OPTIONS``), the chosen method's and every other's.
  Fields added while format 1 was written are absent from older files and meant what
  ``STORED_DEFAULTS`` says (not today's default);
- format 2: the shared fields and the chosen method's options only.

The other old shapes: a model.json from before ``encoder_options`` / ``fusion_trunk`` / ``head_hidden``
(:func:`model_spec`) and sweep tables from before model selection (:func:`sweep_runs`,
:func:`sweep_summary`). Callers read through here; nothing else keeps an old-format rule.
"""

from __future__ import annotations

from msam_lab.config import FORMAT_KEY, FORMAT_VERSION, Config, ConfigError, from_dict, shown

# Format 1's baseline fields and their defaults, by method, as config.json of that format holds them.
FORMAT_1_OPTIONS = {
    "unimodal": {"modality": ""},
    "ogm_ge": {"ogm_alpha": 0.1, "ogm_start_epoch": 0, "ogm_end_epoch": 50, "ogm_noise": True},
    "agm": {"agm_alpha": 1.0, "agm_start_epoch": 0, "agm_end_epoch": 20, "agm_momentum": 0.0, "agm_clip": 7.0},
    "cggm": {
        "cggm_rho": 1.3,
        "cggm_lambda": 0.2,
        "cggm_cls_lr": None,
        "cggm_clip": 0.8,
        "cggm_eps": 1e-8,
        "cggm_guard": True,
        "cggm_bound": 1.0,
    },
    "reconboost": {
        "recon_stage_epochs": 4,
        "recon_correct_epochs": 4,
        "recon_stage_steps": 0,
        "recon_correct_steps": 0,
        "recon_weight1": 5.0,
        "recon_weight2": 1.0,
        "recon_boost_rate": 1.0,
        "recon_lr": None,
        "recon_order": [],
    },
    "mie": {
        "mie_stage_epochs": [25, 50],
        "mie_stage_steps": 0,
        "mie_order": [],
        "mie_mixup_alpha": 1.0,
        "mie_rho": 1e-10,
        "mie_restore": False,
        "mie_ori_weight": 0.7,
        "mie_flat_weight": 0.3,
        "mie_temperature": 0.4,
    },
    "masam": {"masam_mode": "paper", "masam_beta": 0.9, "masam_w": 0.5, "masam_aps": None},
}

# Fields added after runs were already being written whose default is NOT what those runs did:
# a stored config without the field ran as this value (a resumed or re-read old run must too).
STORED_DEFAULTS = {
    "val_fraction": 0.0,  # runs before model selection trained on the whole train split
    "max_skipped_fraction": 1.0,
}  # nan_policy=skip had no limit
STORED_METHOD_DEFAULTS = {"cggm": {"cggm_guard": False}}  # CGGM runs before the guard used the unbounded B


def stored_version(values: dict) -> int:
    """The format of a stored config.json's ``values`` (1 where it names none); ConfigError for one this
    msam_lab cannot read (written by a newer one, or damaged)."""
    version = values.get(FORMAT_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ConfigError(
            f"{FORMAT_KEY} {shown(version)} is not a config format this msam_lab reads "
            f"(1..{FORMAT_VERSION}); a newer msam_lab wrote it, or the file is damaged"
        )
    return version


def config_values(values: dict) -> dict:
    """A stored config.json's values in today's format (flat keys, ``format_version`` today's)."""
    version = stored_version(values)
    values = {k: v for k, v in values.items() if k != FORMAT_KEY}
    method = values.get("method")
    if version == 1:
        foreign = {k for m, options in FORMAT_1_OPTIONS.items() if m != method for k in options}
        values = {k: v for k, v in values.items() if k not in foreign}
    # format 2 always writes these keys; a file without one (format 1, or edited by hand) ran as before them
    return {**STORED_DEFAULTS, **STORED_METHOD_DEFAULTS.get(method, {}), **values, FORMAT_KEY: FORMAT_VERSION}


def stored_config(values: dict) -> Config:
    """The Config of a stored run's config.json ``values``, any format (not checked against the registries:
    ``msam_lab.training.setup.resolve`` does that where a run continues)."""
    return from_dict(config_values(values))


def as_format_1(values: dict) -> dict:
    """Today's flat config values as format 1 wrote them: every baseline option (the method's own values,
    format 1's defaults for the others), no ``format_version``. ``training.setup.config_hash`` hashes
    this, so run folders named by a hash keep their names."""
    defaults = {k: v for options in FORMAT_1_OPTIONS.values() for k, v in options.items()}
    return {**defaults, **{k: v for k, v in values.items() if k != FORMAT_KEY}}


# -- model.json ---------------------------------------------------------------------------
NEW_SPEC_KEYS = ("encoder_options", "fusion_trunk", "head_hidden")


def model_spec(spec: dict) -> dict:
    """A model.json spec in today's form. One with none of ``NEW_SPEC_KEYS`` was written before they
    existed: it had no encoder options, the mlp trunk, linear heads and, under early fusion, a linear stem
    for every modality whatever its ``encoders`` said (early fusion ignored them then)."""
    if spec.get("kind") == "logged" or any(k in spec for k in NEW_SPEC_KEYS):
        return dict(spec)
    encoders = {} if spec.get("fusion") == "early" else spec.get("encoders")
    return {**spec, "encoders": encoders, "encoder_options": {}, "fusion_trunk": "mlp", "head_hidden": []}


# -- sweep tables -------------------------------------------------------------------------
AT_LAST = "_last"  # experiments.sweep's suffix of a test number at the last epoch


def _unlabelled(col: str) -> bool:
    """A test metric of a table written before model selection: ``acc``, ``acc_<m>``, ``acc_only_<m>``, ``tau``."""
    return (col in ("acc", "tau") or col.startswith("acc_")) and not col.endswith(("_at_best", AT_LAST))


def sweep_runs(runs):
    """A per-run table (``sweep.csv``, a DataFrame) from before model selection, its last-epoch columns
    labelled: ``acc`` -> ``acc_last``, ``acc_<m>`` -> ``acc_<m>_last``, ``tau`` -> ``tau_last``. New tables
    pass as they are."""
    if any(c.endswith(AT_LAST) for c in runs.columns):
        return runs
    return runs.rename(columns={c: c + AT_LAST for c in runs.columns if _unlabelled(c)})


def sweep_summary(table):
    """The same for a summary table (``sweep_summary.csv``): ``acc_mean`` -> ``acc_last_mean``, … ."""
    if any(c.endswith((AT_LAST + "_mean", AT_LAST + "_std")) for c in table.columns):
        return table
    renamed = {}
    for c in table.columns:
        for stat in ("_mean", "_std"):
            if c.endswith(stat) and _unlabelled(c[: -len(stat)]):
                renamed[c] = c[: -len(stat)] + AT_LAST + stat
    return table.rename(columns=renamed)
