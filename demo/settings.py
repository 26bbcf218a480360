"""Django settings of the docpipe demo. The first line is the whole spanmeter set-up for the web tier."""

import os

import spanmeter.instrumentation.auto  # noqa: F401  (tracing, exporter, attribution middleware)

SECRET_KEY = os.environ.get("DOCPIPE_SECRET_KEY", "docpipe-demo-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "spanmeter.demo.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict] = {}  # the demo keeps no state of its own: the ledger is spanmeter's
USE_TZ = True
TIME_ZONE = "UTC"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DOCPIPE_LOG_LEVEL", "WARNING")},
}

# Celery reads the CELERY_* settings (see spanmeter.demo.celery_app).
CELERY_BROKER_URL = os.environ.get("DOCPIPE_BROKER_URL", "docpipe-sqla+sqlite:///docpipe-broker.sqlite")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("DOCPIPE_QUEUE", "docpipe")
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
