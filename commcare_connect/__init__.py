# As in the host: the Celery app is made whenever Django starts, so that the ledger's shared
# tasks are sent through it (its broker, its serializer). Celery is the standalone project's
# dependency, not the ledger's: without it nothing is queued and recomputes run in process.
try:
    from commcare_connect.celery_app import app as celery_app
except ImportError:  # pragma: no cover - celery not installed
    celery_app = None

__all__ = ("celery_app",)
