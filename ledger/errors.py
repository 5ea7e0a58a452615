"""Errors an operator can act on. Interfaces print them as one line and exit non-zero."""


class LedgerError(Exception):
    """A refused request: bad input, wrong state, or a conflict. Nothing was written."""

    exit_code = 2


class NotFound(LedgerError):
    pass


class WrongState(LedgerError):
    pass


class ConflictError(LedgerError):
    """Compare-and-set failed for some entities; ``conflicts`` lists them one by one."""

    exit_code = 3

    def __init__(self, message: str, conflicts: list) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class LockBusy(LedgerError):
    """A lock the projector needs is held by live traffic; it backs off and tries again."""

    exit_code = 4
