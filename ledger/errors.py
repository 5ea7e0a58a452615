"""Errors an operator can act on, each of one kind with its own exit code.

Every refusal is a :class:`LedgerError`; nothing was written when one is raised. Interfaces
print it as one line: the ``corrections`` command turns it into a Django ``CommandError``
carrying :attr:`LedgerError.exit_code`, so ``call_command`` callers (a Celery task, a host's
test) catch it as an ordinary exception. The table of codes is in ``docs/cli.md``.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """The exit codes of ``./manage.py corrections``, one per kind of outcome."""

    OK = 0
    #: A check found problems: ``verify``, ``check-export``; ``recompute`` left rows pending.
    FINDINGS = 1
    #: The command line does not parse (argparse): unknown option, missing required option,
    #: a value outside the listed choices, options that exclude each other.
    USAGE = 2
    #: A value that parses but is wrong: malformed or unknown id, bad file, empty reason…
    BAD_INPUT = 3
    #: The batch is not in a state that allows the step (incl. a stale or unapproved plan).
    WRONG_STATE = 4
    #: Compare-and-set failed: entities no longer hold the status the batch expects.
    CONFLICT = 5
    #: Gave up waiting for live traffic to release rows or accrual locks; try again later.
    BUSY = 6
    #: The operator is not an active user with the permission the step needs.
    NOT_ALLOWED = 7


class LedgerError(Exception):
    """A refused request: bad input unless a subclass says otherwise. Nothing was written."""

    kind = "bad_input"
    exit_code = ExitCode.BAD_INPUT


class NotFound(LedgerError):
    """An id (batch, visit, opportunity…) that names nothing: bad input."""


class WrongState(LedgerError):
    kind = "wrong_state"
    exit_code = ExitCode.WRONG_STATE


class StalePlan(WrongState):
    """What a reviewed plan assumed no longer holds (a work paid or ranked back within its
    cap since the plan, say): re-plan. ``conflicts`` names each unit and what changed."""

    def __init__(self, message: str, conflicts: list | None = None) -> None:
        super().__init__(message)
        self.conflicts = conflicts or []


class ConflictError(LedgerError):
    """Compare-and-set failed for some entities; ``conflicts`` lists them one by one."""

    kind = "conflict"
    exit_code = ExitCode.CONFLICT

    def __init__(self, message: str, conflicts: list) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class Busy(LedgerError):
    """Live traffic held what a write needs for longer than it was willing to wait."""

    kind = "busy"
    exit_code = ExitCode.BUSY


class LockBusy(Busy):
    """A lock the projector needs is held by live traffic; it backs off and tries again."""


class LockUnavailable(LockBusy):
    """The accrual lock's backend (the host's Redis) cannot be reached or timed out.

    Transient like a busy lock: the write backs off and tries again, and past
    ``LEDGER_RETRY_SECONDS`` gives up with exit 6, nothing written.
    """


class NotAllowed(LedgerError):
    """The named user may not take this step."""

    kind = "not_allowed"
    exit_code = ExitCode.NOT_ALLOWED


#: Every kind of error with its exit code, for the documentation and the JSON error object.
KINDS: dict[str, ExitCode] = {
    "usage": ExitCode.USAGE,
    LedgerError.kind: LedgerError.exit_code,
    WrongState.kind: WrongState.exit_code,
    ConflictError.kind: ConflictError.exit_code,
    Busy.kind: Busy.exit_code,
    NotAllowed.kind: NotAllowed.exit_code,
    "findings": ExitCode.FINDINGS,
}
