"""Subcommands of ``./manage.py corrections``.

Each module registers its subcommands with :func:`register`-style ``add_parsers(subparsers)``
functions; a handler takes the parsed options and a :class:`~ledger.cli.output.Output` and
returns an exit code. Handlers only parse, call services or selectors, and print.
"""
