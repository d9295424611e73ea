"""The rank processes of tests/training/test_distributed.py, started by torchrun; not a test module.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_child.py JOBS_JSON

JOBS_JSON holds a list of jobs, run in order in one process group:

- ``{"kind": "train", "config": {...}, "out": DIR, "die_at": K}``: ``msam_lab.train``; with ``die_at``,
  rank 1 exits abruptly (``os._exit``) after step K, as a crashed or OOM-killed rank would;
- ``{"kind": "resume", "run": DIR}``: ``msam_lab.train(resume=DIR)``;
- ``{"kind": "user_msam", "out": FILE, "variant": V, "steps": K}``: ``msam_lab.MSAM`` in a plain DDP
  loop on ``TinyNet`` (below), each rank on its shard of ``user_batches``; rank 0 saves the final
  weights and the per-step records to FILE;
- ``{"kind": "disagree", "out": FILE}``: ``distributed.check_same`` on a value that differs by rank
  (what ``dist_debug`` checks for the dominant modality); rank 0 writes the error message to FILE.
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)

import msam_lab  # noqa: E402
from msam_lab import distributed  # noqa: E402

MODALITIES = ("image", "audio")


class TinyNet(torch.nn.Module):
    """Two linear encoders and summed linear heads: a user's own model (not msam_lab's)."""

    def __init__(self, dims=(6, 4), hidden=5, classes=3):
        super().__init__()
        self.enc = torch.nn.ModuleDict({m: torch.nn.Linear(d, hidden) for m, d in zip(MODALITIES, dims)})
        self.head = torch.nn.ModuleDict({m: torch.nn.Linear(hidden, classes) for m in MODALITIES})

    def forward(self, image, audio, present=MODALITIES):
        x = {"image": image, "audio": audio}
        return sum(
            self.head[m](torch.tanh(self.enc[m](x[m] if m in present else torch.zeros_like(x[m])))) for m in MODALITIES
        )


def user_model(seed=0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def user_batches(steps, batch=15, seed=1):
    """``steps`` global batches (image, audio, labels), the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        labels = torch.randint(0, 3, (batch,), generator=g)
        image = torch.randn(batch, 6, generator=g) + labels[:, None].float()  # the image is informative
        audio = torch.randn(batch, 4, generator=g) + 0.3 * labels[:, None].float()
        out.append((image, audio, labels))
    return out


USER_OPTIONS = dict(rho=0.1, lr=0.1, momentum=0.9)


def user_msam(job):
    net = user_model()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    parts = {m: list(net.enc[m].parameters()) for m in MODALITIES} if job["variant"] == "params" else None
    opt = msam_lab.MSAM(
        ddp.parameters(),
        torch.optim.SGD,
        modalities=MODALITIES,
        model=ddp,
        variant=job["variant"],
        modality_parameters=parts,
        **USER_OPTIONS,
    )
    records = []
    for image, audio, labels in user_batches(job["steps"]):
        part = distributed.shard_of(len(labels))
        x_i, x_a, y = image[part], audio[part], labels[part]
        rec = opt.step(lambda present: ddp(x_i, x_a, present), y)
        records.append({"dominant": rec.dominant, "shares": rec.shares})
    distributed.check_same(round(distributed.parameter_checksum(net), 10), "the weights after the loop")
    if distributed.is_main():
        torch.save({"model": net.state_dict(), "records": records}, job["out"])


def main(path):
    jobs = json.loads(open(path).read())
    distributed.init_from_env("cpu", timeout_s=60.0)  # train() would join it too; user_msam needs it first
    for job in jobs:
        if job["kind"] == "train":
            die_at = job.get("die_at")

            def on_step(row, die_at=die_at):
                if die_at is not None and distributed.rank() == 1 and row["step"] == die_at:
                    os._exit(3)

            msam_lab.train(job["config"], out=job["out"], quiet=True, on_step=on_step)
        elif job["kind"] == "resume":
            msam_lab.train(resume=job["run"], quiet=True)
        elif job["kind"] == "user_msam":
            user_msam(job)
        elif job["kind"] == "disagree":
            try:
                distributed.check_same(f"m{distributed.rank()}", "the dominant modality")
                message = "no error"
            except distributed.DistributedError as err:
                message = str(err)
            if distributed.is_main():
                open(job["out"], "w").write(message)
        else:
            raise ValueError(f"unknown job kind {job['kind']!r}")
    # both ranks finish their jobs before either tears gloo down: a rank that destroys its process group
    # while the other still uses it can abort the other ("terminate called without an active exception",
    # seen once in a full `make test`)
    torch.distributed.barrier()
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
