"""The errors msam_lab raises on purpose. Imports nothing of msam_lab, so every layer can use them.

Each message names the problem and the fix; the command line prints it as one line and exits non-zero.
"""


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says what to change."""


class UsageError(Exception):
    """Bad input on the command line: printed as one line, exit code 2."""


class TrainingError(RuntimeError):
    """Training stopped on its own terms (a non-finite value); the run is kept, marked failed."""
