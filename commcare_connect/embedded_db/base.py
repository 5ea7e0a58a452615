"""A PostgreSQL backend that starts the embedded server on the first connection.

Everything else is Django's own PostgreSQL backend; only the connection parameters change:
the host becomes the embedded server's socket folder, so no TCP port is ever opened. The
client (``manage.py dbshell``) runs the wheel's own ``psql`` against that socket.
"""

from django.db.backends.postgresql import base as postgresql

from . import socket_dir
from .client import DatabaseClient


class DatabaseWrapper(postgresql.DatabaseWrapper):
    client_class = DatabaseClient

    def get_connection_params(self):
        params = super().get_connection_params()
        params["host"] = socket_dir()
        params.pop("port", None)
        return params
