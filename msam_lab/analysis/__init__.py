"""What a run is measured by: accuracy, Shapley shares, τ and switches (metrics.py, forward_eval.py), and
Hessian sharpness per encoder (hessian.py, sharpness_timeline.py)."""
