"""The queries inside a dashboard, made runnable outside Grafana: for tests and for checking a dashboard
against a real Prometheus or a real ledger.

- :func:`prometheus_queries` lists every PromQL target (and every Prometheus variable query) with Grafana's
  variables substituted so that Prometheus can evaluate it: ``$__rate_interval`` → ``1m`` (four 15 s
  scrapes), ``$__interval`` → ``15s``, ``$__range`` → ``1h`` (``$__range_s`` → ``3600``), a variable with
  an All option → its ``allValue`` (``.*`` when it has none), any other variable → its default value; the
  datasource variable appears in no expression. A variable query ``label_values(expr, label)`` becomes
  ``count by (label) (expr)``: it returns one series per option the drop-down would offer.
- :func:`sql_queries` lists every PostgreSQL target (and SQL variable query) as written.
- :func:`expand_sql_macros` does what Grafana does to such SQL before PostgreSQL sees it: the frontend
  substitutes template variables, then the PostgreSQL datasource expands its macros, exactly as
  ``pkg/tsdb/grafana-postgresql-datasource/macros.go`` does (``$__timeFilter(col)`` →
  ``col BETWEEN '2026-11-01T00:00:00Z' AND '…'``: RFC 3339 UTC literals, no cast; PostgreSQL types them
  from the column). An unknown macro or variable raises :class:`MacroError`, as Grafana would fail the query.

    >>> from datetime import UTC, datetime
    >>> print(expand_sql_macros(
    ...     "SELECT $__timeGroupAlias(bucket_start, '1h'), sum(quantity) FROM usage_rollups_hourly "
    ...     "WHERE $__timeFilter(bucket_start) AND account_id IN ($account) GROUP BY 1 ORDER BY 1",
    ...     datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, 12, 30, tzinfo=UTC),
    ...     {"account": ["acme", "o'brien"]},
    ... ))
    SELECT floor(extract(epoch from bucket_start)/3600)*3600 AS "time", sum(quantity) FROM usage_rollups_hourly WHERE bucket_start BETWEEN '2026-11-01T00:00:00Z' AND '2026-11-02T12:30:00Z' AND account_id IN ('acme','o''brien') GROUP BY 1 ORDER BY 1

Variable values are quoted the way Grafana quotes a multi-value (or All-enabled) variable's selection in
SQL: each value single-quoted, quotes doubled, joined by commas (``${var:sqlstring}`` gives the same;
``${var:raw}`` and ``${var:csv}`` leave them unquoted). Pass a list for several values. The billing
dashboard's ``account`` variable has the custom All value ``'*'``, which Grafana inserts as is: pass
``{"account": "*"}`` to get the same text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

#: Grafana's PostgreSQL datasource plugin id (the ledger's SQL targets).
POSTGRES_TYPE = "grafana-postgresql-datasource"

__all__ = ["PROMETHEUS_SUBSTITUTIONS", "MacroError", "expand_sql_macros", "prometheus_queries", "sql_queries"]

#: Grafana's built-in interval variables, as evaluated against a Prometheus scraping every 15 s.
PROMETHEUS_SUBSTITUTIONS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")
_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")  # macros.go: \$([_a-zA-Z0-9]+)\(([^\)]*)\)
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$", re.DOTALL)


class MacroError(ValueError):
    """An unknown macro or variable, or a macro with bad arguments: Grafana would refuse the query."""


def _panels(dashboard: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _variables(dashboard: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


# -------------------------------------------------------------------------------------------- PromQL


def _prometheus_value(name: str, variables: Mapping[str, Mapping[str, Any]]) -> str:
    if name in PROMETHEUS_SUBSTITUTIONS:
        return PROMETHEUS_SUBSTITUTIONS[name]
    variable = variables.get(name)
    if variable is None:
        raise MacroError(f"${name} is neither a dashboard variable nor a Grafana built-in")
    if variable["type"] == "datasource":
        return ""
    if variable.get("includeAll"):
        return variable.get("allValue") or ".*"
    value = variable.get("current", {}).get("value", "")
    return "|".join(value) if isinstance(value, list) else str(value)


def substitute_prometheus(expr: str, dashboard: Mapping[str, Any]) -> str:
    """``expr`` with every ``$var`` / ``${var}`` replaced as described in the module docstring."""
    variables = _variables(dashboard)

    def replace(match: re.Match[str]) -> str:
        return _prometheus_value(match.group(1) or match.group(3) or match.group(5), variables)

    return _VARIABLE.sub(replace, expr)


def prometheus_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, PromQL)`` for every Prometheus target, then ``("variable $name", PromQL)`` for every
    Prometheus query variable, ready to evaluate (see the module docstring for the substitutions)."""
    found = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("datasource", panel.get("datasource", {})).get("type") == "prometheus":
                found.append((panel["title"], substitute_prometheus(target["expr"], dashboard)))
    for name, variable in _variables(dashboard).items():
        if variable["type"] == "query" and variable["datasource"]["type"] == "prometheus":
            match = _LABEL_VALUES.match(variable["query"])
            if match is None:
                raise MacroError(f"variable ${name}: only label_values(expr, label) is supported")
            expr = f"count by ({match.group(2)}) ({match.group(1)})"
            found.append((f"variable ${name}", substitute_prometheus(expr, dashboard)))
    return found


def sql_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, raw SQL)`` for every PostgreSQL target, then ``("variable $name", SQL)`` for every
    SQL query variable, as written (macros and variables unexpanded: see :func:`expand_sql_macros`)."""
    found = [
        (panel["title"], target["rawSql"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("datasource", panel.get("datasource", {})).get("type") == POSTGRES_TYPE
    ]
    found += [
        (f"variable ${name}", variable["query"])
        for name, variable in _variables(dashboard).items()
        if variable["type"] == "query" and variable["datasource"]["type"] == POSTGRES_TYPE
    ]
    return found


# ----------------------------------------------------------------------------------------------- SQL


def _rfc3339(moment: datetime) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: fraction without trailing zeros, ``Z``."""
    if moment.utcoffset() is None:
        raise MacroError("time range bounds need a timezone (use UTC)")
    utc = moment.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _interval_seconds(text: str) -> float:
    """gtime.ParseInterval: ``5m``, ``1h``, ``1h30m``, ``1d``, ``2w`` (months and years are calendar-relative
    in Grafana and refused here)."""
    value = text.strip().strip("'")
    if match := re.fullmatch(r"(\d+)([dw])", value):
        return int(match.group(1)) * (86400 if match.group(2) == "d" else 604800)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise MacroError(f"error parsing interval {text}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _go_float(x: float) -> str:
    """Go's ``%v`` for a float64 (shortest digits; exponent form below 1e-4 or from 1e6)."""
    if x == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(x))).normalize().as_tuple()
    text = "".join(map(str, digits))
    exp10 = len(digits) + int(exponent) - 1
    prefix = "-" if sign else ""
    if exp10 < -4 or exp10 >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'+' if exp10 >= 0 else '-'}{abs(exp10):02d}"
    return prefix + format(Decimal(repr(abs(float(x)))).normalize(), "f")


def _check_fill(value: str) -> None:
    if value in ("NULL", "previous"):
        return
    try:
        float(value)
    except ValueError:
        raise MacroError(f"error parsing fill value {value}") from None


def _macro(name: str, args: list[str], time_from: datetime, time_to: datetime) -> str:
    start, end = _rfc3339(time_from), _rfc3339(time_to)
    column = args[0] if args and args[0] else None
    if name in ("__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter", "__unixEpochNanoFilter") and not column:
        raise MacroError(f"missing time column argument for macro {name}")
    if name == "__time":
        return f'{column} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {column}) as "time"'
    if name == "__timeFilter":
        return f"{column} BETWEEN '{start}' AND '{end}'"
    if name == "__timeFrom":
        return f"'{start}'"
    if name == "__timeTo":
        return f"'{end}'"
    if name in ("__timeGroup", "__timeGroupAlias", "__unixEpochGroup", "__unixEpochGroupAlias"):
        if len(args) < 2:
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
        seconds = _go_float(_interval_seconds(args[1]))
        if len(args) == 3:
            _check_fill(args[2])
        if name.startswith("__timeGroup"):
            expr = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        else:
            expr = f"floor(({args[0]})/{seconds})*{seconds}"
        return expr + (' AS "time"' if name.endswith("Alias") else "")
    from_s, to_s = int(time_from.timestamp()), int(time_to.timestamp())
    if name == "__unixEpochFilter":
        return f"{column} >= {from_s} AND {column} <= {to_s}"
    from_ns, to_ns = _unix_nanos(time_from), _unix_nanos(time_to)
    if name == "__unixEpochNanoFilter":
        return f"{column} >= {from_ns} AND {column} <= {to_ns}"
    if name == "__unixEpochNanoFrom":
        return str(from_ns)
    if name == "__unixEpochNanoTo":
        return str(to_ns)
    raise MacroError(f"unknown macro {name!r}")


def _unix_nanos(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _quote(values: Sequence[str], fmt: str | None) -> str:
    if fmt in (None, "sqlstring"):
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt in ("raw", "csv"):
        return ",".join(values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    raise MacroError(f"unsupported variable format {fmt!r}")


def expand_sql_macros(
    sql: str,
    time_from: datetime,
    time_to: datetime,
    variables: Mapping[str, str | Sequence[str]] | None = None,
) -> str:
    """The SQL PostgreSQL receives from Grafana for the range ``[time_from, time_to]`` and the selected
    ``variables`` (name → value or values). See the module docstring."""
    values = dict(variables or {})
    builtins = {"__from": str(int(time_from.timestamp() * 1000)), "__to": str(int(time_to.timestamp() * 1000))}

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(5)
        fmt = match.group(2) or match.group(4)
        if name in values:
            value = values[name]
            return _quote([value] if isinstance(value, str) else list(value), fmt)
        if name in builtins:
            return builtins[name]
        if name[0].isdigit():
            return match.group(0)  # $1: not a variable name; Grafana leaves it alone
        if name.startswith("__") and match.group(5):
            return match.group(0)  # a macro, expanded below
        raise MacroError(f"${name} is not a variable of this query (give it in variables=)")

    sql = _VARIABLE.sub(substitute, sql)
    sql = sql.replace("$__unixEpochFrom()", str(int(time_from.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(time_to.timestamp())))

    def expand(match: re.Match[str]) -> str:
        name, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
        after = sql.find(match.group(0)) + len(match.group(0))  # macros.go looks at the first occurrence
        if name == "__timeGroup" and sql[after : after + 1] == ",":
            name = "__timeGroupAlias"  # Grafana < 5.3 compatibility: `$__timeGroup(…),` is aliased
        return _macro(name, args, time_from, time_to)

    expanded = _MACRO.sub(expand, sql)
    leftover = re.search(r"\$__\w+", expanded)
    if leftover:
        raise MacroError(f"unknown macro or built-in {leftover.group(0)!r}")
    return expanded
