"""The command line as a newcomer uses it: embedded default, db url/stop, usage formats, bad config, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import grpc
import psycopg
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult

from spanmeter.billing.ledger.embedded import EmbeddedPostgres
from support import SPANMETER, Collector, SpanFactory, exporter, raw_export, request_bytes, wait_until

pytestmark = pytest.mark.integration  # the spanmeter command, run as a subprocess

ROOT = Path(__file__).resolve().parent.parent
MS = 1_000_000


def run(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SPANMETER, *args], capture_output=True, text=True, timeout=120, check=check, env={**os.environ, **(env or {})}
    )


def test_embedded_default_serve_example_and_usage(tmp_path):
    """The quick start: serve on the embedded database, send the example spans, read usage."""
    data_dir = tmp_path / "data"
    env = {"SPANMETER_DATA_DIR": str(data_dir)}
    serve = subprocess.Popen(
        [SPANMETER, "serve", "--otlp-endpoint", "127.0.0.1:0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    try:
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if line.startswith("listening "):
                break
        text = "".join(lines)
        assert f"embedded PostgreSQL in {data_dir}" in text
        endpoint = line.split()[1].split("=", 1)[1]
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "send_spans.py")],
            check=True,
            timeout=60,
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{endpoint}"},
        )
        usage = json.loads(run("usage", "--account", "acme", "--format", "json", env=env).stdout)
        assert {m["meter_code"]: m["quantity"] for m in usage["meters"]} == {
            "api_requests": "1",
            "gpu_seconds": "4.0",
            "input_tokens": "1200",
            "output_tokens": "300",
            "worker_seconds": "1.3",
        }
    finally:
        serve.terminate()
        assert serve.wait(60) == 0
    url = run("db", "url", env=env).stdout.strip().splitlines()[-1]
    psql = Path(EmbeddedPostgres._bin("psql"))
    out = subprocess.run(
        [str(psql), url, "-tAc", "SELECT count(*) FROM usage_events"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "5"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM usage_events").fetchone() == (5,)
    assert run("db", "stop", env=env).stdout.strip() == "embedded PostgreSQL stopped"
    assert run("db", "stop", env=env).stdout.strip() == "embedded PostgreSQL was not running"


def test_usage_table_and_csv(collector, module_db):
    f = SpanFactory()
    spans = [f.span("run", {"account_id": "acct-cli", "celery.action": "run"}, 1500 * MS) for _ in range(2)]
    spans.append(f.span("gpu", {"account_id": "acct-cli", "gpu.count": 3}, 1000 * MS))
    assert exporter(collector.endpoint).export(spans) == SpanExportResult.SUCCESS
    table = run("usage", "--account", "acct-cli", "--database-url", module_db).stdout.splitlines()
    assert table[1].split() == ["meter", "quantity", "adjustments", "adjusted", "unit", "events"]
    assert table[2].split() == ["gpu_seconds", "3.0", "0", "3.0", "s", "1"]
    assert table[3].split() == ["worker_seconds", "3.0", "0", "3.0", "s", "2"]
    csv_lines = run(
        "usage",
        "--account",
        "acct-cli",
        "--database-url",
        module_db,
        "--format",
        "csv",
        "--from",
        "2020-01-01",
        "--to",
        "2100-01-01",
    ).stdout.splitlines()
    assert csv_lines == [
        "account_id,from,to,meter_code,unit,quantity,events,adjustments,adjusted",
        "acct-cli,2020-01-01T00:00:00Z,2100-01-01T00:00:00Z,gpu_seconds,s,3.0,1,0,3.0",
        "acct-cli,2020-01-01T00:00:00Z,2100-01-01T00:00:00Z,worker_seconds,s,3.0,2,0,3.0",
    ]
    empty = run(
        "usage", "--account", "acct-cli", "--database-url", module_db, "--from", "2020-01-01", "--to", "2020-02-01"
    ).stdout
    assert "no usage in this period" in empty


def test_bad_configuration_names_every_bad_setting(tmp_path):
    result = run(
        "serve",
        env={
            "SPANMETER_OTLP_ENDPOINT": "nowhere",
            "SPANMETER_METRICS_PORT": "abc",
            "SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "-1",
            "SPANMETER_DATABASE_URL": "mysql://x@y/z",
            "SPANMETER_DATA_DIR": str(tmp_path),
        },
        check=False,
    )
    assert result.returncode == 2
    for name in (
        "SPANMETER_OTLP_ENDPOINT",
        "SPANMETER_METRICS_PORT",
        "SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS",
        "SPANMETER_DATABASE_URL",
    ):
        assert name in result.stderr
    assert "HOST:PORT" in result.stderr
    assert not (tmp_path / "postgres").exists()  # failed before touching anything
    bad_date = run(
        "usage", "--account", "a", "--from", "yesterday", env={"SPANMETER_DATA_DIR": str(tmp_path)}, check=False
    )
    assert bad_date.returncode == 2 and "--from 'yesterday'" in bad_date.stderr


def test_sigterm_commits_in_flight_and_exits_zero(fresh_db):
    c = Collector(fresh_db).start()
    f = SpanFactory()
    body = request_bytes([f.span("run", {"account_id": "acct-term", "celery.action": "run"}, 700 * MS)])
    with psycopg.connect(fresh_db) as blocker:
        blocker.execute("LOCK TABLE usage_events IN EXCLUSIVE MODE")  # the commit must wait for us
        results = []
        sender = threading.Thread(target=lambda: results.append(raw_export(c.endpoint, body)))
        sender.start()
        wait_until(lambda: c.metrics()["spanmeter_ledger_pending_requests"] >= 1, 10, 0.05, "a pending request")
        c.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert c.proc.poll() is None  # still draining
    # lock released: the in-flight request commits, is acknowledged, and the process exits 0
    sender.join(30)
    assert [r.code for r in results] == [grpc.StatusCode.OK]
    assert c.proc.wait(30) == 0
    assert "spanmeter: stopped" in "\n".join(c.output)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT sum(quantity) FROM usage_events WHERE account_id = 'acct-term'").fetchone() == (
            Decimal("0.7"),
        )


def _one_message(result: subprocess.CompletedProcess, *expected: str) -> None:
    """A failure a person can act on: exit 2, a short message naming the setting and the fix, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def test_read_only_commands_never_create_a_ledger_and_say_where_they_looked(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [SPANMETER, "usage", "--account", "acme"], capture_output=True, text=True, timeout=120, cwd=elsewhere,
        env={k: v for k, v in os.environ.items() if k not in ("SPANMETER_DATA_DIR", "SPANMETER_DATABASE_URL")},
    )  # fmt: skip
    _one_message(result, "no ledger here", str(elsewhere / ".spanmeter"), "--data-dir")
    assert not (elsewhere / ".spanmeter").exists()  # it used to start a second embedded server here
    for command in (["dead-letter", "list"], ["invoice", "--account", "acme", "--period", "2026-11"]):
        _one_message(run(*command, "--data-dir", str(elsewhere / "none"), check=False), "no ledger here")
    assert not (elsewhere / "none").exists()


def test_database_failures_are_one_message_naming_the_setting(fresh_db, postgres_admin):
    unreachable = run("usage", "--account", "a", "--database-url", "postgresql://u@127.0.0.1:1/x", check=False)
    _one_message(unreachable, "cannot use the ledger database", "SPANMETER_DATABASE_URL")
    from psycopg.conninfo import make_conninfo

    stranger = run("usage", "--account", "a", "--database-url", make_conninfo(fresh_db, user="nobody_t"), check=False)
    _one_message(stranger, "cannot use the ledger database", "nobody_t")
    empty = run("usage", "--account", "a", "--database-url", fresh_db, check=False)  # reachable, never migrated
    _one_message(empty, "spanmeter db upgrade")
    debug = run("usage", "--account", "a", "--database-url", fresh_db, env={"SPANMETER_DEBUG": "1"}, check=False)
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # SPANMETER_DEBUG=1 shows it


def test_ports_in_use_and_an_unusable_data_dir_name_the_setting(tmp_path, fresh_db):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    common = ["serve", "--database-url", fresh_db, "--allow-owner"]
    try:
        metrics = run(*common, "--otlp-endpoint", "127.0.0.1:0", "--metrics-port", port, check=False)
        _one_message(metrics, "SPANMETER_METRICS_PORT", port)
        otlp = run(*common, "--otlp-endpoint", f"127.0.0.1:{port}", "--metrics-port", "0", check=False)
        _one_message(otlp, "SPANMETER_OTLP_ENDPOINT", port)
    finally:
        busy.close()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    data_dir = run("usage", "--account", "a", "--data-dir", str(a_file / "sub"), check=False)
    _one_message(data_dir, "no ledger here")
    upgrade = run("db", "upgrade", "--data-dir", str(a_file / "sub"), check=False)
    _one_message(upgrade, "SPANMETER_DATA_DIR", str(a_file / "sub"))


def _without(tmp_path, *packages: str) -> dict[str, str]:
    """An environment in which importing ``packages`` fails as if they were not installed."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _NoExtra:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {packages!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoExtra())\n"
    )
    return {"PYTHONPATH": str(tmp_path), "SPANMETER_DATA_DIR": str(tmp_path / "data")}


def test_the_example_sender_fails_when_nothing_is_listening():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "send_spans.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"},
    )
    assert result.returncode == 1, result
    assert f"could not send 4 of 4 spans to http://127.0.0.1:{port}" in result.stderr
    assert "sent 4 spans" not in result.stdout


def test_demo_without_its_extra_says_how_to_install_it(tmp_path):
    env = _without(tmp_path, "celery", "kombu", "django")
    _one_message(run("demo", env=env, check=False), "pip install 'spanmeter[demo]'")


def test_dashboards_without_their_extra_say_how_to_install_it(tmp_path):
    env = _without(tmp_path, "grafana_foundation_sdk")
    result = run("dashboards", "render", "--out", str(tmp_path / "out"), env=env, check=False)
    _one_message(result, "pip install 'spanmeter[dashboards]'")
    assert not (tmp_path / "out").exists()


def test_every_command_and_option_has_help():
    import argparse

    from spanmeter.cli import _parser

    missing = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
                missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")

    walk(_parser(), "spanmeter")
    assert not missing, "options without help: " + ", ".join(missing)


def test_ingest_reports_progress_with_a_total_and_a_rate(tmp_path):
    from spanmeter.collector.backfill import IngestTotals

    totals = IngestTotals(bytes_total=4_000_000, bytes_read=1_000_000, messages=10, spans=5_000)
    line = totals.progress()
    assert line.startswith("1.0 of 4.0 MB (25%), 10 messages, 5,000 spans, ") and line.endswith(" spans/s")


def test_a_command_that_writes_may_start_a_new_ledger(tmp_path):
    """Only commands that read refuse a missing ledger: `subscription set` is how a new one often begins."""
    data_dir = tmp_path / "new"
    result = run(
        "subscription", "set", "--account", "acme", "--plan", "starter", "--pricing", "v2_compute",
        "--from", "2026-11-01", "--data-dir", str(data_dir), check=False,
    )  # fmt: skip
    try:
        assert result.returncode == 0, result.stderr
        shown = run("subscription", "show", "--account", "acme", "--data-dir", str(data_dir), check=False)
        assert shown.returncode == 0 and "starter" in shown.stdout
    finally:
        run("db", "stop", "--data-dir", str(data_dir), check=False)
