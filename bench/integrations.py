"""Step time of M-SAM through PyTorch Lightning (manual optimization, msam_lab.integrations.lightning.manual_step)
and through HuggingFace Accelerate (accelerator.prepare + step(closure)) against the plain loop
(opt.step(forward, labels)), on the same model and batches, side by side in one process: the median over
--repeats rounds, each round running them in turn (docs/benchmarks.md, "Integrations"). Also plain SGD in a
plain loop and through Lightning: Lightning's own per-step cost, the floor of what it can add to M-SAM.

    .venv/bin/python bench/integrations.py [--steps 40] [--repeats 5] [--batch 128] [--hidden 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from accelerate import Accelerator

import msam_lab
from msam_lab.integrations.lightning import manual_step

MODALITIES = ("image", "audio")
# CPU time of this process by default: on a shared machine wall time measures the neighbours (--clock wall)
CLOCK = time.process_time


class Net(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.enc = torch.nn.ModuleDict(
            {
                m: torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden))
                for m in MODALITIES
            }
        )
        self.head = torch.nn.Linear(2 * hidden, 10)

    def forward(self, image, audio, present=MODALITIES):
        x = {"image": image, "audio": audio}
        return self.head(torch.cat([self.enc[m](x[m]) * (m in present) for m in MODALITIES], 1))


def data(n):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    image = torch.randn(n, 64, generator=g)
    image[:, :10] += torch.nn.functional.one_hot(y, 10)
    return torch.utils.data.TensorDataset(image, torch.randn(n, 64, generator=g), y)


def msam(net, model):
    return msam_lab.MSAM(
        net.parameters(), torch.optim.SGD, modalities=MODALITIES, model=model, rho=0.05, lr=0.05, momentum=0.9
    )


def plain(args, loader):
    torch.manual_seed(0)
    net = Net(args.hidden)
    opt = msam(net, net)
    start = CLOCK()
    for image, audio, y in loader:
        opt.step(lambda present: net(image, audio, present), y)
    return (CLOCK() - start) / len(loader)


class Module(pl.LightningModule):
    def __init__(self, hidden):
        super().__init__()
        torch.manual_seed(0)
        self.net = Net(hidden)
        self.automatic_optimization = False

    def configure_optimizers(self):
        return msam(self, self)

    def training_step(self, batch, batch_idx):
        image, audio, y = batch
        manual_step(self, lambda present: self.net(image, audio, present), y)


def plain_sgd(args, loader):
    """Lightning's own floor, without M-SAM: one SGD step per batch in a plain loop..."""
    torch.manual_seed(0)
    net = Net(args.hidden)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    start = CLOCK()
    for image, audio, y in loader:
        opt.zero_grad()
        F.cross_entropy(net(image, audio), y).backward()
        opt.step()
    return (CLOCK() - start) / len(loader)


class SGDModule(Module):
    """... and the same step through Lightning's manual optimization."""

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def training_step(self, batch, batch_idx):
        image, audio, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(F.cross_entropy(self.net(image, audio), y))
        opt.step()


class EpochClock(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.start = CLOCK()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = CLOCK() - self.start


def lightning(args, loader, module=Module):
    clock = EpochClock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module(args.hidden), loader)
    return clock.seconds / len(loader)


def accelerate(args, loader):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    net = Net(args.hidden)
    opt = msam(net, net)
    model, opt, prepared = accelerator.prepare(net, opt, loader)
    opt.optimizer.model = model
    start = CLOCK()
    for image, audio, y in prepared:
        opt.optimizer.observe(lambda present: model(image, audio, present), y)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(image, audio), y)
            accelerator.backward(loss)
            return loss

        opt.step(closure)
    return (CLOCK() - start) / len(prepared)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    loader = torch.utils.data.DataLoader(data(args.steps * args.batch), batch_size=args.batch, shuffle=False)
    runners = {
        "plain": plain,
        "lightning": lightning,
        "accelerate": accelerate,
        "plain_sgd": plain_sgd,
        "lightning_sgd": lambda args, loader: lightning(args, loader, SGDModule),
    }
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            times[name].append(fn(args, loader))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "median_step_ms": {k: 1e3 * v for k, v in med.items()},
        "ratio_lightning": med["lightning"] / med["plain"],
        "ratio_accelerate": med["accelerate"] / med["plain"],
        # Lightning's own cost per step (plain SGD through it), to compare with what it adds to M-SAM
        "lightning_floor_ms": 1e3 * (med["lightning_sgd"] - med["plain_sgd"]),
        "lightning_msam_overhead_ms": 1e3 * (med["lightning"] - med["plain"]),
        "runs_ms": {k: [round(1e3 * t, 3) for t in v] for k, v in times.items()},
        "args": vars(args),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
