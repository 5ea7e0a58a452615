"""``./manage.py corrections …`` — plan, apply, undo and audit status corrections.

This module only wires argparse subcommands to handlers in :mod:`ledger.cli`; a
:class:`~ledger.errors.LedgerError` becomes one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandParser

from ledger.cli import audit, operate
from ledger.cli.output import Output
from ledger.errors import ConflictError, LedgerError


class Command(BaseCommand):
    help = "Plan, apply, undo and audit bulk status corrections."

    def add_arguments(self, parser: CommandParser) -> None:
        subparsers = parser.add_subparsers(dest="subcommand", required=True)
        operate.add_parsers(subparsers)
        audit.add_parsers(subparsers)

    def handle(self, *args, **options) -> None:
        out = Output(self.stdout, self.stderr)
        try:
            code = options["handler"](options, out)
        except ConflictError as error:
            self.stderr.write(f"corrections: {error}; nothing was written:")
            for c in error.conflicts:
                self.stderr.write("  " + operate.describe_conflict(c))
            self.stderr.write("Re-plan, or pass --skip-conflicts to leave these units alone.")
            sys.exit(error.exit_code)
        except LedgerError as error:
            self.stderr.write(f"corrections: {error}")
            sys.exit(error.exit_code)
        if code:
            sys.exit(code)
