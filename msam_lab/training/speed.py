"""Speed knobs that leave the numbers alone (to a stated tolerance): channels-last and torch.compile.

Both act on the model in place, so its ``state_dict`` keys, checkpoints and resume points are
the same as without them (``nn.Module.compile`` keeps the module; ``torch.compile(module)``
would wrap it and prefix every key with ``_orig_mod.``).
"""

from __future__ import annotations

import torch
from torch import nn


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D (convolution) weights channels-last; convolutions then run NHWC, the format
    cuDNN and oneDNN are fastest in. Other parameters are untouched."""
    return model.to(memory_format=torch.channels_last)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` each encoder and the fusion in place (``dynamic``: M-SAM's coalition
    passes and a short last batch change the batch size, which would otherwise recompile)."""
    encoders = getattr(model, "encoders", None)
    for part in [*encoders.values(), model.fusion] if encoders is not None else [model]:
        part.compile(dynamic=True)
    return model
