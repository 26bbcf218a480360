"""One-import instrumentation for Django and Celery services (see issue 3/5; not yet built).

Producers must set the keys in :mod:`spanmeter.attributes` on their spans or resources; until this package
is built, any OpenTelemetry SDK can do that by hand (see the README's "Send it spans").
"""
