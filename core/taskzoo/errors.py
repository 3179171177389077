"""The error type for mistakes a user can fix: the CLI prints its message on one line, exit code 2."""


class UserError(Exception):
    """Bad input, an unknown name, an unreachable backbone: anything the user can fix.

    The message is printed as it is, on one line, with no traceback, so it must name the file,
    column, row or option at fault and what was expected there.
    """


class DataError(UserError):
    """A data file that cannot be used as it is (missing, empty, malformed, wrong columns...)."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM: its folder is marked ``interrupted`` and keeps the
    checkpoint of the step where it stopped; the message says how to go on. ``signum`` is the
    signal that stopped it, when known."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


class ParityError(Exception):
    """An export that does not score what its PyTorch model scores (beyond the tolerance): the
    export is kept, marked not good, and the CLI prints the message on one line with exit code 1."""
