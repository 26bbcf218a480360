"""Small helpers over the official ``grafana-foundation-sdk`` builders: each returns an SDK builder (or
model), and :func:`dashboard` returns the finished JSON model as plain dicts. No I/O; the same input always
gives the same JSON.

A dashboard is written as rows of panels; :func:`dashboard` numbers the panels, lays them out left to right
on Grafana's 24-column grid (wrapping to a new line when a panel does not fit), gives every target a
``refId`` and encodes the SDK's model with the SDK's own JSON encoder.

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

Targets carry their datasource: :func:`prom` targets (the SDK's Prometheus query builder) read the
Prometheus datasource variable (``${datasource}``), :func:`sql` targets the PostgreSQL one (``${ledger}``); a
panel uses its targets' datasource. Every panel needs a unit (``unit=``) and a description.

The SDK (pinned in the ``dashboards`` extra, ``1769699379!11.6.0``: generated from Grafana 11.6's schema) has
no builder for Grafana's PostgreSQL datasource query, so :class:`LedgerQuery` is one: the SDK's own extension
point (a ``cog`` ``Dataquery`` variant with ``to_json``, registered for ``from_json``) carrying the fields
Grafana's ``grafana-postgresql-datasource`` reads (``rawSql``, ``format``, ``editorMode``, ``rawQuery``).
Everything else is the SDK's. The JSON it writes has schema version 41 (Grafana 11.6); Grafana 12, which
``docker-compose.yml`` runs, migrates it on load (only forward migrations exist), and the dashboards use no
panel option Grafana 12 removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Self

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import gauge as gauge_b
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as timeseries_b
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, prometheus
from grafana_foundation_sdk.models import dashboard as model

from .queries import POSTGRES_TYPE

__all__ = [
    "LEDGER",
    "POSTGRES_TYPE",
    "PROMETHEUS",
    "LedgerQuery",
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
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
LEDGER = model.DataSourceRef(type_val=POSTGRES_TYPE, uid="${ledger}")

Json = dict[str, Any]
Target = cogbuilder.Builder[cogvariants.Dataquery]
Override = tuple[model.MatcherConfig, list[model.DynamicConfigValue]]
PanelBuilder = cogbuilder.Builder[model.Panel]


# ------------------------------------------------------------------------------------------ targets


class LedgerQuery(cogvariants.Dataquery):
    """A raw SQL query on Grafana's PostgreSQL datasource (the SDK has no model for it; see the module doc)."""

    def __init__(self, raw_sql: str = "", fmt: str = "time_series", ref_id: str | None = None) -> None:
        self.raw_sql = raw_sql
        self.format = fmt
        self.ref_id = ref_id
        self.datasource = LEDGER

    def to_json(self) -> Json:
        payload: Json = {
            "datasource": self.datasource.to_json(),
            "editorMode": "code",
            "format": self.format,
            "rawQuery": True,
            "rawSql": self.raw_sql,
        }
        if self.ref_id is not None:
            payload["refId"] = self.ref_id
        return payload

    @classmethod
    def from_json(cls, data: Json) -> Self:
        return cls(data.get("rawSql", ""), data.get("format", "time_series"), data.get("refId"))


class _LedgerQueryBuilder(cogbuilder.Builder[LedgerQuery]):
    def __init__(self, query: LedgerQuery) -> None:
        self._internal = query

    def build(self) -> LedgerQuery:
        return self._internal


cogruntime.register_dataquery_variant(
    cogruntime.DataqueryConfig(identifier=POSTGRES_TYPE, from_json_hook=LedgerQuery.from_json)
)


def prom(expr: str, legend: str = "", *, table: bool = False) -> Target:
    """A PromQL target over the time range; ``table=True`` evaluates once, at the end, as table rows."""
    query = prometheus_b.Dataquery().datasource(PROMETHEUS).expr(expr).legend_format(legend or "__auto")
    if table:
        return query.instant().format(prometheus.PromQueryFormat.TABLE)
    return query.range()


def sql(raw_sql: str, *, table: bool = False) -> Target:
    """A raw SQL target on the ledger; ``table=False`` means time series (needs a ``time`` column, ORDER BY time)."""
    return _LedgerQueryBuilder(LedgerQuery(raw_sql.strip(), "table" if table else "time_series"))


# ------------------------------------------------------------------------------------------- panels


def thresholds(*steps: tuple[str, float | None]) -> dashboard_b.ThresholdsConfig:
    """``thresholds(("green", None), ("red", 1))``: the first step's value is None (from minus infinity)."""
    return (
        dashboard_b.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for color, value in steps])
    )


def override(matcher: str, pattern: str, **properties: Any) -> Override:
    """A field override: ``override("byName", "Objective", unit="percentunit")``. Keys with ``__`` are
    nested: ``custom__lineStyle`` sets ``custom.lineStyle``."""
    return (
        model.MatcherConfig(id_val=matcher, options=pattern),
        [
            model.DynamicConfigValue(id_val=key.replace("__", "."), value=_built(value))
            for key, value in sorted(properties.items())
        ],
    )


def _built(value: Any) -> Any:
    """An override's value: SDK builders (thresholds, say) become their models."""
    return value.build() if isinstance(value, cogbuilder.Builder) else value


def _panel(
    panel: Any,
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    width: int,
    height: int,
    steps: dashboard_b.ThresholdsConfig | None,
    overrides: Iterable[Override] = (),
    transformations: Iterable[Json] = (),
    links: Iterable[Json] = (),
) -> PanelBuilder:
    """The settings every panel shares, with the checks Grafana does not make: a description, targets,
    one datasource per panel."""
    if not description:
        raise ValueError(f"panel {title!r} needs a description saying what to do when the value is bad")
    if not targets:
        raise ValueError(f"panel {title!r} has no targets")
    sources = {(t.build().datasource.type_val, t.build().datasource.uid) for t in targets}
    if len(sources) != 1:
        raise ValueError(f"panel {title!r} mixes datasources {sorted(sources)}")
    datasource = targets[0].build().datasource
    panel.title(title).description(description).datasource(datasource).targets(list(targets))
    panel.unit(unit).thresholds(steps or thresholds(("green", None))).height(height).span(width)
    for matcher, properties in overrides:
        panel.with_override(matcher, properties)
    for transformation in transformations:
        panel.with_transformation(
            model.DataTransformerConfig(id_val=transformation["id"], options=transformation["options"])
        )
    if links:
        panel.links([_link(link) for link in links])
    return panel


def _link(link: Json) -> dashboard_b.DashboardLink:
    return dashboard_b.DashboardLink(link["title"]).type(model.DashboardLinkType.LINK).url(link["url"])


def _reduce(calc: str) -> common_b.ReduceDataOptions:
    return common_b.ReduceDataOptions().calcs([calc]).fields("").values(False)


def timeseries(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    width: int = 12,
    height: int = 8,
    minimum: float | None = 0,
    maximum: float | None = None,
    steps: dashboard_b.ThresholdsConfig | None = None,
    threshold_style: str = "off",
    stacked: bool = False,
    bars: bool = False,
    overrides: Iterable[Override] = (),
    links: Iterable[Json] = (),
) -> PanelBuilder:
    """A time series panel; ``steps`` (see :func:`thresholds`) with ``threshold_style="dashed"`` draws them."""
    panel = (
        timeseries_b.Panel()
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .fill_opacity(10 if stacked or bars else 0)
        .line_width(1)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .stacking(
            common_b.StackingConfig()
            .group("A")
            .mode(common.StackingMode.NORMAL if stacked else common.StackingMode.NONE)
        )
        .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode(threshold_style)))
        .legend(
            common_b.VizLegendOptions()
            .calcs(["lastNotNull", "max"])
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )
    if minimum is not None:
        panel.min(minimum)
    if maximum is not None:
        panel.max(maximum)
    return _panel(
        panel,
        title,
        description,
        targets,
        unit=unit,
        width=width,
        height=height,
        steps=steps,
        overrides=overrides,
        links=links,
    )


def stat(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    steps: dashboard_b.ThresholdsConfig | None = None,
    width: int = 4,
    height: int = 4,
    decimals: int | None = None,
    calc: str = "lastNotNull",
) -> PanelBuilder:
    """A single-number panel coloured by ``steps`` (the background turns the threshold colour)."""
    panel = (
        stat_b.Panel()
        .color_scheme(dashboard_b.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .reduce_options(_reduce(calc))
        .text_mode(common.BigValueTextMode.AUTO)
    )
    if decimals is not None:
        panel.decimals(decimals)
    return _panel(panel, title, description, targets, unit=unit, width=width, height=height, steps=steps)


def gauge(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    minimum: float,
    maximum: float,
    steps: dashboard_b.ThresholdsConfig,
    width: int = 6,
    height: int = 6,
) -> PanelBuilder:
    """A gauge between ``minimum`` and ``maximum``, one per series, coloured by ``steps``."""
    panel = (
        gauge_b.Panel()
        .min(minimum)
        .max(maximum)
        .color_scheme(dashboard_b.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .orientation(common.VizOrientation.AUTO)
        .reduce_options(_reduce("lastNotNull"))
        .show_threshold_labels(False)
        .show_threshold_markers(True)
    )
    return _panel(panel, title, description, targets, unit=unit, width=width, height=height, steps=steps)


def table(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str = "none",
    width: int = 24,
    height: int = 8,
    overrides: Iterable[Override] = (),
    transformations: Iterable[Json] = (),
    sort_by: str | None = None,
    descending: bool = True,
) -> PanelBuilder:
    """A table; ``unit`` applies to every column without an override (use overrides for money, times)."""
    panel = (
        table_b.Panel()
        .align(common.FieldTextAlignment.AUTO)
        .filterable(True)
        .cell_height(common.TableCellHeight.SM)
        .footer(common_b.TableFooterOptions().show(False).reducer([]))
        .show_header(True)
    )
    if sort_by:
        panel.sort_by([common_b.TableSortByFieldState().display_name(sort_by).desc(descending)])
    return _panel(
        panel,
        title,
        description,
        targets,
        unit=unit,
        width=width,
        height=height,
        steps=None,
        overrides=overrides,
        transformations=transformations,
    )


def row(title: str, *panels: PanelBuilder) -> tuple[str, tuple[PanelBuilder, ...]]:
    """A titled row of panels (laid out by :func:`dashboard`)."""
    return title, panels


# ---------------------------------------------------------------------------------------- variables


def _datasource_variable(name: str, label: str, plugin: str, default_uid: str) -> dashboard_b.DatasourceVariable:
    return (
        dashboard_b.DatasourceVariable(name)
        .label(label)
        .type(plugin)
        .current(model.VariableOption(selected=False, text=default_uid, value=default_uid))
        .hide(model.VariableHide.DONT_HIDE)
        .include_all(False)
        .multi(False)
        .regex("")
    )


def prometheus_datasource_variable(default_uid: str = "prometheus") -> dashboard_b.DatasourceVariable:
    """``$datasource``: which Prometheus to read (default: the provisioned one)."""
    return _datasource_variable("datasource", "Data source", "prometheus", default_uid)


def postgres_datasource_variable(default_uid: str = "spanmeter-ledger") -> dashboard_b.DatasourceVariable:
    """``$ledger``: which PostgreSQL datasource (SELECT-only ``spanmeter_grafana`` role) to read."""
    return _datasource_variable("ledger", "Ledger (PostgreSQL)", POSTGRES_TYPE, default_uid)


def query_variable(
    name: str,
    label: str,
    datasource: model.DataSourceRef,
    query: str,
    *,
    multi: bool = False,
    include_all: bool = False,
    all_value: str | None = None,
    default: str | None = None,
    refresh: int = 1,
) -> dashboard_b.QueryVariable:
    """A variable filled by a query (PromQL ``label_values(…)`` or SQL). ``default`` is the initial value;
    with ``include_all`` the default is All. ``all_value`` is what Grafana inserts, as is, for All (without
    it, All means every option, quoted one by one). ``refresh``: 1 on load, 2 on time range change."""
    if include_all:
        current = model.VariableOption(selected=True, text=["All"], value=["$__all"])
    else:
        current = model.VariableOption(selected=False, text=default or "", value=default or "")
    variable = (
        dashboard_b.QueryVariable(name)
        .label(label)
        .datasource(datasource)
        .query(query)
        .current(current)
        .hide(model.VariableHide.DONT_HIDE)
        .include_all(include_all)
        .multi(multi)
        .refresh(model.VariableRefresh(refresh))
        .regex("")
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if all_value is not None:
        variable.all_value(all_value)
    return variable


def textbox_variable(name: str, label: str, default: str, description: str) -> dashboard_b.TextBoxVariable:
    """A free-text variable (``$name``) with a default, e.g. a trace viewer's URL for data links."""
    option = model.VariableOption(selected=True, text=default, value=default)
    return (
        dashboard_b.TextBoxVariable(name)
        .label(label)
        .description(description)
        .current(option)
        .options([option])
        .default_value(default)
        .hide(model.VariableHide.DONT_HIDE)
    )


def tag_links(tag: str) -> list[dashboard_b.DashboardLink]:
    """A drop-down of every dashboard tagged ``tag``, keeping the time range (monitoring-mixin style)."""
    return [
        dashboard_b.DashboardLink(f"{tag} dashboards")
        .type(model.DashboardLinkType.DASHBOARDS)
        .as_dropdown(True)
        .icon("external link")
        .include_vars(False)
        .keep_time(True)
        .tags([tag])
        .target_blank(False)
    ]


# ---------------------------------------------------------------------------------------- dashboard


def _layout(builder: dashboard_b.Dashboard, rows: Sequence[tuple[str, Sequence[PanelBuilder]]]) -> None:
    """Row headers and panels with ``id`` and ``gridPos`` set, left to right, top to bottom; targets get
    ``refId`` A, B, …. Positions are set explicitly, so the SDK's own placement never moves a panel."""
    y = 0
    next_id = 1
    for title, panels in rows:
        builder.with_row(
            dashboard_b.Row(title).id(next_id).collapsed(False).grid_pos(model.GridPos(h=1, w=GRID_WIDTH, x=0, y=y))
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in panels:
            built = panel.build()
            w, h = built.grid_pos.w, built.grid_pos.h
            if x + w > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panel.id(next_id).grid_pos(model.GridPos(h=h, w=w, x=x, y=y))
            for index, target in enumerate(built.targets or []):
                target.ref_id = chr(ord("A") + index)
            builder.with_panel(panel)
            next_id += 1
            x += w
            line_height = max(line_height, h)
        y += line_height


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    tags: Sequence[str],
    variables: Sequence[cogbuilder.Builder[model.VariableModel]],
    rows: Sequence[tuple[str, Sequence[PanelBuilder]]],
    refresh: str = "30s",
    time_from: str = "now-6h",
    links: Sequence[dashboard_b.DashboardLink] = (),
) -> Json:
    """The dashboard JSON model: UTC, a stable ``uid``, ``tags`` and links to the dashboards sharing the
    first tag (so the three spanmeter dashboards link to each other)."""
    builder = (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(list(tags))
        .timezone("utc")
        .refresh(refresh)
        .time(time_from, "now")
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .fiscal_year_start_month(0)
        .live_now(False)
        .week_start("")
        .version(1)
        .links([*tag_links(tags[0]), *links])
        .variables(list(variables))
        .annotations([])
    )
    _layout(builder, rows)
    return json.loads(json.dumps(builder.build(), cls=JSONEncoder))
