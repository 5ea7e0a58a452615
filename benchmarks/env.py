"""Django bootstrap for the benchmark processes, pointed at the benchmark database.

The benchmark never touches the project's own database: the orchestrator creates a dedicated
database on the same server (embedded or ``DATABASE_URL``) and every step process is pointed
at it through :data:`DATABASE_ENV` before Django's connections exist.
"""

from __future__ import annotations

import os

DATABASE_ENV = "LEDGER_BENCH_DATABASE"
DEFAULT_DATABASE = "ledger_bench"


def setup(database: str | None = None) -> None:
    """Configure Django; with ``database`` (or :data:`DATABASE_ENV`) use that database name."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "commcare_connect.settings")
    from django.conf import settings

    name = database or os.environ.get(DATABASE_ENV)
    if name:
        # Connections read settings.DATABASES lazily, on first use: this runs before that.
        settings.DATABASES["default"]["NAME"] = name
    import django

    django.setup()


def server_description() -> dict:
    """Which PostgreSQL server the default connection reaches, and its main settings."""
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version()")
        version = cursor.fetchone()[0]
        found = {}
        for name in ("shared_buffers", "work_mem", "synchronous_commit", "max_wal_size"):
            cursor.execute(f"SHOW {name}")
            found[name] = cursor.fetchone()[0]
    engine = settings.DATABASES["default"]["ENGINE"]
    kind = "embedded" if engine.endswith("embedded_db") else "DATABASE_URL"
    return {"version": version.split(" on ")[0], "kind": kind, "settings": found}
