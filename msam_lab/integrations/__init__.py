"""msam_lab inside other trainers (docs/integrations.md): ``msam_lab.integrations.lightning`` for PyTorch
Lightning (the optional extra ``[lightning]``). Accelerate needs no adapter: ``msam_lab.MSAM`` goes through
``accelerator.prepare`` as it is. Nothing here is imported by ``import msam_lab``."""
