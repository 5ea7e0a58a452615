"""The standalone project's Celery app, made as the host makes its own (``config/celery_app.py``).

It reads the ``CELERY_*`` settings and discovers the ``tasks.py`` of every installed app — the
ledger's :mod:`ledger.tasks` among them. The broker is ``CELERY_BROKER_URL`` (``make worker``
picks one); without it the ledger recomputes in process and nothing is queued.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "commcare_connect.settings")

app = Celery("commcare_connect")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
