"""The alert rules against the real promtool: generated files are current and valid, every alert has a
case that fires and one that stays quiet, a runbook, and the mixin-style labels and annotations."""

from __future__ import annotations

import re
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from spanmeter.alerts import PROFILES, alert_names, differences, load_spec, render
from spanmeter.alerts.slo import BURN_RATE_WINDOWS, SLOSpecError, parse_spec
from support import SPANMETER, require_tool

pytestmark = pytest.mark.integration  # promtool and rendering runs

ALERTS = Path(render.__file__).resolve().parent
RULE_FILES = sorted((ALERTS / "rules").glob("*.yaml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yaml"))
RUNBOOK_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]


def _rules(text: str) -> list[dict]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def _alert_rules() -> list[dict]:
    return [r for path in RULE_FILES for r in _rules(path.read_text()) if "alert" in r]


def test_the_committed_rules_are_what_the_spec_and_catalog_render():
    assert [p.name for p in RULE_FILES] == ["spanmeter-alerts.rules.yaml", "spanmeter-slos.rules.yaml"]
    stale = differences()
    assert not stale, "\n".join(stale) + "\nrun `spanmeter alerts render` and commit alerts/rules/"
    checked = subprocess.run([SPANMETER, "alerts", "render", "--check"], capture_output=True, text=True)
    assert (checked.returncode, checked.stdout.strip()) == (0, "up to date")


def test_promtool_accepts_the_production_and_the_test_profile_rules(tmp_path: Path):
    promtool = require_tool("promtool")
    render.write_all(tmp_path, PROFILES["test"])
    for files in (RULE_FILES, sorted(tmp_path.glob("*.yaml"))):
        checked = subprocess.run([promtool, "check", "rules", *map(str, files)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass_and_every_alert_has_a_firing_and_a_quiet_case():
    promtool = require_tool("promtool")
    assert TEST_FILES, "no promtool test files under alerts/tests/"
    ran = subprocess.run([promtool, "test", "rules", *map(str, TEST_FILES)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        document = yaml.safe_load(path.read_text())
        assert all((path.parent / f).resolve() in [p.resolve() for p in RULE_FILES] for f in document["rule_files"])
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
                for alert in case.get("exp_alerts") or []:  # the annotations are asserted, not just the name
                    assert {"summary", "description", "runbook_url", "dashboard_url"} <= set(alert["exp_annotations"])
    assert sorted(fires) == alert_names(), "alerts without a case that fires"
    assert sorted(quiet) == alert_names(), "alerts without a case that stays quiet"


def test_every_alert_follows_the_mixin_conventions():
    from spanmeter.dashboards import DASHBOARD_UIDS

    names = set()
    for rule in _alert_rules():
        name = rule["alert"]
        names.add(name)
        assert re.fullmatch(r"Spanmeter[A-Z][A-Za-z]+", name)
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        annotations = rule["annotations"]
        assert annotations["summary"].endswith(".") and "{{" not in annotations["summary"]
        assert "{{ $value" in annotations["description"] or "{{ $labels" in annotations["description"]
        assert annotations["runbook_url"].endswith(f"/alerts/runbooks/{name}.md")
        uid = re.search(r"/d/([a-z-]+)", annotations["dashboard_url"]).group(1)
        assert uid in DASHBOARD_UIDS.values()
    assert sorted(names) == alert_names()


def test_every_alert_has_a_runbook_with_the_four_sections_and_every_runbook_an_alert():
    runbooks = {p.stem: p for p in (ALERTS / "runbooks").glob("*.md") if p.name != "README.md"}
    assert sorted(runbooks) == alert_names()
    for name, path in runbooks.items():
        text = path.read_text()
        headings = re.findall(r"^## (\w+)", text, flags=re.MULTILINE)
        assert [h for h in headings if h in RUNBOOK_SECTIONS] == RUNBOOK_SECTIONS, f"{path.name}: {headings}"
        assert name in text


def test_burn_rate_rows_follow_the_workbook_and_scale_with_the_period():
    slos = {s.name: s for s in load_spec(ALERTS / "slos.yaml")}
    assert set(slos) == {"ingest-availability", "ingest-freshness", "docpipe-web-availability", "docpipe-web-latency"}
    thirty = slos["ingest-availability"]
    assert [(w.long, w.short, thirty.factor(w), w.severity) for w in BURN_RATE_WINDOWS] == [
        ("1h", "5m", Decimal("14.4"), "critical"),
        ("6h", "30m", Decimal("6"), "critical"),
        ("1d", "2h", Decimal("3"), "warning"),
        ("3d", "6h", Decimal("1"), "warning"),
    ]
    burn = [r for r in _alert_rules() if r["alert"] == "SpanmeterErrorBudgetBurn"]
    assert len(burn) == 4 * len(slos)
    page = next(r for r in burn if r["labels"] == {**r["labels"], "slo": "ingest-availability", "long_window": "1h"})
    assert "> 14.4" in page["expr"] and "* 3600 >= 20" in page["expr"] and page["for"] == "2m"
    # a 28-day SLO keeps the same budget fractions: the factors scale with the period
    short = parse_spec(
        {"slos": [{"name": "x", "service": "s", "objective": 0.99, "period": "28d",
                   "sli": {"events": {"errors": "e_total", "total": "t_total"}}}]},
        {},
    )[0]  # fmt: skip
    assert [short.factor(w) for w in BURN_RATE_WINDOWS] == [
        Decimal("13.44"), Decimal("5.6"), Decimal("2.8"), Decimal(1),  # 0.93 is clamped: under 1 the budget lasts
    ]  # fmt: skip


def test_recording_rules_record_numerators_and_denominators_per_window():
    records = {r["record"] for path in RULE_FILES for r in _rules(path.read_text()) if "record" in r}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert {
            f"slo:sli_errors:rate{window}",
            f"slo:sli_requests:rate{window}",
            f"slo:burn_rate:rate{window}",
        } <= records
    assert {"slo:error_budget_remaining:ratio", "slo:sli_errors:rate_period", "slo:objective:ratio"} <= records
    assert not [r for r in records if "avg" in r]


def test_a_bad_slo_spec_is_reported_field_by_field(tmp_path: Path):
    spec = {
        "slos": [
            {"name": "Bad Name", "service": "", "objective": 1.5, "period": "31d",
             "sli": {"events": {"errors": "e_total"}}},
            {"name": "lat", "service": "s", "objective": 0.99,
             "sli": {"latency": {"metric": "spanmeter_pipeline_lag_seconds", "threshold_seconds": 45}}},
        ]
    }  # fmt: skip
    with pytest.raises(SLOSpecError) as raised:
        parse_spec(spec, render.known_buckets())
    problems = "\n".join(raised.value.problems)
    for expected in ("`name`", "`service`", "`objective`", "`period`", "`errors` and `total`", "not a bucket"):
        assert expected in problems
    path = tmp_path / "slos.yaml"
    path.write_text(yaml.safe_dump(spec))
    ran = subprocess.run(
        [SPANMETER, "alerts", "render", "--spec", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 2 and "not a bucket of spanmeter_pipeline_lag_seconds" in ran.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_deployment_renders_its_own_links_and_job(tmp_path: Path):
    ran = subprocess.run(
        [SPANMETER, "alerts", "render", "--out", str(tmp_path), "--runbook-base-url", "https://wiki.example/rb",
         "--grafana-url", "https://grafana.example", "--job", "metering"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    rules = [r for r in _rules((tmp_path / "spanmeter-alerts.rules.yaml").read_text())]
    stalled = next(r for r in rules if r["alert"] == "SpanmeterLedgerStalled")
    assert stalled["annotations"]["runbook_url"] == "https://wiki.example/rb/SpanmeterLedgerStalled.md"
    assert stalled["annotations"]["dashboard_url"] == "https://grafana.example/d/spanmeter-pipeline"
    assert 'job="metering"' in stalled["expr"] and 'job="spanmeter"' not in stalled["expr"]


def test_every_runbook_quotes_its_alert_expression_and_for_as_rendered():
    """The responder reads the runbook next to the alert: the PromQL and the `for` it quotes are the rule's."""
    for rule in _alert_rules():
        if rule["alert"] == "SpanmeterErrorBudgetBurn":
            continue  # one rule per SLO and window: its runbook explains the family
        text = (ALERTS / "runbooks" / f"{rule['alert']}.md").read_text()
        meaning = text.split("## Impact")[0]
        assert rule["expr"] in meaning, f"{rule['alert']}: the runbook's Meaning does not quote the rule's expr"
        assert f"`for: {rule['for']}`" in meaning, f"{rule['alert']}: the runbook states another `for`"
