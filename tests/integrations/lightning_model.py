"""A small two-modality LightningModule and data for the Lightning tests (importable by the DDP child)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

import msam_lab
from msam_lab.integrations.lightning import manual_step, observe

MODALITIES = ("image", "audio")


class Pairs(torch.utils.data.Dataset):
    """({modality: features}, label, index): the index lets a test rebuild what each rank saw."""

    def __init__(self, n=64, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = {"image": torch.randn(n, 10, generator=g) + self.y[:, None], "audio": torch.randn(n, 6, generator=g)}
        self.x["audio"][:, :3] += 0.5 * self.y[:, None]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {m: v[i] for m, v in self.x.items()}, self.y[i], i


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.ModuleDict({"image": torch.nn.Linear(10, 8), "audio": torch.nn.Linear(6, 8)})
        self.head = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x, present=MODALITIES):
        feats = [self.enc[m](x[m]) if m in present else x[m].new_zeros(len(x[m]), 8) for m in MODALITIES]
        return self.head(torch.cat(feats, 1))


def make_msam(params, model, **kw):
    return msam_lab.MSAM(
        params, torch.optim.SGD, modalities=MODALITIES, model=model, rho=0.1, lr=0.1, momentum=0.9, **kw
    )


class Module(pl.LightningModule):
    def __init__(self, automatic=False, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = Net()
        self.automatic_optimization = automatic
        self.seen: list[list[int]] = []  # batch indices per step (each index once per step)
        self.dominants: list[str] = []

    def forward(self, x, present=MODALITIES):
        return self.net(x, present)

    def configure_optimizers(self):
        return make_msam(self.parameters(), self)

    def on_train_batch_start(self, batch, batch_idx):
        if self.automatic_optimization:
            x, y, idx = batch
            rec = observe(self, lambda present: self(x, present), y)
            self.seen.append(idx.tolist())
            self.dominants.append(rec.dominant)

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        if self.automatic_optimization:
            return F.cross_entropy(self(x), y)  # Lightning runs it at θ and at θ+ε
        rec = manual_step(self, lambda present: self(x, present), y)
        self.seen.append(idx.tolist())
        self.dominants.append(rec.dominant)


def trainer(**kw):
    kw = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kw,
    }
    return pl.Trainer(**kw)


def loader(batch_size=16, n=64):
    return torch.utils.data.DataLoader(Pairs(n), batch_size=batch_size, shuffle=False)
