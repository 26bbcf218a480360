"""The collector: OTLP/gRPC receiver → processors (pure metering) → exporters (the ledger).

- :mod:`.receiver`: ``TraceService/Export`` handled as raw bytes; ack only after commit.
- :mod:`.processors`: meter definitions and the span → usage-row rules (no I/O).
- :mod:`.exporters`: the group-committing ledger exporter.
- :mod:`.metrics`: builds the process's Prometheus metrics from :mod:`spanmeter.metrics_catalog`, where every
  ``spanmeter_*`` metric is declared. :mod:`.config`: settings. :mod:`.server`: the process.
"""

from .config import CollectorConfig, ConfigError, load_config

__all__ = ["CollectorConfig", "ConfigError", "load_config"]
