"""A real training process for the kill/resume tests (tests/training/test_resume.py); not a test module.

    python tests/train_child.py train CONFIG_JSON OUT [PAUSE_AT]   # prints PAUSED at step PAUSE_AT, then waits
    python tests/train_child.py resume OUT

One thread and deterministic algorithms, so a run and its resumed twin compute the same bits.
"""

import json
import signal
import sys
import time

import torch

torch.set_num_threads(1)
# Ctrl-C as a terminal sends it: a child inherits an ignored SIGINT from a parent that ignores it (a test
# session after an in-process Lightning Trainer, a shell's background job), and Python then never raises
# KeyboardInterrupt, so the interrupt tests would wait on a child that cannot be interrupted.
signal.signal(signal.SIGINT, signal.default_int_handler)

import msam_lab  # noqa: E402


def main(argv):
    mode = argv[0]
    if mode == "resume":
        msam_lab.train(resume=argv[1], quiet=True)
        return 0
    config, out = json.loads(argv[1]), argv[2]
    pause_at = int(argv[3]) if len(argv) > 3 else -1

    def on_step(row):
        if row["step"] == pause_at:
            print("PAUSED", flush=True)
            time.sleep(600)  # the parent kills us here, in the middle of an epoch

    msam_lab.train(config, out=out, quiet=True, on_step=on_step)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
