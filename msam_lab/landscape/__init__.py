"""Loss landscapes (Li et al., NeurIPS 2018) and sharpness of multimodal models.

    from msam_lab.landscape import random_directions, compute_surface, grid
    d = random_directions(model, n=2, seed=0)                 # filter-normalised, seeded per name
    s = compute_surface(model, data.test, d, [grid(21), grid(21)], path="out/surf")
    s["loss"], s["loss_only_audio"], s["acc_without_image"]   # one pass per point gives them all

Modules: ``state`` (leave-no-trace context manager), ``directions``,
``surface`` (evaluation, ``Surface``, resume), ``parallel`` (workers),
``sharpness``, ``runs`` (run-level API and files), ``cli``.
See docs/landscapes.md.
"""
from msam_lab.landscape.directions import PCADirections, between, filter_normalize, orthogonalize, pca_directions, project, random_direction, random_directions, scope_parameters
from msam_lab.landscape.evaluation import ForwardEvaluation
from msam_lab.landscape.parallel import WorkerPool
from msam_lab.landscape.for_run import landscape_for_run, list_landscapes, load_landscape, sharpness_for_run
from msam_lab.landscape.sharpness import epsilon_sharpness, hutchinson_trace, sharpness, sharpness_table, top_eigenvalues
from msam_lab.landscape.state import preserved
from msam_lab.landscape.points import PointEvaluator, eval_subset, evaluate_points, grid, metric_names
from msam_lab.landscape.surface import compute_surface
from msam_lab.runs.surfaces import Surface, generalization_gap

__all__ = [
    "ForwardEvaluation", "PCADirections", "between", "filter_normalize", "orthogonalize", "pca_directions", "project",
    "random_direction", "random_directions", "scope_parameters",
    "WorkerPool", "landscape_for_run", "list_landscapes", "load_landscape", "sharpness_for_run",
    "epsilon_sharpness", "hutchinson_trace", "sharpness", "sharpness_table", "top_eigenvalues",
    "preserved", "PointEvaluator", "Surface", "compute_surface", "eval_subset", "evaluate_points",
    "generalization_gap", "grid", "metric_names",
]
