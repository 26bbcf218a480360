"""The Grafana dashboards: the committed JSON is what the code generates, every dashboard is structurally
sound for Grafana (ids, layout, datasources, variables, units, links), every PromQL expression parses and
names metrics that exist, and every SQL panel runs, as Grafana would send it, against a real migrated
ledger logged in as the SELECT-only role ``spanmeter_grafana``, and shows the figures the billing code
computes."""

from __future__ import annotations

import importlib
import itertools
import json
import re
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo

from spanmeter.billing import adjustments, invoices, quotas, reconcile, subscriptions
from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from spanmeter.collector.billing_metrics import BillingMetrics
from spanmeter.collector.metrics import CollectorMetrics
from spanmeter.dashboards import (
    DASHBOARD_UIDS,
    JSON_DIR,
    MacroError,
    build_all,
    differences,
    expand_sql_macros,
    prometheus_queries,
    sql_queries,
    write_all,
)

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "dashboards" / "provisioning"
MODELS = build_all()
GRID = 24
OPERATIONS = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0004_operations")
DELTAS = importlib.import_module("spanmeter.billing.ledger.migrations.versions.0005_rollup_deltas")
GRANTED = (*OPERATIONS.READABLE_TABLES, *DELTAS.LIVE_VIEWS)
REGENERATE = "regenerate with `spanmeter dashboards render` (or `python -m spanmeter.dashboards`) and commit"
# Grafana built-ins and PostgreSQL macros a query may use without defining them.
BUILTINS = {"__rate_interval", "__interval", "__range", "__timeFilter", "__timeGroupAlias", "__timeFrom", "__timeTo"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def panels(model: dict) -> list[dict]:
    return [p for p in model["panels"] if p["type"] != "row"]


def provisioned() -> dict[str, str]:
    """Provisioned datasource uid → type."""
    config = yaml.safe_load((PROVISIONING / "datasources" / "spanmeter.yaml").read_text())
    return {d["uid"]: d["type"] for d in config["datasources"]}


# ------------------------------------------------------------------------------------- generated JSON


def test_the_committed_json_is_what_the_code_generates():
    found = differences(JSON_DIR)
    assert found == [], "\n".join([*found, REGENERATE])
    assert sorted(p.name for p in JSON_DIR.glob("*.json")) == sorted(f"{uid}.json" for uid in DASHBOARD_UIDS.values())


def test_every_dashboard_is_the_grafana_foundation_sdks_own_model():
    """The JSON is the pinned SDK's dashboard model: reading it back with the SDK and writing it again gives
    the same JSON (a hand-written key the SDK does not know would be lost; the ledger's SQL targets go
    through the PostgreSQL query variant the builder registers, not the SDK's catch-all)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    from spanmeter.dashboards.builder import LedgerQuery

    for name, model in MODELS.items():
        parsed = Dashboard.from_json(model)
        assert json.loads(json.dumps(parsed, cls=JSONEncoder)) == model, name
        sql_targets = [
            t for p in parsed.panels if p.type_val != "row" for t in p.targets or [] if hasattr(t, "raw_sql")
        ]
        assert all(isinstance(t, LedgerQuery) for t in sql_targets), name
    assert any(
        isinstance(t, LedgerQuery)
        for p in Dashboard.from_json(MODELS["spanmeter-billing.json"]).panels
        if p.type_val != "row"
        for t in p.targets or []
    )


@pytest.mark.integration  # a subprocess or a real server
def test_write_all_and_the_check_command_report_missing_changed_and_extra_files(tmp_path):
    written = write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(MODELS)
    assert differences(tmp_path) == []
    text = written[0].read_text()
    assert text.endswith("}\n") and json.loads(text) == MODELS[written[0].name]  # indent=2, sorted keys
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    written[0].write_text(text.replace('"timezone": "utc"', '"timezone": "browser"'))
    written[1].unlink()
    (tmp_path / "old-dashboard.json").write_text("{}\n")
    found = differences(tmp_path)
    assert len(found) == 3, found
    assert found[0].startswith(f"{written[0]}: differs") and '"timezone": "browser"' in found[0]
    assert found[1] == f"{written[1]}: missing"
    assert found[2].startswith(f"{tmp_path / 'old-dashboard.json'}: extra")

    check = [sys.executable, "-m", "spanmeter.dashboards", "--check", "--out", str(tmp_path)]
    stale = subprocess.run(check, capture_output=True, text=True)
    assert stale.returncode == 1 and "missing" in stale.stdout and "spanmeter dashboards render" in stale.stderr
    subprocess.run([sys.executable, "-m", "spanmeter.dashboards", "--out", str(tmp_path)], check=True)
    (tmp_path / "old-dashboard.json").unlink()
    fresh = subprocess.run(check, capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr


def test_building_twice_gives_the_same_json():
    assert json.dumps(build_all(), sort_keys=True) == json.dumps(MODELS, sort_keys=True)


# ------------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dashboard_conventions(name):
    model = MODELS[name]
    assert name == f"{model['uid']}.json" and model["uid"] in DASHBOARD_UIDS.values()
    assert model["timezone"] == "utc" and model["refresh"] and model["time"]["to"] == "now"
    assert "spanmeter" in model["tags"]
    assert {"type": "dashboards", "tags": ["spanmeter"]}.items() <= model["links"][0].items()
    assert model["links"][0]["keepTime"] is True
    assert model["title"].startswith("spanmeter / ") and model["description"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_panels_have_unique_ids_and_a_sane_non_overlapping_layout(name):
    everything = MODELS[name]["panels"]
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for panel in everything:
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= GRID, panel["title"]
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in itertools.combinations(boxes, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"
    assert everything[0]["type"] == "row" and everything[0]["gridPos"]["y"] == 0  # starts with a row header
    titles = [p["title"] for p in panels(MODELS[name])]
    assert len(titles) == len(set(titles)), "panel titles are unique (queries are reported by title)"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_panel_has_a_unit_a_description_and_a_datasource_that_exists(name):
    model = MODELS[name]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    sources = provisioned()
    for panel in panels(model):
        title = panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title!r} has no unit"
        assert len(panel["description"]) > 40, f"{title!r}: the description says what to do when it is bad"
        assert panel["targets"], title
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == panel["datasource"], f"{title!r}: one datasource per panel"
            if match := re.fullmatch(r"\$\{(\w+)\}", ref["uid"]):
                variable = variables.get(match.group(1))
                assert variable is not None and variable["type"] == "datasource", f"{title!r}: {ref}"
                assert variable["query"] == ref["type"], f"{title!r}: the variable lists {variable['query']}"
            else:
                assert sources.get(ref["uid"]) == ref["type"], f"{title!r}: datasource {ref} is not provisioned"
        assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_datasource_variables_default_to_the_provisioned_datasources(name):
    sources = provisioned()
    datasource_variables = [v for v in MODELS[name]["templating"]["list"] if v["type"] == "datasource"]
    assert datasource_variables, "a datasource variable lets users point the dashboard elsewhere"
    assert MODELS[name]["templating"]["list"][0]["type"] == "datasource"  # first, as in the mixins
    for variable in datasource_variables:
        assert sources[variable["current"]["value"]] == variable["query"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_variable_a_query_uses_is_defined_before_it_or_built_in(name):
    model = MODELS[name]
    defined: set[str] = set()
    for variable in model["templating"]["list"]:
        for used in _used(variable.get("query", "")) | _used(variable.get("datasource", {}).get("uid", "")):
            assert used in defined or used in BUILTINS, f"variable ${variable['name']} uses ${used} before it exists"
        defined.add(variable["name"])
    for panel in panels(model):
        for target in panel["targets"]:
            for used in _used(target.get("expr", "") + target.get("rawSql", "")):
                assert used in defined or used in BUILTINS, f"{panel['title']!r} uses undefined ${used}"


def _used(text: str) -> set[str]:
    return {a or b or c for a, b, c in _VARIABLE.findall(text)}


def test_rates_use_the_rate_interval_so_they_survive_scrape_interval_changes():
    for model in MODELS.values():
        for panel in panels(model):
            for target in panel["targets"]:
                for window in re.findall(r"\[([^\]]*)\]", target.get("expr", "")):
                    assert window == "$__rate_interval", f"{panel['title']!r}: [{window}]"


@pytest.mark.integration  # a subprocess or a real server
def test_every_promql_expression_parses(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Prometheus) is needed to check the dashboards' PromQL: install prometheus"
    rules = [
        {"record": f"dashboard:query{i}", "expr": expr}
        for i, (_, expr) in enumerate(q for model in MODELS.values() for q in prometheus_queries(model))
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "queries.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_queries_substitute_grafana_variables():
    pipeline = MODELS["spanmeter-pipeline.json"]
    queries = prometheus_queries(pipeline)
    assert not any("$" in expr for _, expr in queries)
    by_title = dict(queries)
    assert by_title["Throttled Export calls"] == (
        'sum by (limit) (rate(spanmeter_export_throttled_total{job="spanmeter"}[1m]))'
    )
    assert ("variable $service", 'count by (service) (spanmeter_service_requests_total{job="spanmeter"})') in queries
    slos = prometheus_queries(MODELS["spanmeter-slos.json"])
    assert ("variable $slo", "count by (slo) (slo:objective:ratio)") in slos
    assert ("Error budget remaining", 'max by (slo, service) (slo:error_budget_remaining:ratio{slo=~".*"})') in slos
    assert prometheus_queries(MODELS["spanmeter-billing.json"]) == []  # billing reads the ledger only


def test_every_spanmeter_metric_the_dashboards_query_is_exported_by_serve(fresh_db):
    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database)
    with psycopg.connect(fresh_db) as conn:
        reconcile.reconcile(conn, Period(2026, 10))  # so that the reconciliation gauges exist
    registry = CollectorRegistry()
    CollectorMetrics(registry, plan_codes=["growth"], gpu_models=["a100"])
    BillingMetrics(database, registry).refresh()  # what serve's billing thread does
    exported = set()
    for family in registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        exported |= {family.name + suffix for suffix in suffixes}
    queried = {
        metric
        for model in MODELS.values()
        for _, expr in prometheus_queries(model)
        for metric in re.findall(r"\bspanmeter_\w+", expr)
    }
    assert queried - exported == set()
    assert {"spanmeter_service_requests_total", "spanmeter_service_request_duration_seconds_bucket"} <= queried


def test_the_slo_dashboard_reads_the_recording_rules_and_draws_the_burn_rate_factors():
    model = MODELS["spanmeter-slos.json"]
    windows = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
    rules = {f"slo:{kind}:rate{w}" for kind in ("sli_errors", "sli_requests", "burn_rate") for w in windows} | {
        "slo:sli_errors:rate_period",
        "slo:sli_requests:rate_period",
        "slo:objective:ratio",
        "slo:error_budget:ratio",
        "slo:time_period:days",
        "slo:error_budget_remaining:ratio",
    }
    used = {m for _, expr in prometheus_queries(model) for m in re.findall(r"\bslo:\w+:\w+", expr)}
    assert used <= rules and "slo:error_budget_remaining:ratio" in used
    [slo] = [v for v in model["templating"]["list"] if v["name"] == "slo"]
    assert slo["query"] == "label_values(slo:objective:ratio, slo)" and slo["multi"] and slo["includeAll"]
    drawn = {
        step["value"]
        for panel in panels(model)
        if panel["title"].startswith("Burn rate") and panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]
        for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    }
    assert {14.4, 6, 3, 1} <= drawn
    assert any('alertname="SpanmeterErrorBudgetBurn"' in expr for _, expr in prometheus_queries(model))


def test_the_billing_dashboard_reads_only_tables_the_grafana_role_may_read():
    model = MODELS["spanmeter-billing.json"]
    assert {p["datasource"]["type"] for p in panels(model)} == {"grafana-postgresql-datasource"}
    tables = {t for _, sql in sql_queries(model) for t in re.findall(r"\b(?:FROM|JOIN)\s+([a-z_]+)\b(?!\s*\()", sql)}
    assert tables - {"ranked", "latest"} <= set(GRANTED)  # (subquery aliases aside)
    # usage reads folded rollups + pending deltas (never the folded table alone: it lags), never the raw ledger
    assert "usage_events" not in tables and "usage_rollups_hourly_live" in tables
    assert "usage_rollups_hourly" not in tables
    [account] = [v for v in model["templating"]["list"] if v["name"] == "account"]
    assert account["query"] == "SELECT DISTINCT account_id FROM subscriptions"
    assert account["multi"] and account["includeAll"]
    for title, sql in sql_queries(model):
        if "$__timeGroupAlias" in sql:
            assert sql.rstrip().endswith("ORDER BY 1"), f"{title!r}: time series are ordered by time"


# -------------------------------------------------------------------------------------------- macros

T0, T1 = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, 12, 30, 15, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("$__timeFilter(bucket_start)", "bucket_start BETWEEN '2026-11-01T00:00:00Z' AND '2026-11-03T12:30:15.25Z'"),
        ("$__timeFrom() $__timeTo()", "'2026-11-01T00:00:00Z' '2026-11-03T12:30:15.25Z'"),
        ("$__timeGroupAlias(t, '1h')", 'floor(extract(epoch from t)/3600)*3600 AS "time"'),
        ("$__timeGroup(t, '5m', 0)", "floor(extract(epoch from t)/300)*300"),
        ("$__timeGroup(t,'1d'), x", 'floor(extract(epoch from t)/86400)*86400 AS "time", x'),  # < 5.3 compat
        ("$__timeGroup(t, '30d')", "floor(extract(epoch from t)/2.592e+06)*2.592e+06"),  # Go's %v
        ("$__time(t)", 't AS "time"'),
        ("$__unixEpochFilter(s)", "s >= 1793491200 AND s <= 1793709015"),
        ("a IN ($account)", "a IN ('acme')"),
        ("a IN (${account:sqlstring})", "a IN ('acme')"),
        ("a IN (${account:raw})", "a IN (acme)"),
        ("$__from $__to", "1793491200000 1793709015250"),
    ],
)
def test_macros_expand_as_grafana_expands_them(sql, expected):
    assert expand_sql_macros(sql, T0, T1, {"account": "acme"}) == expected


def test_multi_value_variables_are_quoted_and_unknown_macros_or_variables_refused():
    assert expand_sql_macros("IN ($a)", T0, T1, {"a": ["x", "o'b"]}) == "IN ('x','o''b')"
    for sql, message in [
        ("$__timeFilterr(t)", "unknown macro"),
        ("$__interval", "unknown macro or built-in"),
        ("$__timeGroup(t)", "needs time column and interval"),
        ("$__timeGroup(t, 'soon')", "error parsing interval"),
        ("$__timeGroup(t, '1h', maybe)", "error parsing fill value"),
        ("IN ($acount)", r"\$acount is not a variable"),
    ]:
        with pytest.raises(MacroError, match=message):
            expand_sql_macros(sql, T0, T1, {"account": "acme"})
    with pytest.raises(MacroError, match="timezone"):
        expand_sql_macros("$__timeFrom()", datetime(2026, 11, 1), T1)


# ------------------------------------------------------------------------------------ the real ledger

_keys = itertools.count(1)


def usage(account, meter, quantity, when, plan="growth", **metadata):
    """A ledger row as the collector writes it."""
    micros = int(when.timestamp()) * 1_000_000 + when.microsecond
    unit = {"worker_seconds": "s", "gpu_seconds": "s", "api_requests": "{request}"}.get(meter, "{token}")
    key = uuid.UUID(int=next(_keys) + (uuid.uuid4().int >> 64 << 64)).hex
    job = f"job-{next(_keys)}" if meter == "worker_seconds" else None
    return (micros, key, account, job, plan, meter, 1, str(quantity), unit, "ab" * 16, "cd" * 8, json.dumps(metadata))


class Ledger:
    """A migrated ledger with a month of realistic billing data, and what the billing code says about it."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.grafana = make_conninfo(owner, user=OPERATIONS.READER_ROLE)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.this, self.last = Period.containing(self.now), Period.containing(self.now).previous()
        self.accounts = ["acct_o'brien", "acme", "globex"]
        # this month, in the past: the middle of the elapsed part
        self.mid_month = self.this.start + (self.now - self.this.start) / 2
        self.finalized_at = max(self.now, self.last.end + invoices.DEFAULT_DRIFT_WINDOW)
        self.time_from = self.last.start - timedelta(days=1)
        self.time_to = self.finalized_at + timedelta(hours=1)

    def seed(self) -> None:
        migrate.upgrade(resolve_database(self.owner, data_dir=None))
        with psycopg.connect(self.owner, autocommit=True) as conn:  # what a deployment does (compose: grafana-db-role)
            conn.execute(f"ALTER ROLE {OPERATIONS.READER_ROLE} WITH LOGIN")
        last_mid = self.last.start + timedelta(days=10, hours=3, minutes=15)
        with psycopg.connect(self.owner) as conn:
            for account, plan in (("acme", "growth"), ("globex", "scale"), ("acct_o'brien", "starter")):
                subscriptions.set_subscription(
                    conn,
                    account_id=account,
                    plan_code=plan,
                    pricing_version="v2_compute",
                    valid_from=self.last.start - timedelta(days=31),
                    created_by="test",
                )
            rows = []
            for when in (last_mid, self.mid_month):
                rows += [
                    usage("acme", "worker_seconds", "40000.5", when),
                    usage("acme", "gpu_seconds", "3600", when, **{"gpu.model": "a100"}),
                    usage("acme", "input_tokens", 120000, when, **{"gen_ai.model": "gpt-x"}),
                    usage("acme", "output_tokens", 30000, when, **{"gen_ai.model": "gpt-x"}),
                    usage("globex", "worker_seconds", "9000", when, plan="scale"),
                    usage("globex", "api_requests", 5000, when, plan=""),
                    usage("acct_o'brien", "api_requests", 1200, when, plan="starter"),
                ]
            LedgerWriter(conn).write_usage(rows)
            adjustments.record(
                conn,
                idempotency_key="refund-1",
                account_id="acme",
                meter_code="worker_seconds",
                quantity=Decimal("-500"),
                occurred_at=last_mid,
                reason="runaway job refunded",
                created_by="test",
                reference="TICKET-1",
            )
            conn.commit()
            self.invoice, created = invoices.finalize_invoice(
                conn, "acme", self.last, now=self.finalized_at, finalized_by="test"
            )
            assert created
            reconcile.reconcile(conn, self.last)
            conn.commit()
            quotas.refresh_month_to_date(conn, self.now)
            self.month_to_date = {a: quotas.month_to_date(conn, a, self.now) for a in self.accounts}

    def run(self, sql: str, account: str | list[str] = "*") -> tuple[list[str], list[tuple]]:
        """The panel's query as Grafana sends it, run as spanmeter_grafana."""
        expanded = expand_sql_macros(sql, self.time_from, self.time_to, {"account": account})
        with psycopg.connect(self.grafana, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(expanded)
            return [c.name for c in cur.description], cur.fetchall()


@pytest.fixture(scope="module")
def ledger(module_db) -> Ledger:
    ledger = Ledger(module_db)
    ledger.seed()
    return ledger


BILLING_SQL = sql_queries(MODELS["spanmeter-billing.json"])


@pytest.mark.parametrize(("title", "sql"), BILLING_SQL, ids=[t for t, _ in BILLING_SQL])
@pytest.mark.parametrize("account", ["*", "acme", ["acme", "acct_o'brien"]], ids=["all", "one", "several"])
def test_every_billing_query_runs_as_the_grafana_role_and_returns_rows(ledger, title, sql, account):
    columns, rows = ledger.run(sql, account)
    assert rows, f"{title!r} returned nothing for {account!r}"
    if "time" in columns:
        times = [row[columns.index("time")] for row in rows]
        assert times == sorted(times), f"{title!r}: a time series is ordered by time"
    if any(c in columns for c in ("Invoice so far", "Projected total", "Total", "Amount")):
        assert "Currency" in columns, f"{title!r}: money is shown with its currency"
    if "Account" in columns and account != "*":
        selected = {account} if isinstance(account, str) else set(account)
        assert {row[columns.index("Account")] for row in rows} <= selected, f"{title!r} ignores $account"


def test_the_billing_panels_show_what_the_billing_code_computes(ledger):
    sql = dict(BILLING_SQL)
    columns, rows = ledger.run(sql["Month-to-date bill and projection per account"])
    shown = {row[0]: dict(zip(columns, row, strict=True)) for row in rows}
    assert set(shown) == set(ledger.accounts)
    for account, mtd in ledger.month_to_date.items():
        assert shown[account]["Invoice so far"] == mtd.invoice_so_far
        assert shown[account]["Projected total"] == mtd.projected_total
        assert shown[account]["Currency"] == mtd.currency == "EUR"

    columns, rows = ledger.run(sql["Finalized invoices"])
    assert [(r[0], r[1], r[2], r[5]) for r in rows] == [
        (ledger.invoice.invoice_number, "acme", str(ledger.last), ledger.invoice.total)
    ]

    columns, rows = ledger.run(sql["Top accounts per meter"], "acme")
    top = {(r[0], r[1]): r[2] for r in rows}
    assert top[("worker_seconds", "acme")] == Decimal("80001.0")  # numeric, exact: both months
    assert isinstance(top[("gpu_seconds", "acme")], Decimal)

    columns, rows = ledger.run(sql["Usage per plan (hourly)"])
    assert {r[1] for r in rows} >= {"growth worker_seconds", "scale worker_seconds", "(no plan) api_requests"}

    columns, rows = ledger.run(sql["variable $account"])
    assert sorted(r[0] for r in rows) == sorted(ledger.accounts)

    columns, rows = ledger.run(sql["Reconciliation runs"])
    assert [r[columns.index("Period")] for r in rows] == [str(ledger.last)]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT count(*) FROM usage_events",
        "SELECT count(*) FROM rejected_spans",
        "SELECT count(*) FROM rejected_requests",
        "INSERT INTO subscriptions (account_id, plan_code, pricing_version, currency, valid_from, created_by)"
        " VALUES ('x', 'growth', 'v2_compute', 'EUR', now(), 'grafana')",
        "UPDATE account_month_to_date SET projected_total = 0",
        "DELETE FROM invoices",
    ],
)
def test_the_grafana_role_cannot_read_the_raw_ledger_nor_write_anything(ledger, statement):
    with (
        psycopg.connect(ledger.grafana, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
    ):
        conn.execute(statement)


def test_the_grafana_role_reads_every_table_granted_to_it(ledger):
    with psycopg.connect(ledger.grafana, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (OPERATIONS.READER_ROLE,)
        for table in GRANTED:
            conn.execute(f"SELECT * FROM {table} LIMIT 1")


# -------------------------------------------------------------------------------------- provisioning


def test_provisioning_declares_the_datasources_the_dashboards_use():
    config = yaml.safe_load((PROVISIONING / "datasources" / "spanmeter.yaml").read_text())
    assert config["apiVersion"] == 1
    by_uid = {d["uid"]: d for d in config["datasources"]}
    assert set(by_uid) == {"prometheus", "spanmeter-ledger"}
    assert by_uid["prometheus"]["type"] == "prometheus" and by_uid["prometheus"]["url"] == "$PROMETHEUS_URL"
    ledger = by_uid["spanmeter-ledger"]
    assert ledger["type"] == "grafana-postgresql-datasource"
    assert ledger["user"] == OPERATIONS.READER_ROLE  # never the owner
    assert ledger["secureJsonData"]["password"] == "$GRAFANA_DB_PASSWORD"  # from the environment, not the file
    assert ledger["jsonData"]["database"].startswith("$") and ledger["jsonData"]["sslmode"].startswith("$")
    used = {
        v["current"]["value"]
        for model in MODELS.values()
        for v in model["templating"]["list"]
        if v["type"] == "datasource"
    }
    assert used == set(by_uid)


def test_the_dashboard_provider_loads_the_generated_json_into_the_spanmeter_folder():
    config = yaml.safe_load((PROVISIONING / "dashboards" / "spanmeter.yaml").read_text())
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file" and provider["folder"] == "spanmeter"
    assert provider["options"]["path"].startswith("/")
    assert provider["allowUiUpdates"] is False  # the JSON is generated: UI edits would be lost


def test_the_top_jobs_panel_links_each_job_to_its_trace_without_reading_raw_rows(ledger):
    sql = dict(BILLING_SQL)["Top jobs per account and meter (links to their traces)"]
    columns, rows = ledger.run(sql, "acme")
    shown = [dict(zip(columns, row, strict=True)) for row in rows]
    with psycopg.connect(ledger.owner) as conn:
        want = conn.execute(
            "SELECT meter_code, coalesce(job_id, ''), count(*), sum(quantity), min(trace_id) FROM usage_events"
            " WHERE account_id = 'acme' GROUP BY 1, 2"
        ).fetchall()
    assert {(r["Meter"], r["Job"], r["Rows"], r["Quantity"], r["Trace"]) for r in shown} == set(want)
    model = MODELS["spanmeter-billing.json"]
    [panel] = [p for p in panels(model) if p["title"].startswith("Top jobs")]
    [link] = next(o for o in panel["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Trace")["properties"]
    assert link["value"][0]["url"] == "${trace_viewer}${__value.raw}"
    [viewer] = [v for v in model["templating"]["list"] if v["name"] == "trace_viewer"]
    assert viewer["type"] == "textbox" and viewer["query"].startswith("http")
    # the function is the only door: the role still cannot read the raw ledger, and a range over 93 days is refused
    with psycopg.connect(ledger.grafana, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1 FROM usage_events LIMIT 1")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="narrow the time range"):
            conn.execute("SELECT * FROM spanmeter_top_jobs(ARRAY['acme'], now() - interval '200 days', now(), 10)")
