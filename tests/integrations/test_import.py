"""The integrations stay optional: msam_lab and its optimizer load neither Lightning nor Accelerate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_msam_lab_loads_no_lightning_nor_accelerate():
    code = (
        "import sys, msam_lab, msam_lab.integrations; msam_lab.MSAM; import msam_lab.optim.msam, msam_lab.runs.logger\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'accelerate'))\n"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
