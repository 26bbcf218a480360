"""SLOs as code: a spec file → Prometheus recording rules and multi-window, multi-burn-rate alerts.

The spec (``alerts/slos.yaml``) lists SLOs. Each has a ``name`` (the ``slo`` label), a ``service``, an
``objective`` (0.999 = 99.9 % good events), a ``period`` (``30d``, ``28d`` or ``7d``), a ``description`` and
one SLI, either **events** (two PromQL counter selectors, ``errors`` and ``total``) or **latency** (a
histogram ``metric``, its label ``selector`` and a ``threshold_seconds`` that must be one of its buckets)::

    slos:
      - name: docpipe-web-latency
        service: docpipe-web
        objective: 0.99
        period: 30d
        description: HTTP requests of docpipe-web served within 1 s.
        sli:
          latency:
            metric: spanmeter_service_request_duration_seconds
            selector: '{service="docpipe-web"}'
            threshold_seconds: 1

What is generated (:func:`rule_groups`), per SLO, every series labelled ``slo`` and ``service``:

- ``slo:sli_errors:rate<w>`` and ``slo:sli_requests:rate<w>`` for w in 5m, 30m, 1h, 2h, 6h, 1d, 3d: bad and
  all events per second. Numerators and denominators are recorded, never a ratio to be averaged later, so
  any longer ratio is a ratio of sums. There is no fallback to 0 errors: a selector that matches nothing
  (a typo, a series not initialised) leaves the SLO without data, visible on the dashboard, instead of
  reading 100 % good and never paging.
- ``slo:burn_rate:rate<w>``: error ratio ÷ error budget (1 = spending the budget exactly over the period).
- ``slo:objective:ratio``, ``slo:error_budget:ratio``, ``slo:time_period:days``.
- In a slower group: ``slo:sli_errors:rate_period``, ``slo:sli_requests:rate_period`` (over the whole
  period) and ``slo:error_budget_remaining:ratio`` (1 − consumed fraction; below 0 when overspent).

Alerts: one family, ``SpanmeterErrorBudgetBurn``, labelled ``slo``, ``service``, ``severity``,
``long_window`` and ``short_window``; it fires when both windows burn faster than the factor
(factor = fraction of the budget consumed × period ÷ long window, for a 30-day period):

| severity | long | short | factor | budget spent when it fires | ``for`` |
|---|---|---|---|---|---|
| critical (page) | 1h | 5m | 14.4 | 2 % | 2m |
| critical (page) | 6h | 30m | 6 | 5 % | 15m |
| warning (ticket) | 1d | 2h | 3 | 10 % | 1h |
| warning (ticket) | 3d | 6h | 1 | 10 % | 3h |

(The Google SRE Workbook's table, plus the 1d/2h row that Sloth and kubernetes-mixin add.) Periods other
than 30 days scale the factors so the same budget fractions hold, never below 1. Low-traffic guard: a row fires only when
its long window holds at least ``min_events`` events (default 20), so two failures out of three requests
at night do not page; the price is that a service with less traffic than that is not paged at all
(choose a longer-window ticket or synthetic probes for those).

Pure: the spec in, rule dictionaries out. :func:`load_spec` reports every problem of the file at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BURN_RATE_WINDOWS",
    "SLO",
    "WINDOWS",
    "BurnRateWindow",
    "EventsSLI",
    "LatencySLI",
    "Profile",
    "SLOSpecError",
    "load_spec",
    "parse_spec",
    "rule_groups",
]

WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
PERIODS_DAYS = {"7d": 7, "28d": 28, "30d": 30}
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SELECTOR = re.compile(r"^\{.*\}$")
_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_SECONDS = {"m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class BurnRateWindow:
    long: str
    short: str
    budget_fraction: Decimal  # of the 30-day budget consumed when the row fires
    severity: str
    for_: str


BURN_RATE_WINDOWS = (
    BurnRateWindow("1h", "5m", Decimal("0.02"), "critical", "2m"),
    BurnRateWindow("6h", "30m", Decimal("0.05"), "critical", "15m"),
    BurnRateWindow("1d", "2h", Decimal("0.10"), "warning", "1h"),
    BurnRateWindow("3d", "6h", Decimal("0.10"), "warning", "3h"),
)


@dataclass(frozen=True)
class Profile:
    """How the rules are rendered: ``production`` (committed) or ``test`` (short ``for``, fast groups)."""

    name: str
    for_override: str | None = None  # every alert's ``for`` (test profile: a few seconds)
    period_group_interval: str = "5m"
    runbook_base_url: str = "https://github.com/spanmeter/spanmeter/blob/main/alerts/runbooks"
    grafana_url: str = "http://localhost:3000"
    job: str = "spanmeter"  # the Prometheus job that scrapes `spanmeter serve`
    stall_seconds: int = 60  # SpanmeterLedgerStalled: pending this long with no commit for this long
    billing_stale_seconds: int = 600  # SpanmeterBillingMetricsStale

    def for_(self, production: str) -> str:
        return self.for_override or production


@dataclass(frozen=True)
class EventsSLI:
    """Bad and all events, each a PromQL counter selector."""

    errors: str
    total: str

    def errors_rate(self, window: str) -> str:
        return f"sum(rate({self.errors}[{window}]))"

    def total_rate(self, window: str) -> str:
        return f"sum(rate({self.total}[{window}]))"


@dataclass(frozen=True)
class LatencySLI:
    """Events slower than ``threshold_seconds`` (a bucket boundary of the histogram) are bad."""

    metric: str
    matchers: str  # label matchers without braces, may be empty
    threshold_seconds: float

    def total_rate(self, window: str) -> str:
        return f"sum(rate({self.metric}_count{{{self.matchers}}}[{window}]))"

    def errors_rate(self, window: str) -> str:
        joined = f"{self.matchers}," if self.matchers else ""
        le = f"{self.threshold_seconds:g}".replace(".", r"\\.")  # a PromQL string: the regex escape doubled
        # Prometheus 2 keeps the client's "1.0"; Prometheus 3 normalises it to "1": match both.
        good = f'sum(rate({self.metric}_bucket{{{joined}le=~"{le}(\\\\.0)?"}}[{window}]))'
        return f"({self.total_rate(window)} - {good})"


@dataclass(frozen=True)
class SLO:
    name: str
    service: str
    objective: Decimal
    period: str
    description: str
    sli: EventsSLI | LatencySLI
    min_events: int = 20

    @property
    def error_budget(self) -> Decimal:
        return 1 - self.objective

    @property
    def period_days(self) -> int:
        return PERIODS_DAYS[self.period]

    def factor(self, window: BurnRateWindow) -> Decimal:
        """Burn rate that spends ``window.budget_fraction`` of the budget within the long window, at least 1
        (below 1 the budget lasts the period: nothing to alert on, which short periods would otherwise do)."""
        return max(window.budget_fraction * self.period_days * 86400 / _seconds(window.long), Decimal(1))


class SLOSpecError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid SLO spec:\n" + "\n".join(f"  - {p}" for p in problems))


def load_spec(path: Path, known_buckets: dict[str, tuple[float, ...]] | None = None) -> list[SLO]:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SLOSpecError([f"{path}: not YAML: {exc}"]) from exc
    return parse_spec(document, known_buckets or {})


def parse_spec(document: Any, known_buckets: dict[str, tuple[float, ...]]) -> list[SLO]:
    """Validate a parsed spec; ``known_buckets`` maps histogram names to their buckets (for latency SLIs)."""
    problems: list[str] = []
    if not isinstance(document, dict) or not isinstance(document.get("slos"), list) or not document["slos"]:
        raise SLOSpecError(["the file must hold a non-empty list under `slos:`"])
    slos: list[SLO] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["slos"]):
        where = f"slos[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping")
            continue
        where = f"slos[{index}] ({entry.get('name', '?')})"
        before = len(problems)
        name, service = entry.get("name"), entry.get("service")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}: `name` must be lower-case letters, digits and dashes")
        elif name in seen:
            problems.append(f"{where}: `name` {name!r} is used twice")
        seen.add(str(name))
        if not isinstance(service, str) or not service:
            problems.append(f"{where}: `service` is required")
        objective = _objective(entry.get("objective"), where, problems)
        if entry.get("period", "30d") not in PERIODS_DAYS:
            problems.append(f"{where}: `period` must be one of {', '.join(PERIODS_DAYS)}")
        min_events = entry.get("min_events", 20)
        if not isinstance(min_events, int) or isinstance(min_events, bool) or min_events < 0:
            problems.append(f"{where}: `min_events` must be a whole number >= 0")
        sli = _sli(entry.get("sli"), where, problems, known_buckets)
        if len(problems) == before and sli and objective is not None:
            slos.append(
                SLO(
                    name=name,
                    service=service,
                    objective=objective,
                    period=entry.get("period", "30d"),
                    description=str(entry.get("description", "")).strip(),
                    sli=sli,
                    min_events=min_events,
                )
            )
    if problems:
        raise SLOSpecError(problems)
    return slos


def _objective(value: Any, where: str, problems: list[str]) -> Decimal | None:
    try:
        objective = Decimal(str(value))
    except ArithmeticError:
        objective = None
    if objective is None or not Decimal("0.5") <= objective < 1:
        problems.append(f"{where}: `objective` must be a ratio in [0.5, 1), e.g. 0.999 (got {value!r})")
        return None
    return objective


def _sli(sli: Any, where: str, problems: list[str], known_buckets: dict) -> EventsSLI | LatencySLI | None:
    if not isinstance(sli, dict) or len(sli) != 1 or next(iter(sli)) not in ("events", "latency"):
        problems.append(f"{where}: `sli` must hold exactly one of `events` or `latency`")
        return None
    kind, body = next(iter(sli.items()))
    if not isinstance(body, dict):
        problems.append(f"{where}: `sli.{kind}` must be a mapping")
        return None
    if kind == "events":
        errors, total = body.get("errors"), body.get("total")
        if not isinstance(errors, str) or not isinstance(total, str) or not errors.strip() or not total.strip():
            problems.append(f"{where}: `sli.events` needs `errors` and `total` PromQL counter selectors")
            return None
        return EventsSLI(errors.strip(), total.strip())
    metric, selector, threshold = body.get("metric"), body.get("selector", "{}"), body.get("threshold_seconds")
    if not isinstance(metric, str) or not _METRIC.match(metric):
        problems.append(f"{where}: `sli.latency.metric` must be a histogram name (without _bucket)")
        return None
    if not isinstance(selector, str) or not _SELECTOR.match(selector.strip()):
        problems.append(f"{where}: `sli.latency.selector` must be label matchers in braces, e.g. '{{job=\"x\"}}'")
        return None
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or threshold <= 0:
        problems.append(f"{where}: `sli.latency.threshold_seconds` must be a positive number")
        return None
    buckets = known_buckets.get(metric)
    if buckets is not None and float(threshold) not in buckets:
        problems.append(
            f"{where}: threshold {threshold} s is not a bucket of {metric} "
            f"({', '.join(f'{b:g}' for b in buckets)}): the SLI would be interpolated, not counted"
        )
        return None
    return LatencySLI(metric, selector.strip()[1:-1].strip(), float(threshold))


def _seconds(window: str) -> int:
    return int(window[:-1]) * _SECONDS[window[-1]]


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _labels(slo: SLO) -> dict[str, str]:
    return {"slo": slo.name, "service": slo.service}


def rule_groups(slos: list[SLO], profile: Profile) -> list[dict[str, Any]]:
    """The recording-rule groups (one fast, one per-period per SLO) and the burn-rate alert group."""
    groups: list[dict[str, Any]] = []
    for slo in slos:
        labels = _labels(slo)
        sel = f'{{slo="{slo.name}"}}'
        rules: list[dict[str, Any]] = []
        for window in WINDOWS:
            total = slo.sli.total_rate(window)
            rules.append({"record": f"slo:sli_requests:rate{window}", "expr": total, "labels": labels})
            rules.append(
                {"record": f"slo:sli_errors:rate{window}", "expr": slo.sli.errors_rate(window), "labels": labels}
            )
        for window in WINDOWS:
            rules.append(
                {
                    "record": f"slo:burn_rate:rate{window}",
                    "expr": f"slo:sli_errors:rate{window}{sel}\n/\nslo:sli_requests:rate{window}{sel}\n"
                    f"/ {_num(slo.error_budget)}",
                    "labels": labels,
                }
            )
        rules += [
            {"record": "slo:objective:ratio", "expr": f"vector({_num(slo.objective)})", "labels": labels},
            {"record": "slo:error_budget:ratio", "expr": f"vector({_num(slo.error_budget)})", "labels": labels},
            {"record": "slo:time_period:days", "expr": f"vector({slo.period_days})", "labels": labels},
        ]
        groups.append({"name": f"spanmeter-slo-{slo.name}", "rules": rules})
        period_total = slo.sli.total_rate(slo.period)
        groups.append(
            {
                "name": f"spanmeter-slo-{slo.name}-period",
                "interval": profile.period_group_interval,
                "rules": [
                    {"record": "slo:sli_requests:rate_period", "expr": period_total, "labels": labels},
                    {
                        "record": "slo:sli_errors:rate_period",
                        "expr": slo.sli.errors_rate(slo.period),
                        "labels": labels,
                    },
                    {
                        "record": "slo:error_budget_remaining:ratio",
                        "expr": f"1 - (\n  slo:sli_errors:rate_period{sel}\n  /\n  slo:sli_requests:rate_period{sel}\n)"
                        f" / {_num(slo.error_budget)}",
                        "labels": labels,
                    },
                ],
            }
        )
    groups.append({"name": "spanmeter-slo-alerts", "rules": [r for slo in slos for r in _burn_alerts(slo, profile)]})
    return groups


def _burn_alerts(slo: SLO, profile: Profile) -> list[dict[str, Any]]:
    sel = f'{{slo="{slo.name}"}}'
    alerts = []
    for window in BURN_RATE_WINDOWS:
        factor = _num(slo.factor(window).quantize(Decimal("0.01")))
        events = _seconds(window.long)
        alerts.append(
            {
                "alert": "SpanmeterErrorBudgetBurn",
                "expr": (
                    f"(\n  slo:burn_rate:rate{window.long}{sel} > {factor}\n"
                    f"  and\n  slo:burn_rate:rate{window.short}{sel} > {factor}\n)\n"
                    f"and\nslo:sli_requests:rate{window.long}{sel} * {events} >= {slo.min_events}"
                ),
                "for": profile.for_(window.for_),
                "labels": {
                    **_labels(slo),
                    "severity": window.severity,
                    "long_window": window.long,
                    "short_window": window.short,
                },
                "annotations": {
                    "summary": "An SLO is burning its error budget too fast.",
                    "description": (
                        f"SLO {{{{ $labels.slo }}}} of {{{{ $labels.service }}}} ({_percent(slo.objective)} over "
                        f"{slo.period}) burned its error budget {{{{ $value | humanize }}}}x faster than "
                        f"sustainable over the last {window.long}, and still does over {window.short} "
                        f"(threshold {factor}x: {_percent(window.budget_fraction)} of the budget in "
                        f"{window.long}). {slo.description}"
                    ).strip(),
                    "runbook_url": f"{profile.runbook_base_url}/SpanmeterErrorBudgetBurn.md",
                    "dashboard_url": f"{profile.grafana_url}/d/spanmeter-slos?var-slo={{{{ $labels.slo }}}}",
                },
            }
        )
    return alerts


def _percent(ratio: Decimal) -> str:
    return f"{_num(ratio * 100)}%"
