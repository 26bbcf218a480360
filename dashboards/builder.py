"""Small, pure helpers that return Grafana dashboard JSON (plain dicts): no classes, no I/O.

A dashboard is written as rows of panels; :func:`dashboard` numbers the panels, lays them out left to right
on Grafana's 24-column grid (wrapping to a new line when a panel does not fit), gives every target a
``refId`` and returns the JSON model. The same input always gives the same JSON.

    from spanmeter.dashboards import builder as b

    panel = b.timeseries(
        "Spans received",
        "Spans in parsed Export requests. Zero while producers run: check the OTel Collector's exporter.",
        [b.prom("sum(rate(spanmeter_spans_received_total[$__rate_interval]))", "received")],
        unit="cps",
    )
    model = b.dashboard(
        uid="example", title="Example", description="…", tags=["spanmeter"],
        variables=[b.prometheus_datasource_variable()], rows=[b.row("Ingest", panel)],
    )

Targets carry their datasource: :func:`prom` targets read the Prometheus datasource variable
(``${datasource}``), :func:`sql` targets the PostgreSQL one (``${ledger}``); a panel uses its targets'
datasource. Every panel needs a unit (``unit=``): the structural test refuses a panel without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "LEDGER",
    "POSTGRES_TYPE",
    "PROMETHEUS",
    "dashboard",
    "gauge",
    "override",
    "postgres_datasource_variable",
    "prom",
    "prometheus_datasource_variable",
    "query_variable",
    "row",
    "sql",
    "stat",
    "table",
    "tag_links",
    "thresholds",
    "timeseries",
]

GRID_WIDTH = 24
SCHEMA_VERSION = 39
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROMETHEUS = {"type": "prometheus", "uid": "${datasource}"}
LEDGER = {"type": POSTGRES_TYPE, "uid": "${ledger}"}

Json = dict[str, Any]


# ------------------------------------------------------------------------------------------ targets


def prom(expr: str, legend: str = "", *, table: bool = False) -> Json:
    """A PromQL target over the time range; ``table=True`` evaluates once, at the end, as table rows."""
    target: Json = {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend or "__auto", "range": not table}
    if table:
        target.update(instant=True, format="table")
    return target


def sql(raw_sql: str, *, table: bool = False) -> Json:
    """A raw SQL target on the ledger; ``table=False`` means time series (needs a ``time`` column, ORDER BY time)."""
    return {
        "datasource": LEDGER,
        "editorMode": "code",
        "format": "table" if table else "time_series",
        "rawQuery": True,
        "rawSql": raw_sql.strip(),
    }


# ------------------------------------------------------------------------------------------- panels


def thresholds(*steps: tuple[str, float | None]) -> Json:
    """``thresholds(("green", None), ("red", 1))``: the first step's value is None (from minus infinity)."""
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}


def override(matcher: str, pattern: str, **properties: Any) -> Json:
    """A field override: ``override("byName", "Objective", unit="percentunit")``. Keys with ``__`` are
    nested: ``custom__lineStyle`` sets ``custom.lineStyle``."""
    return {
        "matcher": {"id": matcher, "options": pattern},
        "properties": [{"id": key.replace("__", "."), "value": value} for key, value in sorted(properties.items())],
    }


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    width: int,
    height: int,
    defaults: Json,
    options: Json,
    overrides: Iterable[Json] = (),
    transformations: Iterable[Json] = (),
    links: Iterable[Json] = (),
) -> Json:
    if not description:
        raise ValueError(f"panel {title!r} needs a description saying what to do when the value is bad")
    if not targets:
        raise ValueError(f"panel {title!r} has no targets")
    datasources = {(t["datasource"]["type"], t["datasource"]["uid"]) for t in targets}
    if len(datasources) != 1:
        raise ValueError(f"panel {title!r} mixes datasources {sorted(datasources)}")
    panel: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": dict(targets[0]["datasource"]),
        "targets": [dict(t) for t in targets],
        "fieldConfig": {"defaults": {**defaults, "unit": unit}, "overrides": list(overrides)},
        "options": options,
        "gridPos": {"h": height, "w": width},
    }
    if transformations:
        panel["transformations"] = list(transformations)
    if links:
        panel["links"] = list(links)
    return panel


def timeseries(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    minimum: float | None = 0,
    maximum: float | None = None,
    steps: Json | None = None,
    threshold_style: str = "off",
    stacked: bool = False,
    bars: bool = False,
    overrides: Iterable[Json] = (),
    links: Iterable[Json] = (),
) -> Json:
    """A time series panel; ``steps`` (see :func:`thresholds`) with ``threshold_style="dashed"`` draws them."""
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 10 if stacked or bars else 0,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        "thresholdsStyle": {"mode": threshold_style},
    }
    defaults: Json = {"custom": custom, "thresholds": steps or thresholds(("green", None))}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    options = {
        "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel(
        "timeseries",
        title,
        description,
        targets,
        unit=unit,
        width=width,
        height=height,
        defaults=defaults,
        options=options,
        overrides=overrides,
        links=links,
    )


def stat(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    steps: Json | None = None,
    width: int = 4,
    height: int = 4,
    decimals: int | None = None,
    calc: str = "lastNotNull",
) -> Json:
    """A single-number panel coloured by ``steps`` (the background turns the threshold colour)."""
    defaults: Json = {"thresholds": steps or thresholds(("green", None)), "color": {"mode": "thresholds"}}
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "colorMode": "background",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": [calc], "fields": "", "values": False},
        "textMode": "auto",
    }
    return _panel(
        "stat", title, description, targets, unit=unit, width=width, height=height, defaults=defaults, options=options
    )


def gauge(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str,
    minimum: float,
    maximum: float,
    steps: Json,
    width: int = 6,
    height: int = 6,
) -> Json:
    """A gauge between ``minimum`` and ``maximum``, one per series, coloured by ``steps``."""
    defaults: Json = {"min": minimum, "max": maximum, "thresholds": steps, "color": {"mode": "thresholds"}}
    options = {
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
    }
    return _panel(
        "gauge", title, description, targets, unit=unit, width=width, height=height, defaults=defaults, options=options
    )


def table(
    title: str,
    description: str,
    targets: Sequence[Json],
    *,
    unit: str = "none",
    width: int = 24,
    height: int = 8,
    overrides: Iterable[Json] = (),
    transformations: Iterable[Json] = (),
    sort_by: str | None = None,
    descending: bool = True,
) -> Json:
    """A table; ``unit`` applies to every column without an override (use overrides for money, times)."""
    options: Json = {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True}
    if sort_by:
        options["sortBy"] = [{"desc": descending, "displayName": sort_by}]
    return _panel(
        "table",
        title,
        description,
        targets,
        unit=unit,
        width=width,
        height=height,
        defaults={"custom": {"align": "auto", "filterable": True}},
        options=options,
        overrides=overrides,
        transformations=transformations,
    )


def row(title: str, *panels: Json) -> tuple[str, tuple[Json, ...]]:
    """A titled row of panels (laid out by :func:`dashboard`)."""
    return title, panels


# ---------------------------------------------------------------------------------------- variables


def _datasource_variable(name: str, label: str, plugin: str, default_uid: str) -> Json:
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": plugin,
        "current": {"selected": False, "text": default_uid, "value": default_uid},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def prometheus_datasource_variable(default_uid: str = "prometheus") -> Json:
    """``$datasource``: which Prometheus to read (default: the provisioned one)."""
    return _datasource_variable("datasource", "Data source", "prometheus", default_uid)


def postgres_datasource_variable(default_uid: str = "spanmeter-ledger") -> Json:
    """``$ledger``: which PostgreSQL datasource (SELECT-only ``spanmeter_grafana`` role) to read."""
    return _datasource_variable("ledger", "Ledger (PostgreSQL)", POSTGRES_TYPE, default_uid)


def query_variable(
    name: str,
    label: str,
    datasource: Json,
    query: str,
    *,
    multi: bool = False,
    include_all: bool = False,
    all_value: str | None = None,
    default: str | None = None,
    refresh: int = 1,
) -> Json:
    """A variable filled by a query (PromQL ``label_values(…)`` or SQL). ``default`` is the initial value;
    with ``include_all`` the default is All. ``all_value`` is what Grafana inserts, as is, for All (without
    it, All means every option, quoted one by one). ``refresh``: 1 on load, 2 on time range change."""
    if include_all:
        current: Json = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        current = {"selected": False, "text": default or "", "value": default or ""}
    variable: Json = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": dict(datasource),
        "query": query,
        "definition": query,
        "current": current,
        "hide": 0,
        "includeAll": include_all,
        "multi": multi,
        "options": [],
        "refresh": refresh,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }
    if all_value is not None:
        variable["allValue"] = all_value
    return variable


def tag_links(tag: str) -> list[Json]:
    """A drop-down of every dashboard tagged ``tag``, keeping the time range (monitoring-mixin style)."""
    return [
        {
            "asDropdown": True,
            "icon": "external link",
            "includeVars": False,
            "keepTime": True,
            "tags": [tag],
            "targetBlank": False,
            "title": f"{tag} dashboards",
            "type": "dashboards",
        }
    ]


# ---------------------------------------------------------------------------------------- dashboard


def _layout(rows: Sequence[tuple[str, Sequence[Json]]]) -> list[Json]:
    """Row headers and panels with ``id`` and ``gridPos`` set, left to right, top to bottom."""
    placed: list[Json] = []
    y = 0
    next_id = 1
    for title, panels in rows:
        placed.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": next_id,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in panels:
            w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
            if not 0 < w <= GRID_WIDTH:
                raise ValueError(f"panel {panel['title']!r}: width {w} is not within 1..{GRID_WIDTH}")
            if x + w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            placed.append({**panel, "id": next_id, "gridPos": {"h": h, "w": w, "x": x, "y": y}})
            next_id += 1
            x += w
            line_height = max(line_height, h)
        y += line_height
    for panel in placed:
        for index, target in enumerate(panel.get("targets", [])):
            target["refId"] = chr(ord("A") + index)
    return placed


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    tags: Sequence[str],
    variables: Sequence[Json],
    rows: Sequence[tuple[str, Sequence[Json]]],
    refresh: str = "30s",
    time_from: str = "now-6h",
    links: Sequence[Json] = (),
) -> Json:
    """The dashboard JSON model: UTC, a stable ``uid``, ``tags`` and links to the dashboards sharing the
    first tag (so the three spanmeter dashboards link to each other)."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": list(tags),
        "timezone": "utc",
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [*tag_links(tags[0]), *links],
        "templating": {"list": [dict(v) for v in variables]},
        "panels": _layout(rows),
    }
