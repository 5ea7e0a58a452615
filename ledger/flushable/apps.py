from django.apps import AppConfig


class FlushableConfig(AppConfig):
    name = "ledger.flushable"
    label = "ledger_flushable"
    verbose_name = "Correction ledger: flush for test databases"
