"""msam_lab: study modality imbalance with M-SAM and its baselines.

    import msam_lab
    run = msam_lab.train({"method": "msam", "epochs": 5}, out="runs/try")
    run.epochs[["epoch", "test_acc", "test_acc_image", "test_acc_audio", "tau"]]
"""
from .config import Config, ConfigError
from .datasets import load_dataset
from .forward_eval import evaluate_forward
from .metrics import epoch_row
from .models import build_model
from .msam_optimizer import MSAM, ShapleyRecord, observe
from .plugins import load_plugins, register_dataset, register_encoder, register_method
from .run_logger import RunLogger
from .runs import Run, load_run
from .trainer import train

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "MSAM", "Run", "RunLogger", "ShapleyRecord", "build_model", "epoch_row",
           "evaluate_forward", "load_dataset", "load_plugins", "load_run", "observe", "register_dataset",
           "register_encoder", "register_method", "train"]
