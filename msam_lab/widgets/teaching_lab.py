"""Teaching lab: sliders for each modality's noise and for ρ, a scenario preset (av-digits: audio starved,
or audio taking over), a button that trains a short run live in the background and redraws fused/per-
modality accuracy and the dominance picture after every epoch while it trains (``train``'s ``on_epoch``
callback; the status line shows the epoch just finished), plus a history of the settings tried. Figures
from ``viz.accuracy_curves`` and ``viz.shares_over_steps``, updated in place with ``viz.refresh``; runs
via ``notebook_utils.ensure_run`` (a setting tried before is reloaded, not retrained)."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go

from msam_lab import viz
from msam_lab.methods import METHOD_NAMES, method_names
from msam_lab.notebook_utils import ensure_run, run_path, runs_root
from msam_lab.runs.reader import is_run, load_run
from msam_lab.widgets.follow import ready, waiting_figure


@dataclass
class Knob:
    """A slider over one config field: ``key`` like ``rho``, ``data.audio_snr_db`` or
    ``data.informativeness[1]`` (an item of a list option)."""

    key: str
    label: str
    min: float
    max: float
    step: float
    value: float


AV_DIGITS_KNOBS = [
    Knob("data.image_noise", "image noise σ", 0.0, 2.0, 0.1, 0.0),
    Knob("data.audio_snr_db", "audio SNR (dB)", -30.0, 10.0, 1.0, -12.0),
    Knob("rho", "ρ (SAM radius)", 0.0, 0.5, 0.01, 0.05),
]


def synthetic_knobs(informativeness=(3.0, 0.75)) -> list[Knob]:
    """Knobs for the ``synthetic`` dataset: each modality's informativeness (signal-to-noise), and ρ."""
    knobs = [
        Knob(f"data.informativeness[{i}]", f"m{i} informativeness", 0.0, 5.0, 0.25, float(v))
        for i, v in enumerate(informativeness)
    ]
    return knobs + [Knob("rho", "ρ (SAM radius)", 0.0, 0.5, 0.01, 0.05)]


# Scenario presets: fixed config fields each preset adds to the base config ({}: the dataset's defaults).
# ``takeover`` needs av-digits' ``data.scenario`` option: the image leads early, then audio takes over.
AV_DIGITS_PRESETS = {
    "imbalanced (audio starved)": {},
    "takeover (audio takes over)": {"data.scenario": "takeover"},
}

LAB_METHODS = ("msam", "joint", "sam")  # the lab's story: M-SAM against its two ancestors


def lab_methods() -> tuple[str, ...]:
    """The method dropdown's default choices: ``LAB_METHODS``, then every registered plug-in method."""
    return LAB_METHODS + tuple(m for m in method_names() if m not in METHOD_NAMES)


def set_field(config: dict, key: str, value) -> dict:
    """Set ``key`` (``a``, ``data.b`` or ``data.b[i]``) in a config dict, in place; returns it."""
    head, dot, rest = key.partition(".")
    target, name = (config.setdefault(head, {}), rest) if dot else (config, key)
    if name.endswith("]") and "[" in name:
        name, index = name[:-1].split("[")
        items = target.setdefault(name, [])
        items.extend([None] * (int(index) + 1 - len(items)))  # created by the knobs when absent
        items[int(index)] = value
    else:
        target[name] = value
    return config


class TeachingLab(W.VBox):
    """``TeachingLab(base_config, knobs=AV_DIGITS_KNOBS, epochs=3)``; press **Train** (or call ``retrain()``).

    ``base_config``: the fixed part of the config (default av-digits with ``checkpoint_every=1``);
    ``presets``: ``{name: {key: value}}`` fields a dropdown adds to it (``AV_DIGITS_PRESETS``; None: no
    dropdown); ``retrain(background=True)`` (the Train button, the notebook on open) returns at once and
    streams the run into the figures; ``wait()`` joins it.
    ``methods``: the choices of the method dropdown (default ``lab_methods()``: msam, joint, sam and
    any plug-in methods); ``root``: where the lab's runs go (default ``runs_root()/lab``).
    """

    def __init__(
        self,
        base_config: dict | None = None,
        knobs=None,
        epochs: int = 3,
        max_epochs: int = 20,
        methods=None,
        smooth: int = 5,
        root=None,
        presets=None,
        **kwargs,
    ):
        methods = tuple(lab_methods() if methods is None else methods)
        known = method_names()
        unknown = [m for m in methods if m not in known]
        if not methods:
            raise ValueError("methods must name at least one method, e.g. ('msam', 'joint')")
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r} in methods; choose from: {', '.join(known)}")
        self.base_config = {"checkpoint_every": 1, **(base_config or {})}
        if "data" in self.base_config:
            self.base_config["data"] = copy.deepcopy(self.base_config["data"])
        self.knobs = list(AV_DIGITS_KNOBS if knobs is None else knobs)
        self.smooth = smooth
        self.root = root
        self.runs: list = []
        self.history = pd.DataFrame()
        self.presets = dict(presets or {})
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.controls = {
            k.key: W.FloatSlider(
                value=k.value,
                min=k.min,
                max=k.max,
                step=k.step,
                description=k.label,
                continuous_update=False,
                style={"description_width": "150px"},
                layout=W.Layout(width="460px"),
            )
            for k in self.knobs
        }
        self.controls["method"] = W.Dropdown(options=list(methods), value=methods[0], description="method")
        self.controls["epochs"] = W.IntSlider(value=epochs, min=1, max=max_epochs, description="epochs")
        if self.presets:
            self.controls["preset"] = W.Dropdown(
                options=list(self.presets), value=next(iter(self.presets)), description="scenario"
            )
        self.button = W.Button(
            description="Train",
            button_style="primary",
            icon="play",
            tooltip="train a short run with these settings and redraw",
        )
        self.button.on_click(lambda _: self.retrain(background=True))
        self.status = W.HTML("Set the sliders and press <b>Train</b>.")  # also the epoch lines while training
        # drawn at once (the page paints before anything trains); the runs stream into them
        self.accuracy_figure = go.FigureWidget(_empty_figure("test accuracy: press Train"))
        self.dominance_figure = go.FigureWidget(_empty_figure("dominance over steps: press Train"))
        self.table = W.HTML()
        sliders = [self.controls[k.key] for k in self.knobs]
        side = [self.controls[k] for k in ("preset", "method", "epochs") if k in self.controls] + [self.button]
        super().__init__(
            [
                W.HBox([W.VBox(sliders), W.VBox(side)]),
                self.status,
                self.accuracy_figure,
                self.dominance_figure,
                self.table,
            ],
            **kwargs,
        )

    def config(self) -> dict:
        """The config the current slider values describe."""
        cfg = copy.deepcopy(self.base_config)
        if "preset" in self.controls:
            for key, value in self.presets[self.controls["preset"].value].items():
                set_field(cfg, key, value)
        for k in self.knobs:
            set_field(cfg, k.key, float(self.controls[k.key].value))
        cfg["method"] = self.controls["method"].value
        cfg["epochs"] = int(self.controls["epochs"].value)
        return cfg

    @property
    def training(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def retrain(self, background: bool = False):
        """Train (or reload) the run of the current settings, redrawing after every epoch; returns the run.

        ``background=True``: train on a daemon thread and return it at once (the figures and the status
        line stream while it trains; ``wait()`` joins it). Ignored (returns None) while a run trains."""
        if self.training:
            return None
        if not background:
            return self._retrain()
        self.error = None

        def target():
            try:
                self._retrain()
            except BaseException as err:  # noqa: BLE001 - shown in the status line, re-raised by wait()
                self.error = err

        self.thread = threading.Thread(target=target, name="msam-lab-teaching-lab", daemon=True)
        self.thread.start()
        return self.thread

    def wait(self, timeout: float | None = None):
        """Wait for a background ``retrain`` (``timeout`` s, then TimeoutError); the last run, or re-raise."""
        if self.thread is not None:
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise TimeoutError(f"the teaching lab is still training after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.runs[-1] if self.runs else None

    def _retrain(self):
        cfg = self.config()
        settings = self._settings()
        self.button.disabled = True
        self.status.value = f"training {cfg['method']} for {cfg['epochs']} epochs …"
        started = time.perf_counter()
        root = self.root if self.root is not None else runs_root() / "lab"

        try:  # a config the trainer rejects (an unknown dataset) fails here, before training
            path = run_path("lab", cfg, root)
        except Exception as err:
            self.button.disabled = False
            self.status.value = f"<span style='color:#b00'>training failed: {type(err).__name__}: {err}</span>"
            raise
        self._reloaded = is_run(path)
        self.live_redraws = 0  # figure redraws while this run trained (one per evaluated epoch)
        self.live_error = None
        last_status = [0.0]
        epochs_left = [None]  # steps per epoch, known after the first one: the ETA

        def on_step(row) -> None:  # the status line moves while an epoch trains (a few times a second)
            now = time.perf_counter()
            if now - last_status[0] < 0.5:
                return
            last_status[0] = now
            done = row["step"] + 1
            text = f"training {cfg['method']}: epoch {row['epoch']}/{cfg['epochs']}, step {done}"
            if epochs_left[0]:
                total = epochs_left[0] * cfg["epochs"]
                rate = done / max(now - started, 1e-9)
                text += f"/{total} · about {max(total - done, 0) / rate:.0f} s left"
            self.status.value = text + f" · {now - started:.1f} s …"

        def on_epoch(row) -> None:  # the epoch's rows are on disk when this is called
            try:
                self._draw(load_run(path), cfg, settings)
                self.live_redraws += 1
            except Exception as err:  # noqa: BLE001 - a drawing problem must not fail the run
                self.live_error = err
            if row["epoch"] == 1:
                try:
                    epochs_left[0] = len(load_run(path).steps)
                except Exception:  # noqa: BLE001 - only the ETA is missing then
                    epochs_left[0] = None
            last_status[0] = time.perf_counter()
            parts = [
                f"training {cfg['method']}: epoch {row['epoch']}/{cfg['epochs']}",
                f"test acc {100 * row['test_acc']:.1f} %",
            ]
            if row.get("test_dominant"):
                parts.append(f"dominant {row['test_dominant']}")
            parts.append(f"{time.perf_counter() - started:.1f} s")
            self.status.value = " · ".join(parts) + " …"

        try:
            run = ensure_run(
                "lab", cfg, root=root, quiet=True, on_step=on_step, on_epoch=on_epoch, progress=False
            )  # the status line is its progress
        except Exception as err:
            self.status.value = f"<span style='color:#b00'>training failed: {type(err).__name__}: {err}</span>"
            raise
        finally:
            self.button.disabled = False
        took = time.perf_counter() - started
        self.runs.append(run)
        self._redraw(run, cfg, took, settings)
        return run

    def _settings(self) -> str:
        """The slider values, for the figure title (read when a run starts)."""
        parts = [f"{k.label} = {self.controls[k.key].value:g}" for k in self.knobs]
        if "preset" in self.controls:
            parts.insert(0, self.controls["preset"].value.split(" (")[0])
        return ", ".join(parts)

    def _draw(self, run, cfg, settings: str) -> None:
        """Both figures from ``run`` as far as it has got (the dominance one once it has steps)."""
        label = viz.style.method_label(cfg["method"])
        if len(run.epochs):
            # the settings go in the subtitle: in one title line they were cut off at the figure's edge
            fig = viz.accuracy_curves({f"{label}, {cfg['epochs']} epochs": run}, title="Test accuracy per epoch")
            fig.update_layout(title_subtitle=dict(text=settings, font=dict(size=12, color="#555")))
            fig.update_layout(margin=dict(t=95))
            self._show("accuracy_figure", fig)
        if ready(run):
            self._show("dominance_figure", viz.shares_over_steps(run, smooth=self.smooth, accuracy=False))
        else:  # epoch 0 (before training): not the previous run's picture
            self._show("dominance_figure", waiting_figure({label: run}))

    def _show(self, attr: str, fig) -> None:
        """Put ``fig`` in the figure widget ``attr``: in place on the main thread; from the background
        thread as a new FigureWidget swapped into the layout (Voilà's views did not apply the in-place
        updates a background thread sent; a new widget arrives with its whole state)."""
        old = getattr(self, attr)
        if threading.current_thread() is threading.main_thread():
            viz.refresh(old, fig)
            return
        new = go.FigureWidget(fig)
        setattr(self, attr, new)
        self.children = tuple(new if child is old else child for child in self.children)

    def _redraw(self, run, cfg, took: float, settings: str | None = None) -> None:
        self._draw(run, cfg, settings if settings is not None else self._settings())
        final = run.epochs.iloc[-1]
        row = {
            **({"scenario": self.controls["preset"].value.split(" (")[0]} if "preset" in self.controls else {}),
            "method": cfg["method"],
            **{k.label: self.controls[k.key].value for k in self.knobs},
            "epochs": cfg["epochs"],
            "fused acc %": 100 * final["test_acc"],
        }
        for m in viz.common.modalities_of(run):
            row[f"{m} acc % (decomposed)"] = 100 * final[f"test_acc_{m}"]
        row["switches"] = run.summary.get("dominance_switches")
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)
        self.table.value = "<b>Settings tried</b> (test accuracy after the last epoch)" + self.history.to_html(
            index=False, float_format=lambda x: f"{x:.3g}"
        )
        how = "tried before: reloaded" if self._reloaded else "trained"
        self.status.value = f"done in {took:.1f} s ({how}; run folder {run.path.name})"


def _empty_figure(text: str) -> go.Figure:
    """A placeholder with ``text`` in the middle (replaced, annotation included, by the first rows)."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(color="#666"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return viz.style.style_plotly(fig, None, height=200)
