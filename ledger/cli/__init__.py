"""Subcommands of ``./manage.py corrections``.

Each module registers its subcommands with ``add_parsers(subparsers)``; a handler takes the
parsed options and a :class:`~ledger.cli.output.Output`, checks every option first
(:mod:`ledger.cli.inputs`), calls services or selectors, and prints. It refuses by raising a
:class:`~ledger.errors.LedgerError` (the command turns it into a ``CommandError`` with the exit
code of its kind, :mod:`ledger.cli.failure`) and reports findings (exit 1) by raising
:class:`~ledger.cli.failure.Findings` after printing its report.
"""
