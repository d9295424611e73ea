"""Loss landscapes (Li et al., NeurIPS 2018) and sharpness of multimodal models.

    from msam_lab.landscape import random_directions, compute_surface, grid
    d = random_directions(model, n=2, seed=0)                 # filter-normalised, seeded per name
    s = compute_surface(model, data.test, d, [grid(21), grid(21)], path="out/surf")
    s["loss"], s["loss_only_audio"], s["acc_without_image"]   # one pass per point gives them all

    opts = LandscapeOptions(dim=1, grid=31)                   # settings of a run's surfaces, checked once
    landscape_for_run("runs/a", opts); landscape_for_run("runs/b", opts, seed=1)

Modules: ``options`` (LandscapeOptions, SharpnessOptions, TimelineOptions, SurfaceOptions),
``state`` (leave-no-trace context manager), ``directions``, ``points``, ``surface`` (evaluation,
resume), ``parallel`` (workers), ``sharpness``, ``for_run`` (a saved run's surfaces and sharpness).
See docs/landscapes.md.
"""

from msam_lab.landscape.directions import (
    PCADirections,
    between,
    filter_normalize,
    orthogonalize,
    pca_directions,
    project,
    random_direction,
    random_directions,
    scope_parameters,
)
from msam_lab.landscape.evaluation import ForwardEvaluation
from msam_lab.landscape.for_run import (
    landscape_for_run,
    list_landscapes,
    load_landscape,
    sharpness_for_run,
    timeline_for_run,
)
from msam_lab.landscape.options import LandscapeOptions, OptionError, SharpnessOptions, SurfaceOptions, TimelineOptions
from msam_lab.landscape.parallel import WorkerPool
from msam_lab.landscape.points import PointEvaluator, eval_subset, evaluate_points, grid, metric_names
from msam_lab.landscape.sharpness import (
    epsilon_sharpness,
    hutchinson_trace,
    sharpness,
    sharpness_table,
    top_eigenvalues,
)
from msam_lab.landscape.state import preserved
from msam_lab.landscape.surface import compute_surface
from msam_lab.runs.surfaces import Surface, generalization_gap

__all__ = [
    "ForwardEvaluation",
    "PCADirections",
    "between",
    "filter_normalize",
    "orthogonalize",
    "pca_directions",
    "project",
    "random_direction",
    "random_directions",
    "scope_parameters",
    "WorkerPool",
    "landscape_for_run",
    "list_landscapes",
    "load_landscape",
    "sharpness_for_run",
    "timeline_for_run",
    "LandscapeOptions",
    "OptionError",
    "SharpnessOptions",
    "SurfaceOptions",
    "TimelineOptions",
    "epsilon_sharpness",
    "hutchinson_trace",
    "sharpness",
    "sharpness_table",
    "top_eigenvalues",
    "preserved",
    "PointEvaluator",
    "Surface",
    "compute_surface",
    "eval_subset",
    "evaluate_points",
    "generalization_gap",
    "grid",
    "metric_names",
]
