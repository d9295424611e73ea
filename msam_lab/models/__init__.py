"""Multimodal models: per-modality encoders, a fusion module and a head (multimodal.py), the paper's
encoders (paper_encoders.py) and evaluation on coalitions of modalities (coalitions.py)."""

from msam_lab.models.multimodal import (
    ConcatFusion,
    EarlyFusion,
    MultimodalModel,
    SumFusion,
    build_model,
    encoder_names,
    eval_mode,
    register_encoder,
    unregister_encoder,
)

__all__ = [
    "ConcatFusion",
    "EarlyFusion",
    "MultimodalModel",
    "SumFusion",
    "build_model",
    "encoder_names",
    "eval_mode",
    "register_encoder",
    "unregister_encoder",
]
