"""The docpipe Celery app. The first line is the whole spanmeter set-up for the workers."""

import os

from celery import Celery

import spanmeter.instrumentation.auto  # noqa: F401  (tracing in every worker process, flush on shutdown)

from . import broker  # noqa: F401  (registers the docpipe-sqla transport: a broker on PostgreSQL)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "spanmeter.demo.settings")

app = Celery("docpipe", include=["spanmeter.demo.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
