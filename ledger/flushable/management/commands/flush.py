"""Django's ``flush``, able to empty the ledger's tables in test databases only.

Installed only where the settings add ``ledger.flushable`` (test settings). The ledger's tables
refuse TRUNCATE; for a database whose name starts with ``test_`` (Django's test prefix) or that
is listed in ``settings.LEDGER_FLUSHABLE_DATABASES``, this command lifts the TRUNCATE guards —
and nothing else — while it runs. Everywhere else it is Django's flush, refused by the ledger.
"""

from django.core.management.commands import flush
from django.db import connections

from ledger import conf
from ledger.testing import allow_flush


def flushable(database: str) -> bool:
    name = connections[database].settings_dict.get("NAME") or ""
    return name.startswith("test_") or name in conf.get("FLUSHABLE_DATABASES")


class Command(flush.Command):
    def handle(self, **options):
        database = options["database"]
        if flushable(database):
            with allow_flush(database):
                return super().handle(**options)
        return super().handle(**options)
