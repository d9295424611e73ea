"""Unimodal reference: the same network trained on one modality alone (``--set modality=NAME``).

Every other modality is zeroed at the input, in training AND in evaluation. Instead of a
hook in the trainer, the model itself is made blind to them: the first layer that
touches each other modality's input (the first Linear/Conv of its encoder) gets its
weight set to zero and frozen (``requires_grad=False``, so neither the gradient nor
weight decay ever moves it). A zero weight maps any input to what an all-zero input
gives (its bias), so the encoder's output is the "absent" feature for every sample,
exactly as zeroing the input would make it, and checkpoints reload as the same unimodal
model. ``__init__`` checks this on random inputs; for an encoder whose first layer is
not of that kind it falls back to a forward pre-hook that zeroes the input (that hook
lives only in this process).

Consequences: the fused prediction equals the prediction with only ``modality``
present, so the trainer's ``test_acc`` IS the unimodal model's accuracy (and equals
``test_acc_only_<modality>``); the other modalities are null players, so their Shapley
values are exactly 0 (``modality`` is dominant whenever its own value is positive). The update is the joint one
(cross-entropy of the fused output, base optimizer); the other encoders' later layers
and heads still receive gradient, as constant bias-like paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from msam_lab.config import ConfigError
from msam_lab.methods.base import Method
from msam_lab.methods.joint import Joint
from msam_lab.methods.options import MethodOptions

FIRST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _first_layer(encoder: nn.Module):
    return next((m for m in encoder.modules() if isinstance(m, FIRST_LAYERS)), None)


@torch.no_grad()
def _blind(encoder: nn.Module, shape, device) -> bool:
    """Zero and freeze the first layer's weight; True if the output no longer depends on the input."""
    layer = _first_layer(encoder)
    if layer is None:
        return False
    layer.weight.zero_()
    layer.weight.requires_grad_(False)
    was = encoder.training
    encoder.eval()
    try:
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn((4, *shape), generator=g).to(device)
        return torch.equal(encoder(x), encoder(torch.zeros_like(x)))
    finally:
        encoder.train(was)


@dataclass
class UnimodalOptions(MethodOptions):
    modality: str = ""  # the one modality trained


def _zero_input_hook(module, args):
    return (torch.zeros_like(args[0]),) + tuple(args[1:])


class Unimodal(Method):
    name = "unimodal"
    OPTIONS = UnimodalOptions

    def __init__(self, model, config):
        super().__init__(model, config)
        self.options = UnimodalOptions.of(config)
        device = next(model.parameters()).device
        self.hooked: list[str] = []
        for name in model.modalities:
            if name == self.options.modality:
                continue
            encoder = model.encoders[name]
            if not _blind(encoder, model.input_shapes[name], device):
                encoder.register_forward_pre_hook(_zero_input_hook)
                self.hooked.append(name)

    @classmethod
    def validate_config(cls, config) -> None:
        if not UnimodalOptions.of(config).modality:
            raise ConfigError("method unimodal needs the modality to train: --set modality=NAME")

    @classmethod
    def validate_modalities(cls, config, modalities) -> None:
        modality = UnimodalOptions.of(config).modality
        if modality not in modalities:
            raise ConfigError(
                f"modality {modality!r} is not in this dataset; "
                f"choose one of: {', '.join(modalities)} (--set modality=NAME)"
            )

    step = Joint.step  # the update is joint training's; only the other encoders are blinded
