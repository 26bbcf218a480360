"""The ``spanmeter`` sub-commands, one module per group; :mod:`spanmeter.cli` assembles them into one tree.

Each module has ``register(sub)``, which adds its parsers to the root's sub-parsers, every leaf with
``set_defaults(handler=…)``, and the shared flags through ``parents=`` (:mod:`._shared`). Command modules
import only :mod:`._shared` from here, and everything else lazily inside their handlers, so
``spanmeter --help`` imports no database driver, gRPC or OpenTelemetry.

| module | commands |
|---|---|
| :mod:`.serve` | ``serve``, ``demo``, ``auth`` |
| :mod:`.db` | ``db upgrade | url | stop | partitions | archive | restore`` |
| :mod:`.usage` | ``usage``, ``ingest``, ``dead-letter`` |
| :mod:`.billing` | ``subscription``, ``rollups``, ``ledger adjust``, ``invoice``, ``reconcile``, ``export`` |
| :mod:`.ops` | ``alerts render``, ``dashboards render`` |
"""
