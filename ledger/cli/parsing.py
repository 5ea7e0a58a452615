"""The argument parser of ``corrections``: one-line usage errors, full help, common flags.

* A usage error (unknown option, missing required option, a value outside its choices) raises
  :class:`~ledger.cli.failure.UsageError`, a ``CommandError`` with exit code 2, whether the
  command runs from the shell or through ``call_command``: one line, not argparse's usage dump.
* Help shows every default, every choice and marks required options.
* ``-v/--verbosity``, ``--no-color``, ``--force-color`` and ``--traceback`` are accepted after
  the subcommand too (``corrections verify -v 0``), not only before it.
"""

from __future__ import annotations

import argparse

from django.core.management.base import CommandParser, DjangoHelpFormatter

from ledger.cli.failure import UsageError


class HelpFormatter(DjangoHelpFormatter):
    """Django's formatter, plus ``(required)``, ``(default: …)`` and the choices of options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if text is argparse.SUPPRESS or not action.option_strings:
            return text
        extra = []
        if (
            action.choices is not None
            and action.metavar is not None
            and not str(action.metavar).startswith("{")
        ):
            extra.append("one of: " + ", ".join(map(str, action.choices)))
        if action.required:
            extra.append("required")
        elif (
            action.default not in (None, False, argparse.SUPPRESS, [], ())
            and "%(default)" not in text
            and not isinstance(action, argparse._StoreConstAction)
        ):
            extra.append("default: %(default)s")
        if extra:
            text = f"{text} ({'; '.join(extra)})" if text else f"({'; '.join(extra)})"
        return text


class CorrectionsParser(CommandParser):
    """Django's ``CommandParser`` whose errors are one-line ``UsageError``s (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse's name
        words = (self.prog or "").split()
        if "corrections" in words:
            words = words[words.index("corrections") + 1 :]
        where = " ".join(words)
        raise UsageError(f"{where + ': ' if where else ''}{message} (see --help)")


COMMON_FLAGS = (
    (
        ("-v", "--verbosity"),
        {
            "type": int,
            "choices": [0, 1, 2, 3],
            "metavar": "{0,1,2,3}",
            "help": "Verbosity level; 0 prints no progress and no notes on stderr.",
        },
    ),
    (("--traceback",), {"action": "store_true", "help": "Raise errors with their traceback."}),
    (("--no-color",), {"action": "store_true", "help": "Don't colorize the command output."}),
    (("--force-color",), {"action": "store_true", "help": "Force colorization."}),
)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Accept Django's output flags after a subcommand; given there, they win; not given, the
    value from before the subcommand (or Django's default) stands."""
    for flags, kwargs in COMMON_FLAGS:
        parser.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)


def leaf_parsers(subparsers: argparse._SubParsersAction):
    """Every parser that takes options: the subcommands and the planners under ``plan``."""
    for parser in dict.fromkeys(subparsers.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                yield from leaf_parsers(action)
        else:
            yield parser
