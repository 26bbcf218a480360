"""The metering pipeline dashboard (uid ``spanmeter-pipeline``), for whoever is on call for spanmeter.

Read it top to bottom:

1. **Is it up and committing?** ``up``, seconds since the last ledger commit, the oldest uncommitted
   request's age and the pending requests. A stall is pending > 0 with a growing oldest age; an idle
   pipeline is pending = 0 (the time since the last commit then grows harmlessly).
2. **Ingest.** Spans received and usage rows billed per meter, Export responses by gRPC code, rejects by
   reason, unattributed spans, duplicates (retries, replays) and their ratio, throttled calls.
3. **Ledger.** Group-commit latency p50/p99, write errors, pipeline lag p50/p99 (commit time minus span
   end), and the stall view per instance.
4. **Billing state.** Age of the billing metrics snapshot (quota gauges, ``account_month_to_date``) and the
   reconciliation delta.
5. **Instrumented services.** The request SLIs spanmeter derives from the services' entry spans:
   request rate by service, operation and outcome, error ratio, latency p50/p99.

Variables: ``datasource`` (Prometheus), ``job`` (the scrape job of ``spanmeter serve``, default
``spanmeter``) and ``service`` (instrumented services, multi-select, All by default).
"""

from __future__ import annotations

from . import builder as b

__all__ = ["pipeline"]

JOB = 'job="$job"'


def _rate(metric: str, matchers: str = "", by: str = "") -> str:
    selector = f"{metric}{{{JOB}{', ' + matchers if matchers else ''}}}"
    grouping = f"sum by ({by}) " if by else "sum"
    return f"{grouping}(rate({selector}[$__rate_interval]))"


def _quantile(q: str, metric: str, by: str = "", matchers: str = "") -> str:
    selector = f"{metric}_bucket{{{JOB}{', ' + matchers if matchers else ''}}}"
    return f"histogram_quantile({q}, sum by ({by + ', ' if by else ''}le) (rate({selector}[$__rate_interval])))"


def _status_row() -> tuple:
    return b.row(
        "Is it up and committing?",
        b.stat(
            "spanmeter instances up",
            "Instances of `spanmeter serve` Prometheus scrapes successfully. 0 (red): nothing meters usage; "
            "producers' OTel Collectors queue on disk meanwhile. Check the process, its logs and `/healthz`; "
            "`/readyz` says whether the database and schema are ready.",
            [b.prom(f"sum(up{{{JOB}}})", "up")],
            unit="none",
            steps=b.thresholds(("red", None), ("green", 1)),
        ),
        b.stat(
            "Since last ledger commit (worst instance)",
            "Seconds since an instance last committed usage rows. Growing while *pending requests* is above 0 "
            "means the ledger is stalled: check ledger write errors and PostgreSQL (locks, disk, connections). "
            "Growing with 0 pending just means no traffic. Before the first commit it counts from 1970.",
            [b.prom(f"max(time() - spanmeter_ledger_last_commit_timestamp_seconds{{{JOB}}})", "age")],
            unit="s",
            steps=b.thresholds(("green", None), ("orange", 60), ("red", 300)),
        ),
        b.stat(
            "Oldest pending request",
            "Age of the oldest Export request whose usage rows are not committed yet (0 when none). Above a "
            "few seconds: the ledger writers cannot keep up or PostgreSQL is slow; see ledger write latency "
            "and errors below. Producers retry calls that time out, so nothing is lost, but usage is late.",
            [b.prom(f"max(spanmeter_oldest_pending_span_age_seconds{{{JOB}}})", "age")],
            unit="s",
            steps=b.thresholds(("green", None), ("orange", 10), ("red", 60)),
        ),
        b.stat(
            "Pending Export requests",
            "Export requests waiting for their commit, all instances. Persistently high with a flat billed "
            "rate: a stall (see the stall view). Briefly high under bursts is normal.",
            [b.prom(f"sum(spanmeter_ledger_pending_requests{{{JOB}}})", "pending")],
            unit="none",
            steps=b.thresholds(("green", None), ("orange", 50), ("red", 200)),
        ),
        b.stat(
            "Billing metrics age",
            "Seconds since `spanmeter serve` last refreshed the billing metrics and the `account_month_to_date` "
            "table (every 60 s by default). Old: the refresh fails (see `spanmeter_billing_metrics_refresh_errors_total` "
            "and the serve logs); quota alerts and the month-to-date panels are stale meanwhile.",
            [b.prom(f"max(time() - spanmeter_billing_metrics_refresh_timestamp_seconds{{{JOB}}})", "age")],
            unit="s",
            steps=b.thresholds(("green", None), ("orange", 300), ("red", 900)),
        ),
        b.stat(
            "Reconciliation delta",
            "Delta of the latest `spanmeter reconcile` run: rollups vs raw ledger, invoices vs ledger, unrated "
            "usage. Not 0: read the run's details (Usage and billing dashboard, reconciliation runs) and fix "
            "with `spanmeter rollups rebuild`, a subscription, or a correction. Empty: reconcile never ran.",
            [b.prom(f"max(spanmeter_reconciliation_delta{{{JOB}}})", "delta")],
            unit="none",
            steps=b.thresholds(("green", None), ("red", 0.000001)),
        ),
    )


def _ingest_row() -> tuple:
    return b.row(
        "Ingest",
        b.timeseries(
            "Spans received and usage rows billed",
            "Spans in parsed Export requests, and usage rows newly committed per meter. Received drops to 0 "
            "while producers run: check the OTel Collector exporters and Export responses. Billed flat while "
            "received is not: spans are rejected, unattributed, duplicates or not billable (see below).",
            [
                b.prom(_rate("spanmeter_spans_received_total"), "received"),
                b.prom(_rate("spanmeter_spans_billed_total", by="meter"), "billed {{meter}}"),
            ],
            unit="cps",
        ),
        b.timeseries(
            "Export responses by gRPC code",
            "Export calls answered, by status. UNAVAILABLE: database down or in-flight bounds reached "
            "(clients retry). INVALID_ARGUMENT / RESOURCE_EXHAUSTED: malformed or oversize requests (not "
            "retried: fix the producer). UNAUTHENTICATED: a producer's token is wrong or was removed.",
            [b.prom(_rate("spanmeter_export_requests_total", by="grpc_code"), "{{grpc_code}}")],
            unit="reqps",
            stacked=True,
        ),
        b.timeseries(
            "Rejected spans by reason",
            "Billable spans that failed validation, kept in `rejected_spans` with the whole span. Inspect with "
            "`spanmeter dead-letter list` / `show`, fix the producer, then `spanmeter dead-letter replay` to bill "
            "them exactly once.",
            [b.prom(_rate("spanmeter_spans_rejected_total", by="reason"), "{{reason}}")],
            unit="cps",
            stacked=True,
        ),
        b.timeseries(
            "Unattributed spans",
            "Spans of count-only meters without an account_id: counted here, not stored, not billed. Rising: "
            "a service lost its attribution (baggage not set after authentication, or a new entry point).",
            [b.prom(_rate("spanmeter_spans_unattributed_total", by="meter"), "{{meter}}")],
            unit="cps",
            stacked=True,
        ),
        b.timeseries(
            "Duplicate usage rows",
            "Usage rows already in the ledger (producer retries, Collector queue replays); never billed twice. "
            "A burst after an outage is expected. A steady share means a producer re-sends acknowledged data.",
            [b.prom(_rate("spanmeter_usage_events_duplicate_total", by="meter"), "{{meter}}")],
            unit="cps",
            stacked=True,
        ),
        b.timeseries(
            "Duplicate ratio",
            "Duplicates / (duplicates + newly billed rows). Above a few percent for long: look for a producer "
            "or Collector retrying acknowledged requests (timeouts shorter than the commit latency).",
            [
                b.prom(
                    f"sum(rate(spanmeter_usage_events_duplicate_total{{{JOB}}}[$__rate_interval])) / "
                    f"(sum(rate(spanmeter_usage_events_duplicate_total{{{JOB}}}[$__rate_interval])) + "
                    f"sum(rate(spanmeter_spans_billed_total{{{JOB}}}[$__rate_interval])))",
                    "duplicates",
                )
            ],
            unit="percentunit",
            maximum=1,
            steps=b.thresholds(("green", None), ("orange", 0.05)),
            threshold_style="dashed",
        ),
        b.timeseries(
            "Throttled Export calls",
            "Calls answered UNAVAILABLE because an in-flight bound (`requests`, `spans`) was reached; "
            "clients retry. Sustained: add instances or raise the bounds if PostgreSQL has headroom.",
            [b.prom(_rate("spanmeter_export_throttled_total", by="limit"), "{{limit}}")],
            unit="reqps",
            stacked=True,
        ),
    )


def _ledger_row() -> tuple:
    write = "spanmeter_ledger_write_duration_seconds"
    lag = "spanmeter_pipeline_lag_seconds"
    return b.row(
        "Ledger",
        b.timeseries(
            "Ledger write latency",
            "Duration of one group commit (stage, insert, commit). p99 rising toward the producers' export "
            "timeout causes retries and duplicates: check PostgreSQL load, locks and disk latency.",
            [b.prom(_quantile("0.5", write), "p50"), b.prom(_quantile("0.99", write), "p99")],
            unit="s",
            width=8,
        ),
        b.timeseries(
            "Ledger write errors",
            "Failed group commits by kind (`database`, `timeout`). Any: the affected Export calls were answered "
            "UNAVAILABLE and will be retried; persistent errors stall the pipeline. Check the database and logs.",
            [b.prom(_rate("spanmeter_ledger_write_errors_total", by="kind"), "{{kind}}")],
            unit="ops",
            width=8,
            stacked=True,
        ),
        b.timeseries(
            "Pipeline lag",
            "Commit time minus span end, per committed row: how late usage reaches the ledger. High p99 with "
            "fast writes: producers or their Collector queue deliver late (outage backlog, batching delays).",
            [b.prom(_quantile("0.5", lag), "p50"), b.prom(_quantile("0.99", lag), "p99")],
            unit="s",
            width=8,
        ),
        b.timeseries(
            "Stall view",
            "Per instance: seconds since the last commit, age of the oldest pending request (left axis) and "
            "pending requests (right axis). A stall: pending > 0 and both ages climbing together. Check ledger "
            "write errors, then PostgreSQL (`pg_stat_activity` waits).",
            [
                b.prom(
                    f"time() - spanmeter_ledger_last_commit_timestamp_seconds{{{JOB}}}", "since commit {{instance}}"
                ),
                b.prom(f"spanmeter_oldest_pending_span_age_seconds{{{JOB}}}", "oldest pending {{instance}}"),
                b.prom(f"spanmeter_ledger_pending_requests{{{JOB}}}", "pending requests {{instance}}"),
            ],
            unit="s",
            width=24,
            overrides=[b.override("byRegexp", "pending requests.*", unit="none", custom__axisPlacement="right")],
        ),
    )


def _billing_state_row() -> tuple:
    return b.row(
        "Billing state",
        b.timeseries(
            "Billing metrics age over time",
            "Seconds since the last successful billing-metrics refresh (quota gauges and the "
            "`account_month_to_date` table). A saw-tooth up to the refresh interval is normal; a ramp means "
            "refreshes fail: see the errors next to it and the serve logs.",
            [
                b.prom(f"time() - spanmeter_billing_metrics_refresh_timestamp_seconds{{{JOB}}}", "age {{instance}}"),
            ],
            unit="s",
            width=8,
        ),
        b.timeseries(
            "Billing metrics refresh errors",
            "Failed refreshes per second (the previous snapshot is kept). Usually the database: check that "
            "`spanmeter serve` can read the rollups and subscriptions, and the logs for the error.",
            [b.prom(_rate("spanmeter_billing_metrics_refresh_errors_total"), "errors")],
            unit="ops",
            width=8,
        ),
        b.timeseries(
            "Reconciliation delta over time",
            "Delta of the latest `spanmeter reconcile` run over time. It should stay 0; when it is not, open "
            "the run's details on the Usage and billing dashboard.",
            [b.prom(f"max(spanmeter_reconciliation_delta{{{JOB}}})", "delta")],
            unit="none",
            width=8,
            steps=b.thresholds(("green", None), ("red", 0.000001)),
            threshold_style="dashed",
        ),
    )


def _services_row() -> tuple:
    requests = "spanmeter_service_requests_total"
    duration = "spanmeter_service_request_duration_seconds"
    service = 'service=~"$service"'
    return b.row(
        "Instrumented services (request SLIs)",
        b.timeseries(
            "Requests by service, operation and outcome",
            "Entry spans (HTTP requests, Celery task runs) of the instrumented services, from the spans "
            "spanmeter receives. A service vanishing: its spans no longer reach spanmeter (SDK, sidecar). "
            "`_overflow` operations: more distinct operations than SPANMETER_SLI_MAX_SERIES allows.",
            [
                b.prom(
                    _rate(requests, service, by="service, operation, outcome"), "{{service}} {{operation}} {{outcome}}"
                )
            ],
            unit="reqps",
            width=24,
        ),
        b.timeseries(
            "Error ratio by service and operation",
            "Share of requests whose span status is ERROR (5xx responses, tasks that raised). Compare with the "
            "SLO dashboard's burn rates; a spike on one operation points at a deploy or a dependency.",
            [
                b.prom(
                    _rate(requests, service + ', outcome="error"', by="service, operation")
                    + " / "
                    + _rate(requests, service, by="service, operation"),
                    "{{service}} {{operation}}",
                )
            ],
            unit="percentunit",
            maximum=1,
        ),
        b.timeseries(
            "Request latency by service and operation",
            "p50 and p99 of entry-span durations. p99 above a latency SLO's threshold consumes its error "
            "budget (SLO dashboard); check the slow operation's dependencies.",
            [
                b.prom(_quantile("0.5", duration, "service, operation", service), "p50 {{service}} {{operation}}"),
                b.prom(_quantile("0.99", duration, "service, operation", service), "p99 {{service}} {{operation}}"),
            ],
            unit="s",
        ),
    )


def pipeline(uid: str, tags: list[str]) -> dict:
    """The dashboard JSON model."""
    return b.dashboard(
        uid=uid,
        title="spanmeter / Metering pipeline",
        description="On-call view of spanmeter serve: ingest, rejects, duplicates, ledger writes, lag, stalls, "
        "billing metrics freshness and the instrumented services' request SLIs.",
        tags=tags,
        refresh="30s",
        time_from="now-3h",
        variables=[
            b.prometheus_datasource_variable(),
            b.query_variable(
                "job",
                "Job",
                b.PROMETHEUS,
                "label_values(spanmeter_spans_received_total, job)",
                default="spanmeter",
            ),
            b.query_variable(
                "service",
                "Service",
                b.PROMETHEUS,
                'label_values(spanmeter_service_requests_total{job="$job"}, service)',
                multi=True,
                include_all=True,
                all_value=".*",
                refresh=2,
            ),
        ],
        rows=[_status_row(), _ingest_row(), _ledger_row(), _billing_state_row(), _services_row()],
    )
