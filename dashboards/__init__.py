"""Grafana dashboards for spanmeter, generated from code; the JSON in ``json/`` is committed for provisioning.

Three dashboards, tagged ``spanmeter`` and linked to each other, in UTC, with stable uids (alerts link to
``<grafana>/d/<uid>``, so the uids are a contract):

| uid | title | reads |
|---|---|---|
| ``spanmeter-pipeline`` | Metering pipeline (on call) | Prometheus: ``spanmeter_*`` from ``spanmeter serve`` |
| ``spanmeter-slos`` | SLOs and error budgets | Prometheus: the ``slo:*`` recording rules |
| ``spanmeter-billing`` | Usage and billing | PostgreSQL, as the SELECT-only role ``spanmeter_grafana`` |

Each module's docstring (``pipeline``, ``slos``, ``billing``) says what its panels show and what to do
when a value is bad; every panel's description says the same in Grafana.

**Change a dashboard**: edit its module (panels are built with the small helpers in ``builder``), then
regenerate and commit the JSON::

    spanmeter dashboards render          # or: python -m spanmeter.dashboards
    python -m spanmeter.dashboards --check   # exit 1, listing the files that differ

``tests/test_dashboards.py`` fails while the committed JSON differs from the code, checks the structure
(ids, layout, datasources, variables, units) and runs every SQL panel against a migrated ledger as
``spanmeter_grafana``.

**Provision**: ``provisioning/datasources/spanmeter.yaml`` declares the Prometheus (uid ``prometheus``,
``$PROMETHEUS_URL``) and PostgreSQL (uid ``spanmeter-ledger``, user ``spanmeter_grafana``, password
``$GRAFANA_DB_PASSWORD``) datasources; ``provisioning/dashboards/spanmeter.yaml`` loads ``json/`` into the
folder "spanmeter". ``docker-compose.yml`` mounts both and sets the role's password.

**Check the queries elsewhere**: ``prometheus_queries(model)`` gives every PromQL expression ready for a
real Prometheus (Grafana variables substituted: ``$__rate_interval`` → ``1m`` and so on, see ``queries``);
``sql_queries(model)`` every SQL query, and ``expand_sql_macros(sql, start, end, {"account": "*"})``
the SQL Grafana would send.

    >>> from spanmeter.dashboards import DASHBOARD_UIDS, build_all, prometheus_queries
    >>> sorted(build_all())
    ['spanmeter-billing.json', 'spanmeter-pipeline.json', 'spanmeter-slos.json']
    >>> model = build_all()["spanmeter-pipeline.json"]
    >>> model["uid"] == DASHBOARD_UIDS["pipeline"]
    True
    >>> prometheus_queries(model)[1]
    ('Since last ledger commit (worst instance)', 'max(time() - spanmeter_ledger_last_commit_timestamp_seconds{job="spanmeter"})')
"""

from typing import Any

from .contract import DASHBOARD_UIDS, JSON_DIR
from .queries import MacroError, expand_sql_macros, prometheus_queries, sql_queries

_RENDERING = ("build_all", "differences", "write_all")  # need the Grafana Foundation SDK (dashboards extra)


def __getattr__(name: str) -> Any:
    if name in _RENDERING:
        from . import render

        return getattr(render, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DASHBOARD_UIDS",
    "JSON_DIR",
    "MacroError",
    "build_all",
    "differences",
    "expand_sql_macros",
    "prometheus_queries",
    "sql_queries",
    "write_all",
]
