"""The ``msam-lab`` command line: every argparse line of the project (``msam-lab --help``)."""

from msam_lab.cli.commands import main

__all__ = ["main"]
