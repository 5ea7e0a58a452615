"""Placeholder until the auditor subcommands land."""


def add_parsers(subparsers) -> None:
    pass
