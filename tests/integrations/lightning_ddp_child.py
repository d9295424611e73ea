"""Run by tests/integrations/test_lightning.py: a 2-process Lightning DDP fit on gloo (Lightning starts the
second process by running this script again); each rank saves what it saw, its dominants and its weights."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.` imports

from tests.integrations.lightning_model import Module, loader, trainer  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    module = Module(automatic=sys.argv[2] == "automatic")
    t = trainer(devices=2, strategy="ddp", max_epochs=1)
    t.fit(module, loader(batch_size=8, n=64))
    weights = {k: v.detach().clone() for k, v in module.net.state_dict().items()}
    torch.save(
        {"seen": module.seen, "dominants": module.dominants, "weights": weights}, out / f"rank{t.global_rank}.pt"
    )
