"""``python -m msam_lab ...``: the ``msam-lab`` command line."""
import sys

from .cli import main

sys.exit(main())
