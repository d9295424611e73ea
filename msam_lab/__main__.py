"""``python -m msam_lab ...``: the ``msam-lab`` command line."""

import sys

from msam_lab.cli.commands import main

sys.exit(main())
