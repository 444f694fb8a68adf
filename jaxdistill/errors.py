"""User-facing errors: each one names the problem and the fix in a single line.

The CLI prints a `DistillError` as one line and exits 2; every other exception is a bug and
keeps its traceback.
"""


class DistillError(Exception):
    """Bad input or a run that cannot continue, explained for the person who started it."""


class NonFiniteLossError(DistillError):
    """The loss became NaN or Inf; carries the step so scripts can react."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step
