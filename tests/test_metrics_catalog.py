"""spanmeter/metrics_catalog.py is the one place a ``spanmeter_*`` metric is declared.

What the running code exposes (a scrape of the collector's and the instrumentation's registries), what the
source tree declares (read with ``ast``), what the README's metrics table lists and what importing the
catalog loads are held against the catalog.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spanmeter import metrics_catalog
from spanmeter.billing import reconcile
from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.periods import Period
from spanmeter.collector.billing_metrics import BillingMetrics
from spanmeter.collector.metrics import CollectorMetrics, ReadReplicaMetrics, RollupMetrics, gauge_family, metric
from spanmeter.collector.webhooks import WebhookMetrics
from spanmeter.metrics_catalog import CATALOG, Metric, by_name

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("collector", "billing", "instrumentation", "spanmeter", "demo", "alerts", "dashboards", "bench")
DECLARING = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}  # and every *MetricFamily
# Declarations with a literal name still outside the catalog, to be switched to it (then remove them here):


def exposed_families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``{exposed name: (type, label names)}`` of the spanmeter_* families of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("spanmeter_"):
            continue
        stem = family.name.removesuffix("_created")
        if stem != family.name and stem + "_total" in {m.name for m in CATALOG}:
            continue  # a counter's creation time: the application's registry keeps *_created
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        found[name] = (family.type, frozenset(labels))
    return found


def assert_in_catalog(families: dict[str, tuple[str, frozenset[str]]]) -> None:
    for name, (kind, labels) in families.items():
        entry = by_name(name)  # KeyError: exposed but not in the catalog
        assert (name, kind) == (name, entry.type)
        assert labels <= set(entry.labels), name  # a family without samples shows no labels


def test_every_series_serve_exposes_is_in_the_catalog_with_its_type_and_labels(fresh_db):
    database = resolve_database(fresh_db, data_dir=None)
    migrate.upgrade(database)
    with psycopg.connect(fresh_db) as conn:
        reconcile.reconcile(conn, Period(2026, 10))  # so that the reconciliation gauges exist
    registry = CollectorRegistry()
    collector = CollectorMetrics(registry, plan_codes=["growth"], gpu_models=["a100"])
    collector.observe_service_request("checkout", "GET /cart", "ok", 0.2)
    RollupMetrics(registry)
    ReadReplicaMetrics(registry)
    WebhookMetrics(registry)
    BillingMetrics(database, registry).refresh()  # what serve's billing thread does

    families = exposed_families(generate_latest(registry).decode())
    assert_in_catalog(families)
    server_side = {m.name for m in CATALOG if m.component != "instrumentation"}
    assert set(families) == server_side
    labelled = {name for name, (_, labels) in families.items() if labels}
    for name in labelled:  # the quota gauge has no samples: no account is near a quota here
        assert families[name][1] == set(by_name(name).labels), name
    assert families["spanmeter_service_request_duration_seconds"] == ("histogram", {"service", "operation"})
    assert families["spanmeter_build_info"] == ("gauge", {"version", "metering"})


@pytest.mark.integration  # a subprocess or a real server
def test_the_instrumentations_series_are_in_the_catalog():
    script = """
import sys
from prometheus_client import generate_latest
from spanmeter.instrumentation import metrics
metrics.SPANS_EXPORTED.inc()
metrics.DEGRADED.labels("provider").set(1)
sys.stdout.write(generate_latest().decode())
"""
    text = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    families = exposed_families(text)
    assert_in_catalog(families)
    assert families == {m.name: (m.type, frozenset(m.labels)) for m in CATALOG if m.component == "instrumentation"}


def test_the_factory_builds_what_the_entry_says_merge_included():
    registry = CollectorRegistry()
    for entry in CATALOG:
        built = metric(entry, registry)
        assert built._type == entry.type and tuple(built._labelnames) == entry.labels
        if entry.type == "gauge":
            expected = entry.merge if entry.merge in ("max", "livemax", "livesum") else "all"
            assert built._multiprocess_mode == expected, entry.name
        if entry.buckets is not None:
            assert tuple(built._upper_bounds[:-1]) == entry.buckets
    assert by_name("spanmeter_ledger_last_commit_timestamp_seconds").merge == "max"
    assert by_name("spanmeter_oldest_pending_span_age_seconds").merge == "livemax"
    assert by_name("spanmeter_ledger_pending_requests").merge == "livesum"


def test_a_custom_collectors_gauge_is_built_from_its_entry_too():
    quota = gauge_family(by_name("spanmeter_account_quota_used_ratio"))
    quota.add_metric(["acme", "worker_seconds"], 0.75)
    delta = gauge_family(by_name("spanmeter_reconciliation_delta"), 0.0)
    registry = CollectorRegistry()

    class Snapshot:
        def collect(self):
            yield quota
            yield delta

    registry.register(Snapshot())
    families = exposed_families(generate_latest(registry).decode())
    assert families == {
        "spanmeter_account_quota_used_ratio": ("gauge", {"account_id", "meter"}),
        "spanmeter_reconciliation_delta": ("gauge", set()),
    }
    with pytest.raises(ValueError, match="is a counter"):
        gauge_family(by_name("spanmeter_billing_metrics_refresh_errors_total"))


def test_each_component_merges_the_way_serve_processes_n_does():
    for entry in CATALOG:
        if entry.component == "collector":  # the receivers: summed, or merged by their gauge mode
            assert entry.merge == "sum" if entry.type != "gauge" else entry.merge in ("max", "livemax", "livesum")
        elif entry.component == "instrumentation":
            assert entry.merge == "application", entry.name
        else:  # rollup, replica, billing: the supervisor alone
            assert entry.merge == "supervisor", entry.name


def test_an_entry_that_breaks_the_naming_rules_is_refused_with_every_problem():
    with pytest.raises(ValueError, match=r"_total.*buckets"):
        Metric("spanmeter_lag", "counter", "help", buckets=(1.0,))
    with pytest.raises(ValueError, match="unit 'seconds'"):
        Metric("spanmeter_lag_millis", "gauge", "help", unit="seconds")
    with pytest.raises(ValueError, match="spanmeter_"):
        Metric("lag_seconds", "gauge", "help", unit="seconds")


def literal_declarations(source: str) -> set[tuple[str, str, tuple[str, ...]]]:
    """``(name, class, label names)`` of every prometheus_client metric built with a literal name."""
    tree = ast.parse(source)
    declaring: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
            for alias in node.names:
                if alias.name in DECLARING or alias.name.endswith("MetricFamily"):
                    declaring.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name.startswith("prometheus_client")}
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in declaring:
            kind = func.id
        elif isinstance(func, ast.Attribute) and ast.unparse(func.value).split(".")[0] in modules:
            kind = func.attr
            if kind not in DECLARING and not kind.endswith("MetricFamily"):
                continue
        else:
            continue
        name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            labels = node.args[2] if len(node.args) > 2 else None
            labels = labels or next((k.value for k in node.keywords if k.arg in ("labels", "labelnames")), None)
            label_names = tuple(ast.literal_eval(labels)) if labels is not None else ()
            found.add((name.value, kind, label_names))
    return found


def test_the_detector_finds_a_declaration_in_any_spelling():
    source = """
import prometheus_client as p
from prometheus_client import Counter as C
from prometheus_client.core import GaugeMetricFamily
from collections import Counter
C("spanmeter_a", "help", ["x"])
p.Histogram(name="spanmeter_b", documentation="help")
GaugeMetricFamily("spanmeter_c", "help", labels=["y", "z"])
Counter("not a metric".split())
"""
    assert literal_declarations(source) == {
        ("spanmeter_a", "C", ("x",)),
        ("spanmeter_b", "Histogram", ()),
        ("spanmeter_c", "GaugeMetricFamily", ("y", "z")),
    }


def test_no_metric_is_declared_outside_the_catalog():
    found = {}
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            declarations = literal_declarations(path.read_text())
            if declarations:
                found[str(path.relative_to(ROOT))] = declarations
    assert found == {}  # every spanmeter_* metric is declared in spanmeter/metrics_catalog.py, nowhere else


def readme_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(spanmeter_\w+)` \| (\w+) \|([^|]*)\|", line)
        if match:
            rows[match[1]] = (match[2], tuple(re.findall(r"`(\w+)`", match[3])))
    return rows


def test_the_readme_metrics_tables_list_every_catalog_entry_and_nothing_else():
    assert readme_metrics() == {m.name: (m.type, m.labels) for m in CATALOG}


@pytest.mark.integration  # a subprocess or a real server
def test_importing_the_catalog_loads_the_standard_library_only():
    script = """
import json, sys
before = set(sys.modules)
import spanmeter.metrics_catalog
print(json.dumps(sorted(set(sys.modules) - before)))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    loaded = json.loads(out)
    assert "spanmeter.metrics_catalog" in loaded
    outside = {m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names} - {
        "spanmeter",
        "spanmeter.metrics_catalog",
    }
    assert outside == set()


@pytest.mark.integration  # a subprocess or a real server
def test_the_instrumentation_imports_only_the_catalog_and_the_attribute_contract_from_spanmeter():
    allowed = {"spanmeter.attributes", "spanmeter.metrics_catalog"}
    for path in sorted((ROOT / "instrumentation").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("spanmeter"):
                names = {node.module} if node.module != "spanmeter" else {f"spanmeter.{a.name}" for a in node.names}
                assert names <= allowed, (path.name, names)
            elif isinstance(node, ast.Import):
                assert not {a.name for a in node.names if a.name.startswith("spanmeter")} - allowed, path.name
    script = """
import json, sys
import spanmeter.instrumentation.metrics, spanmeter.instrumentation.processors, spanmeter.instrumentation.exporting
print(json.dumps(sorted(m for m in sys.modules if m.startswith("spanmeter."))))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    server_side = [m for m in json.loads(out) if m.startswith(("spanmeter.collector", "spanmeter.billing"))]
    assert server_side == []


def test_every_metric_is_declared_once_with_a_unique_constant():
    constants = [v for v in vars(metrics_catalog).values() if isinstance(v, Metric)]
    assert len(constants) == len(CATALOG) == len({m.name for m in CATALOG})
    assert len(CATALOG) == 51
