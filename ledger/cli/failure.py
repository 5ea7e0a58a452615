"""How the ``corrections`` command fails: a ``CommandError`` with the exit code of its kind.

A :class:`~ledger.errors.LedgerError` becomes a :class:`CorrectionsError` — a Django
``CommandError`` whose ``returncode`` is the error's exit code and whose ``kind`` names it — so
``call_command`` callers catch an ordinary exception, and the command line prints one line
(``corrections: …``) and exits with that code. With ``--json`` the command also prints one
:class:`~ledger.schema.ErrorReport` object on stdout.
"""

from __future__ import annotations

from django.core.management.base import CommandError

from ledger.cli.output import clip, printable
from ledger.errors import ConflictError, ExitCode, LedgerError, StalePlan
from ledger.schema import Conflict, ErrorReport

MAX_MESSAGE = 1000


class CorrectionsError(CommandError):
    """A refused ``corrections`` command. ``kind`` and ``returncode`` follow ``docs/cli.md``;
    ``error`` is the :class:`~ledger.errors.LedgerError` behind it, when there is one."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        returncode: int,
        error: LedgerError | None = None,
        details: list[str] | None = None,
    ) -> None:
        self.headline = message
        self.details = details or []
        text = "\n".join([message, *self.details])
        super().__init__(text, returncode=int(returncode))
        self.kind = kind
        self.error = error

    def report(self) -> ErrorReport:
        conflicts = getattr(self.error, "conflicts", None) or []
        return ErrorReport(
            error=self.kind,
            exit_code=self.returncode,
            message=self.headline,
            conflicts=[c for c in conflicts if isinstance(c, Conflict)],
        )


class UsageError(CorrectionsError):
    """The command line does not parse (argparse's verdict)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message), kind="usage", returncode=ExitCode.USAGE)


class Findings(Exception):
    """A handler printed its report and found problems (verify, check-export): exit 1."""


def one_line(message: str) -> str:
    return clip(printable(message), MAX_MESSAGE)


def from_ledger_error(error: LedgerError) -> CorrectionsError:
    details: list[str] = []
    message = one_line(str(error))
    if isinstance(error, ConflictError | StalePlan) and error.conflicts:
        from ledger.cli.operate import describe_conflict

        message += "; nothing was written:"
        details = ["  " + printable(describe_conflict(c)) for c in error.conflicts]
        details.append("Re-plan, or pass --skip-conflicts to leave these units alone.")
    return CorrectionsError(
        message, kind=error.kind, returncode=error.exit_code, error=error, details=details
    )


def from_findings(findings: Findings) -> CorrectionsError:
    return CorrectionsError(one_line(str(findings)), kind="findings", returncode=ExitCode.FINDINGS)


def as_corrections_error(error: CommandError) -> CorrectionsError:
    """Any ``CommandError`` (Django's own, e.g. system checks) in the command's terms."""
    if isinstance(error, CorrectionsError):
        return error
    return CorrectionsError(
        one_line(str(error)), kind="error", returncode=getattr(error, "returncode", 1)
    )
