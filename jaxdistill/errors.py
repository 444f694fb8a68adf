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


class Preempted(Exception):
    """A run stopped by SIGTERM after saving its step; the same command resumes it.

    Raised through every caller (the student whose teacher was training, a `reproduce` table), so
    none of them goes on with a partly trained run; the CLI exits with `--preempted_exit_code`.
    """

    def __init__(self, summary: dict):
        super().__init__(f"preempted: {summary['workdir']} saved step {summary['step']}")
        self.summary = summary
