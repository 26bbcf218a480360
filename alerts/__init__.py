"""The operations kit's alerting half: SLOs as code, burn-rate and pipeline alerts, a runbook per alert.

What is here (the package is ``spanmeter.alerts``; the folder is ``alerts/``):

- ``slos.yaml``: the SLO spec. The pipeline's own SLOs (ingest availability: Export calls without a
  server-side error; freshness: usage in the ledger within 60 s of span end) and an example for an
  instrumented service (the demo's ``docpipe-web``: availability and latency, from the request SLIs
  ``spanmeter_service_requests_total`` and ``spanmeter_service_request_duration_seconds`` that the
  collector derives from the spans it already receives). Add your services' SLOs here, or in your own
  file rendered with ``--spec``.
- :mod:`.slo`: spec → recording rules (numerators and denominators per window, burn rates, budget
  remaining) and the multi-window multi-burn-rate family ``SpanmeterErrorBudgetBurn``.
- :mod:`.catalog`: the hand-written alerts (ledger stalled, lag, write errors, rejected and unattributed
  spans, unauthorized producers, duplicate rate, collector down, reconciliation delta, stale billing
  metrics, account quota 75 % and 100 %).
- :mod:`.render`: writes ``rules/spanmeter-slos.rules.yaml`` and ``rules/spanmeter-alerts.rules.yaml``
  (generated, committed; a test fails when they are stale) in the ``production`` or ``test`` profile.
- ``runbooks/<AlertName>.md``: Meaning, Impact, Diagnosis, Mitigation, for every alert.
- ``tests/*.test.yaml``: ``promtool test rules`` cases, one that fires and one that stays quiet per alert.

Use::

    spanmeter alerts render            # after editing slos.yaml or catalog.py; commit the result
    spanmeter alerts render --check    # exit 1 if the committed rules are stale
    promtool check rules alerts/rules/*.yaml
    promtool test rules alerts/tests/*.test.yaml

Prometheus loads ``alerts/rules/*.yaml`` (``deploy/prometheus.yml``; compose mounts the folder).
"""

from .catalog import alert_names
from .render import PROFILES, differences, write_all
from .slo import SLO, Profile, SLOSpecError, load_spec

__all__ = [
    "PROFILES",
    "SLO",
    "Profile",
    "SLOSpecError",
    "alert_names",
    "differences",
    "load_spec",
    "write_all",
]
