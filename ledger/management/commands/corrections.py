"""``./manage.py corrections …`` — plan, apply, undo and audit status corrections.

This module wires the subcommands of :mod:`ledger.cli` into one Django command. Failures are
``CommandError``s with the exit code of their kind (``docs/cli.md``): called through
``call_command`` they raise like any exception; from the shell they print one line,
``corrections: …``, and exit with that code (``--traceback`` raises them instead).
"""

from __future__ import annotations

import sys

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, handle_default_options
from django.db import connections

from ledger.cli import audit, operate
from ledger.cli.failure import (
    Findings,
    UsageError,
    as_corrections_error,
    from_findings,
    from_ledger_error,
)
from ledger.cli.output import Output
from ledger.cli.parsing import CorrectionsParser, HelpFormatter, add_common_flags, leaf_parsers
from ledger.errors import LedgerError


class Command(BaseCommand):
    help = (
        "Plan, approve, apply, undo and audit bulk status corrections. "
        "Exit codes: 0 ok, 1 findings, 2 usage, 3 bad input, 4 wrong state, 5 conflict, "
        "6 busy, 7 not allowed (docs/cli.md)."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser) -> None:
        # Django builds a CommandParser; ours differs only in how it reports usage errors
        # (one line, exit code 2, also under call_command), so the class is swapped in place
        # before any subparser is made from it.
        parser.__class__ = CorrectionsParser
        subparsers = parser.add_subparsers(
            dest="subcommand", required=True, metavar="SUBCOMMAND", title="subcommands"
        )
        operate.add_parsers(subparsers)
        audit.add_parsers(subparsers)
        for sub in leaf_parsers(subparsers):
            add_common_flags(sub)
        _format_help_everywhere(subparsers)

    def handle(self, *args, **options) -> None:
        out = Output(
            self.stdout,
            self.stderr,
            verbosity=options.get("verbosity", 1),
            json=bool(options.get("json")),
            wide=bool(options.get("wide")),
        )
        try:
            options["handler"](options, out)
        except LedgerError as error:
            failure = from_ledger_error(error)
            if out.json_mode:
                out.json(failure.report())
            raise failure from error
        except Findings as findings:
            raise from_findings(findings) from None
        finally:
            out.close()

    def run_from_argv(self, argv) -> None:
        """As Django's, except that failures print as ``corrections: …`` (not with the
        exception's class name) and usage errors take one line and exit 2."""
        self._called_from_command_line = True
        parser = self.create_parser(argv[0], argv[1])
        try:
            options = parser.parse_args(argv[2:])
        except UsageError as error:
            if "--json" in argv[2:]:
                Output(self.stdout, self.stderr).json(error.report())
            self.stderr.write(f"corrections: {error}")
            sys.exit(error.returncode)
        cmd_options = vars(options)
        args = cmd_options.pop("args", ())
        handle_default_options(options)
        try:
            self.execute(*args, **cmd_options)
        except CommandError as error:
            if options.traceback:
                raise
            failure = as_corrections_error(error)
            self.stderr.write(f"corrections: {failure}")
            sys.exit(failure.returncode)
        finally:
            try:
                connections.close_all()
            except ImproperlyConfigured:
                pass


def _format_help_everywhere(subparsers) -> None:
    for parser in dict.fromkeys(subparsers.choices.values()):
        parser.formatter_class = HelpFormatter
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                _format_help_everywhere(action)
