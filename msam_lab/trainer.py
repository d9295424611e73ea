"""``train(config)``: one run from config to run directory."""
from __future__ import annotations

import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import config as config_mod
from .config import Config, ConfigError
from .datasets import load_dataset
from .methods import build_method
from .metrics import dominance_switches, evaluate, tau, tau_loss
from .models import model_from_spec
from .runs import Run, RunWriter, check_output_dir, load_run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_out(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.dataset}-{cfg.method}-s{cfg.seed}-{stamp}"


def rng_state(generator: torch.Generator) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _epoch_row(epoch, model, splits, cfg, started) -> dict:
    kw = dict(batch_size=cfg.eval_batch_size, share_rule=cfg.share_rule, shapley_value=cfg.shapley_value,
              exact_max=cfg.shapley_exact_max, n_permutations=cfg.shapley_permutations, seed=cfg.seed)
    tr, te = evaluate(model, splits.train, **kw), evaluate(model, splits.test, **kw)
    row = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
           "test_loss": te["loss"], "test_acc": te["acc"],
           "tau": tau(tr["acc"], te["acc"]), "tau_loss": tau_loss(tr["loss"], te["loss"])}
    for split, res in (("train", tr), ("test", te)):
        for key, value in res.items():
            if key not in ("loss", "acc"):
                row[f"{split}_{key}"] = value
    row["wall_time"] = time.perf_counter() - started
    return row


def train(config=None, out=None, quiet: bool = False, overrides=()) -> Run:
    """Train one model as ``config`` says and write its run directory; return the loaded run.

    ``config``: a Config, a dict of fields, a YAML path or None (defaults);
    ``overrides``: ``key=value`` strings applied on top.
    """
    cfg = config_mod.resolve(config, overrides)
    out = check_output_dir(out if out is not None else default_out(cfg))
    device = resolve_device(cfg.device)
    try:
        splits = load_dataset(cfg.dataset, **cfg.data).to(device)
    except (ValueError, FileNotFoundError) as err:   # a loader's one-line layout/option message
        raise ConfigError(str(err)) from None
    unknown = sorted(set(cfg.encoders) - set(splits.modalities))
    if unknown:
        raise ConfigError(f"encoders.{unknown[0]} names no modality of {cfg.dataset}; "
                          f"its modalities are: {', '.join(splits.modalities)}")
    seed_everything(cfg.seed)
    spec = {"input_shapes": {m: list(x.shape[1:]) for m, x in splits.train.inputs.items()},
            "num_classes": splits.num_classes, "fusion": cfg.fusion,
            "encoders": {**splits.info.get("encoders", {}), **cfg.encoders},
            "feature_dim": cfg.feature_dim, "hidden_dim": cfg.hidden_dim}
    model = model_from_spec(spec).to(device)
    method = build_method(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)

    writer = RunWriter(out)
    try:
        writer.json("config.json", cfg.to_dict())
        writer.json("model.json", spec)

        def checkpoint(epoch):
            writer.checkpoint(epoch, {"epoch": epoch, "model": model.state_dict(),
                                      "method": method.state_dict(), "rng": rng_state(generator)})

        started = time.perf_counter()
        steps, epochs = [], [_epoch_row(0, model, splits, cfg, started)]
        checkpoint(0)
        steps_per_epoch = -(-len(splits.train) // cfg.batch_size)
        bar = tqdm(total=cfg.epochs * steps_per_epoch, disable=quiet, leave=False,
                   desc=f"{cfg.method} on {cfg.dataset}", unit="step")
        step = 0
        for epoch in range(cfg.epochs):
            method.start_epoch(epoch)
            for inputs, labels in splits.train.batches(cfg.batch_size, shuffle=True, generator=generator):
                row = {"step": step, "epoch": epoch + 1, **method.step(inputs, labels)}
                steps.append(row)
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{row['loss']:.3f}", dominant=row["dominant"], refresh=False)
            epochs.append(_epoch_row(epoch + 1, model, splits, cfg, started))
            last = epoch + 1 == cfg.epochs
            if last or (cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0):
                checkpoint(epoch + 1)
        bar.close()
        wall = time.perf_counter() - started
        steps_df, epochs_df = pd.DataFrame(steps), pd.DataFrame(epochs)
        final = epochs[-1]
        summary = {
            "method": cfg.method, "dataset": cfg.dataset, "seed": cfg.seed, "epochs": cfg.epochs,
            "steps": step, "wall_time": wall, "device": str(device),
            "torch": torch.__version__, "python": platform.python_version(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "dominance_switches": dominance_switches(steps_df["dominant"]) if steps else 0,
            **{k: final[k] for k in final if k.startswith(("test_", "train_", "tau"))},
        }
        writer.finish(steps_df, epochs_df, summary)
    except BaseException:
        writer.abort()
        raise
    return load_run(out)
