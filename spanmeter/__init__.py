"""spanmeter: billing-grade usage metering from OpenTelemetry spans.

The distribution maps its code folders into this namespace:

- ``spanmeter.collector``: the OTLP/gRPC receiver, span → usage processors and the ledger exporter.
- ``spanmeter.billing``: the append-only Postgres ledger (models, migrations, embedded server) and queries.
- ``spanmeter.instrumentation``: the one-import instrumentation for Django and Celery services.
- ``spanmeter.attributes``: the attribute contract every part agrees on.

Run ``spanmeter --help`` for the command line.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
