"""End to end against a real Prometheus server: it scrapes a running `spanmeter serve` (1 s scrape) fed by
real OTLP traffic through the official exporter, and evaluates the test profile of the rules (same PromQL,
`for:` of 2 s, ledger-stall threshold 3 s). Every recording rule and every dashboard PromQL expression must
be valid and return data; the ledger-stalled alert must fire while the database is paused and resolve
after it resumes, and every span must then be in the ledger exactly once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

import spanmeter.dashboards as dashboards
from spanmeter.alerts import PROFILES, write_all
from spanmeter.billing import reconcile, subscriptions
from spanmeter.billing.ledger.embedded import EmbeddedPostgres
from spanmeter.billing.periods import Period
from support import SECOND, Collector, SpanFactory, exporter, ledger, require_tool, wait_until

pytestmark = pytest.mark.integration  # a real Prometheus

MS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, binary: str, directory: Path, target: str, rules: Path) -> None:
        self.port = _free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules / "*.yaml")],
            "scrape_configs": [{"job_name": "spanmeter", "static_configs": [{"targets": [target]}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (directory / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, timeout=60, what="Prometheus to be ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as err:
            return json.load(err)

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def alert_states(self, name: str) -> list[str]:
        return [a["state"] for a in self.api("alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Traffic:
    """What an instrumented Django + Celery service sends, through the official exporter, until stopped.

    Every batch is new spans; every batch is exported until acknowledged (what a durable queue does)."""

    def __init__(self, endpoint: str) -> None:
        self.exporter = exporter(endpoint, timeout=10)
        self.web = SpanFactory({"service.name": "docpipe-web"})
        self.worker = SpanFactory({"service.name": "docpipe-worker"})
        self.acknowledged_worker_spans = 0
        self.unavailable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def batch(self, n: int) -> list:
        route = {"http.request.method": "POST", "http.route": "api/documents/", "account_id": "acme"}
        return [
            self.web.span("POST api/documents/", route, 120 * MS, kind=SpanKind.SERVER),
            # a failing request: the docpipe-web SLO burns (and its burn-rate alert has something to show)
            self.web.span("POST api/documents/", route, 1_400 * MS, kind=SpanKind.SERVER, error=True),
            self.web.span("GET", {"http.request.method": "GET"}, 5 * MS, kind=SpanKind.SERVER),  # no account
            self.worker.span(
                "run/docpipe.extract",
                {
                    "celery.action": "run",
                    "celery.task_name": "docpipe.extract",
                    "account_id": "acme",
                    "job_id": f"j{n}",
                },
                300 * MS,
                kind=SpanKind.CONSUMER,
            ),
            self.worker.span(
                "tables", {"gpu.count": 1, "gpu.model": "h100", "account_id": "acme", "job_id": f"j{n}"}, 200 * MS
            ),
            self.worker.span(
                "chat",
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.usage.input_tokens": 100,
                    "gen_ai.usage.output_tokens": 20,
                    "account_id": "acme",
                    "job_id": f"j{n}",
                },
                50 * MS,
            ),
            self.worker.span("bad", {"gpu.count": 0, "account_id": "acme"}, 10 * MS),  # rejected: invalid_gpu_count
        ]

    def send(self, spans: list) -> None:
        while not self._stop.is_set() or spans:
            if self.exporter.export(spans) == SpanExportResult.SUCCESS:
                return
            self.unavailable += 1
            time.sleep(0.2)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            spans = self.batch(n)
            self.send(spans)
            self.send(spans[3:4])  # the same span again, as an exporter retry: a duplicate, never billed twice
            self.acknowledged_worker_spans += 1
            n += 1
            time.sleep(0.3)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive()


def _postgres_pids(data_dir: Path) -> list[int]:
    """The postmaster and its children (backends, writers), read from /proc."""
    postmaster = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:  # the field after the state is the parent pid
                children.append(int(stat.parent.name))
    return [postmaster, *children]


def _pause(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_prometheus_evaluates_every_rule_and_panel_and_the_stall_alert_fires_and_resolves(tmp_path: Path):
    binary = require_tool("prometheus")
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    collector = Collector(
        url,
        env={"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "2", "SPANMETER_BILLING_METRICS_INTERVAL_SECONDS": "1"},
    ).start()
    rules = tmp_path / "rules"
    write_all(rules, PROFILES["test"])
    prometheus = Prometheus(binary, tmp_path, collector.metrics_address, rules)
    traffic = Traffic(collector.endpoint)
    paused: list[int] = []
    try:
        now = datetime.now(UTC)
        month = Period.containing(now)
        with psycopg.connect(url) as conn:  # serve migrated the ledger; a subscription gives quota gauges
            subscriptions.set_subscription(
                conn, account_id="acme", plan_code="starter", pricing_version="v2_compute",
                valid_from=month.start, created_by="test",
            )  # fmt: skip
            conn.commit()
        # 2,000 worker-seconds of 3,600 included: the quota gauge exports acme (>= 50 %)
        big = SpanFactory({"service.name": "docpipe-worker"}).span(
            "run/long", {"celery.action": "run", "account_id": "acme"}, 2_000 * SECOND
        )
        assert traffic.exporter.export([big]) == SpanExportResult.SUCCESS
        with psycopg.connect(url) as conn:
            reconcile.reconcile(conn, month)
            conn.commit()
        traffic.start()

        # -- every recording rule records a series, with its slo and service labels ---------------------
        recorded = [
            (rule["record"], rule["labels"])
            for path in sorted(rules.glob("*.yaml"))
            for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]
            if "record" in rule
        ]
        assert len(recorded) > 100

        def missing_records() -> list[str]:
            missing = []
            for record, labels in recorded:
                selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                result = prometheus.query(f"{record}{{{selector}}}")
                assert result["status"] == "success", (record, result)
                values = [float(s["value"][1]) for s in result["data"]["result"]]
                if not values or any(v != v for v in values):  # absent, or NaN (no traffic in the window)
                    missing.append(f"{record}{{{selector}}}")
            return missing

        wait_until(lambda: not missing_records(), timeout=90, what="every recording rule to have a value")

        # the numbers mean what they say: half of docpipe-web's routed requests fail (1 of 3 entry spans)
        burn = prometheus.query('slo:burn_rate:rate5m{slo="docpipe-web-availability"}')["data"]["result"]
        # (a scrape may land while one batch is being counted: 5 % tolerance, the ratio is 66.7)
        assert abs(float(burn[0]["value"][1]) / ((1 / 3) / 0.005) - 1) < 0.05
        wait_until(
            lambda: "firing" in prometheus.alert_states("SpanmeterErrorBudgetBurn"),
            timeout=60,
            what="the docpipe-web burn-rate page to fire",
        )

        # -- every dashboard panel's PromQL is valid and returns data -------------------------------------
        def empty_panels() -> list[str]:
            empty = []
            for name, dashboard in dashboards.build_all().items():
                for title, expr in dashboards.prometheus_queries(dashboard):
                    result = prometheus.query(expr)
                    assert result["status"] == "success", f"{name} / {title}: {expr}: {result.get('error')}"
                    if not result["data"]["result"]:
                        empty.append(f"{name} / {title}: {expr}")
            return empty

        wait_until(lambda: not empty_panels(), timeout=60, what="every dashboard panel to return data")
        assert "firing" not in prometheus.alert_states("SpanmeterLedgerStalled")

        # -- pause the database: the ledger stalls, the alert fires; resume: it resolves -------------------
        paused = _postgres_pids(server.pgdata)
        _pause(paused, signal.SIGSTOP)
        wait_until(
            lambda: "firing" in prometheus.alert_states("SpanmeterLedgerStalled"),
            timeout=60,
            what="SpanmeterLedgerStalled to fire while PostgreSQL is paused",
        )
        stalled = next(a for a in prometheus.api("alerts")["data"]["alerts"]
                       if a["labels"]["alertname"] == "SpanmeterLedgerStalled")  # fmt: skip
        assert stalled["labels"]["severity"] == "critical"
        assert stalled["annotations"]["runbook_url"].endswith("/SpanmeterLedgerStalled.md")
        _pause(paused, signal.SIGCONT)
        paused = []
        wait_until(
            lambda: "firing" not in prometheus.alert_states("SpanmeterLedgerStalled"),
            timeout=60,
            what="SpanmeterLedgerStalled to resolve after PostgreSQL resumed",
        )
        traffic.stop()
        # the exporters really were refused while the ledger stalled (and retried, inside the exporter or here)
        assert collector.metrics()['spanmeter_export_requests_total{grpc_code="UNAVAILABLE"}'] >= 1
        # nothing acknowledged was lost, nothing retried was doubled
        assert ledger(
            url,
            "SELECT count(*), count(DISTINCT span_id) FROM usage_events WHERE meter_code = 'worker_seconds'"
            " AND account_id = 'acme' AND quantity < 1",
        ) == [(traffic.acknowledged_worker_spans, traffic.acknowledged_worker_spans)]
    finally:
        _pause(paused, signal.SIGCONT)
        traffic._stop.set()
        prometheus.stop()
        collector.kill()
        server.stop()
