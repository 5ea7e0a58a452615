"""Django system checks for the ledger's configuration (``manage.py check``)."""

from __future__ import annotations

from django.core import checks
from django.utils.module_loading import import_string

from ledger import conf


@checks.register()
def check_access_lock(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    path = conf.get("ACCESS_LOCK")
    if not path:
        return [
            checks.Warning(
                "LEDGER_ACCESS_LOCK is not set: a host recompute running during an apply can "
                "write back statuses it read before the flip.",
                hint="Set it to 'ledger.locks.redis_access_lock' in CommCare Connect "
                "(its accrual lock lives in Redis), or to your own implementation.",
                id="ledger.W001",
            )
        ]
    try:
        import_string(path)
    except ImportError as error:
        return [
            checks.Error(
                f"LEDGER_ACCESS_LOCK = {path!r} cannot be imported: {error}",
                id="ledger.E001",
            )
        ]
    return []


@checks.register()
def check_anchor_keys(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from ledger import anchors

    return [
        checks.Error(
            problem,
            hint="Anchors signed with a weak key can be forged by whoever guesses it.",
            id="ledger.E002",
        )
        for problem in anchors.configuration_problems()
    ]


@checks.register()
def check_recompute(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    from ledger.recomputes import MODES

    mode = conf.get("RECOMPUTE")
    if mode not in MODES:
        return [
            checks.Error(
                f"LEDGER_RECOMPUTE = {mode!r}: it is one of {', '.join(map(repr, MODES))}",
                id="ledger.E003",
            )
        ]
    if mode == "celery":
        try:
            import celery  # noqa: F401
        except ImportError:
            return [
                checks.Error(
                    "LEDGER_RECOMPUTE = 'celery' but Celery is not installed",
                    hint="pip install 'commcare-correction-ledger[celery]', or keep 'inline'.",
                    id="ledger.E004",
                )
            ]
    return []
