"""The SLOs and error budgets dashboard (uid ``spanmeter-slos``), from the SLO recording rules only.

Every series carries ``slo`` and ``service``. The rules (``alerts/``) record numerators and denominators
per window (``slo:sli_errors:rate<w>``, ``slo:sli_requests:rate<w>`` for 5m, 30m, 1h, 2h, 6h, 1d, 3d and
the SLO period), the burn rate per window (``slo:burn_rate:rate<w>``: error ratio ÷ error budget) and the
SLO's metadata (``slo:objective:ratio``, ``slo:error_budget:ratio``, ``slo:time_period:days``,
``slo:error_budget_remaining:ratio``). The SLI shown is always 1 − errors / requests of the same window
(a ratio of sums, never an average of ratios).

Panels: an overview table per SLO (objective, SLI over the period, budget remaining, burn rate 1h),
SLI vs objective, budget remaining, then one burn-rate panel per alert window pair with its factor drawn
(multi-window multi-burn-rate, SRE Workbook, factors for a 30-day period): 1h & 5m above 14.4 and 6h & 30m
above 6 page (``severity="critical"``); 1d & 2h above 3 and 3d & 6h above 1 open a ticket (``warning``). Last, ``SpanmeterErrorBudgetBurn`` alerts firing.

Variables: ``datasource`` (Prometheus) and ``slo`` (``label_values(slo:objective:ratio, slo)``,
multi-select, All by default). Shipped SLOs: ``ingest-availability``, ``ingest-freshness`` (service
``spanmeter``), ``docpipe-web-availability``, ``docpipe-web-latency`` (service ``docpipe-web``).
"""

from __future__ import annotations

from . import builder as b

__all__ = ["BURN_RATE_WINDOWS", "slos"]

SLO = 'slo=~"$slo"'
#: (long window, short window, burn-rate factor, severity): both windows above the factor fire the alert
#: (``SpanmeterErrorBudgetBurn``, labels ``long_window``/``short_window``; critical pages, warning tickets).
#: The factors are for a 30-day period; alerts/ scales them for other periods.
BURN_RATE_WINDOWS = (
    ("1h", "5m", 14.4, "critical"),
    ("6h", "30m", 6.0, "critical"),
    ("1d", "2h", 3.0, "warning"),
    ("3d", "6h", 1.0, "warning"),
)
BURN_STEPS = b.thresholds(("green", None), ("yellow", 1), ("orange", 3), ("red", 6), ("dark-red", 14.4))


def _by_slo(expr: str) -> str:
    return f"max by (slo, service) ({expr})"


def sli(window: str) -> str:
    """PromQL: the SLI over ``window`` (``5m`` … ``3d`` or ``period``), 1 − errors / requests."""
    suffix = "rate_period" if window == "period" else f"rate{window}"
    errors = f"sum by (slo, service) (slo:sli_errors:{suffix}{{{SLO}}})"
    requests = f"sum by (slo, service) (slo:sli_requests:{suffix}{{{SLO}}})"
    return f"1 - ({errors} / {requests})"


def _metric(name: str) -> str:
    return _by_slo(f"{name}{{{SLO}}}")


def _overview_row() -> tuple:
    columns = (
        ("A", "Objective", "percentunit"),
        ("B", "SLI over the period", "percentunit"),
        ("C", "Error budget remaining", "percentunit"),
        ("D", "Burn rate (1h)", "none"),
        ("E", "Period (days)", "none"),
    )
    return b.row(
        "Overview",
        b.table(
            "SLOs",
            "One line per SLO, now. SLI below the objective, or budget remaining below 0: the SLO is missed "
            "for this period; freeze risky changes for that service and work the top error sources. Burn "
            "rate above 1 spends the budget faster than the period allows.",
            [
                b.prom(_metric("slo:objective:ratio"), table=True),
                b.prom(sli("period"), table=True),
                b.prom(_metric("slo:error_budget_remaining:ratio"), table=True),
                b.prom(_metric("slo:burn_rate:rate1h"), table=True),
                b.prom(_metric("slo:time_period:days"), table=True),
            ],
            unit="none",
            height=7,
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {f"Value #{ref}": title for ref, title, _ in columns},
                    },
                },
            ],
            overrides=[
                b.override("byName", title, unit=unit, decimals=3 if unit == "percentunit" else 2)
                for _, title, unit in columns
            ],
            sort_by="Error budget remaining",
            descending=False,
        ),
    )


def _sli_row() -> tuple:
    return b.row(
        "SLI and error budget",
        b.timeseries(
            "SLI (1h) vs objective",
            "1 − errors / requests over the last hour, per SLO, with the objective dashed. Below the "
            "objective spends budget; see which window's burn rate is high below and the pipeline dashboard's "
            "request SLIs for the operation that fails.",
            [
                b.prom(sli("1h"), "{{slo}} SLI"),
                b.prom(_metric("slo:objective:ratio"), "{{slo}} objective"),
            ],
            unit="percentunit",
            minimum=None,
            maximum=1,
            overrides=[b.override("byRegexp", ".* objective", custom__lineStyle={"dash": [10, 10], "fill": "dash"})],
        ),
        b.timeseries(
            "Error budget remaining",
            "1 − the consumed fraction of the period's error budget. Below 25% (orange): slow down risky "
            "deploys for the service; below 0: the SLO is missed for this period.",
            [b.prom(_metric("slo:error_budget_remaining:ratio"), "{{slo}}")],
            unit="percentunit",
            minimum=None,
            maximum=1,
            steps=b.thresholds(("red", None), ("orange", 0), ("green", 0.25)),
            threshold_style="dashed",
        ),
        b.gauge(
            "Error budget remaining now",
            "Current budget left per SLO. Red: spent (the value shown is below 0); orange: under 25%.",
            [b.prom(_metric("slo:error_budget_remaining:ratio"), "{{slo}}")],
            unit="percentunit",
            minimum=0,
            maximum=1,
            steps=b.thresholds(("red", None), ("orange", 0.0001), ("green", 0.25)),
            width=12,
        ),
        b.timeseries(
            "Requests and errors (5m)",
            "Events per second the SLIs count (requests, and the errors among them). A drop to 0 requests "
            "makes the SLI undefined (no data), not perfect: check that the service still sends spans.",
            [
                b.prom(f"sum by (slo) (slo:sli_requests:rate5m{{{SLO}}})", "{{slo}} requests"),
                b.prom(f"sum by (slo) (slo:sli_errors:rate5m{{{SLO}}})", "{{slo}} errors"),
            ],
            unit="cps",
        ),
    )


def _burn_rate_row() -> tuple:
    panels = [
        b.timeseries(
            "Burn rate, all windows",
            "Error ratio ÷ error budget for every window. 1 spends exactly the budget over the period. Dashed "
            "lines: the alert factors 1, 3, 6 and 14.4 (30-day period); an alert fires when a long and its "
            "short window are both above the factor (panels below).",
            [b.prom(_metric(f"slo:burn_rate:rate{w}"), f"{{{{slo}}}} {w}") for w in ("1h", "6h", "1d", "3d")],
            unit="none",
            width=24,
            steps=BURN_STEPS,
            threshold_style="dashed",
        )
    ]
    for long, short, factor, severity in BURN_RATE_WINDOWS:
        panels.append(
            b.timeseries(
                f"Burn rate {long} & {short} (×{factor:g}, {severity})",
                f"Both above {factor:g} fires SpanmeterErrorBudgetBurn ({severity}, "
                f"{'pages' if severity == 'critical' else 'opens a ticket'}): at this rate the "
                f"{long} window alone spends {factor * _hours(long) / (30 * 24):.0%} of a 30-day budget. "
                "Follow the alert's runbook: find the failing operation on the pipeline dashboard, roll back "
                "or mitigate; the short window dropping below the factor means it is recovering.",
                [
                    b.prom(_metric(f"slo:burn_rate:rate{long}"), f"{{{{slo}}}} {long}"),
                    b.prom(_metric(f"slo:burn_rate:rate{short}"), f"{{{{slo}}}} {short}"),
                ],
                unit="none",
                width=6,
                steps=b.thresholds(("green", None), ("red", factor)),
                threshold_style="dashed",
            )
        )
    return b.row("Burn rate", *panels)


def _hours(window: str) -> float:
    return float(window[:-1]) * {"m": 1 / 60, "h": 1, "d": 24}[window[-1]]


def _alerts_row() -> tuple:
    return b.row(
        "Alerts",
        b.timeseries(
            "SpanmeterErrorBudgetBurn firing",
            "Burn-rate alerts firing, by SLO and severity (critical pages, warning tickets), one per window "
            "pair. Open the alert for its runbook_url. It resolves as soon as either window drops under its "
            "factor, so a short window back under it ends the page while the long one is still high.",
            [
                b.prom(
                    'count by (slo, severity) (ALERTS{alertname="SpanmeterErrorBudgetBurn", '
                    f'alertstate="firing", {SLO}}})',
                    "{{slo}} {{severity}}",
                )
            ],
            unit="none",
            width=24,
            bars=True,
            stacked=True,
        ),
    )


def slos(uid: str, tags: list[str]) -> dict:
    """The dashboard JSON model."""
    return b.dashboard(
        uid=uid,
        title="spanmeter / SLOs and error budgets",
        description="SLIs against objectives, error budgets and multi-window burn rates for every SLO, from "
        "the slo:* recording rules.",
        tags=tags,
        refresh="1m",
        time_from="now-2d",
        variables=[
            b.prometheus_datasource_variable(),
            b.query_variable(
                "slo",
                "SLO",
                b.PROMETHEUS,
                "label_values(slo:objective:ratio, slo)",
                multi=True,
                include_all=True,
                all_value=".*",
            ),
        ],
        rows=[_overview_row(), _sli_row(), _burn_rate_row(), _alerts_row()],
    )
