"""End to end with real processes: the docpipe Django server and a Celery worker (prefork) instrumented
with one import, exporting with the official OTLP exporter to a real `spanmeter serve` on a real
PostgreSQL, on three brokers: kombu's SQLAlchemy transport (no system service), Redis and RabbitMQ (the
machine's servers; a missing one fails the test with how to start it, never skips).

The applications sample with a 0.1 ratio sampler: every assertion on exact row counts is also the
assertion that the sampler lost not one billable span."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import pytest

from spanmeter.demo import workload
from spanmeter.demo.stack import DemoStack, sqla_broker_url
from support import ledger, parse_metrics, wait_until

pytestmark = pytest.mark.slow

BROKERS = {
    "sqla": None,  # the ledger's own PostgreSQL
    "redis": ("redis://127.0.0.1:6379/0", 6379, "redis-server --daemonize yes --port 6379 --save ''"),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", 5672, "rabbitmq-server -detached"),
}
SAMPLED_AT_10_PERCENT = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}


def _require_server(name: str, port: int, start: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"the {name} broker test needs a {name} server on 127.0.0.1:{port} ({exc}); start it: {start}")


@pytest.fixture(scope="module", params=list(BROKERS))
def stack(request, postgres_admin, tmp_path_factory):
    from conftest import create_database

    database = create_database(postgres_admin)
    if BROKERS[request.param] is None:
        broker = sqla_broker_url(database)
    else:
        broker, port, start = BROKERS[request.param]
        _require_server(request.param, port, start)
    logs = Path(tmp_path_factory.mktemp(f"demo-{request.param}"))
    s = DemoStack(database, broker, logs, extra_env=SAMPLED_AT_10_PERCENT).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def run(stack):
    """The workload: two documents per account (flaky ones included) and a synthetic probe."""
    submissions = workload.plan(documents_per_account=2, synthetic_probes=1)
    jobs = [(submission, stack.submit(submission)) for submission in submissions]
    billable_jobs = [job for submission, job in jobs if not submission.synthetic]
    want = sum(workload.expected_rows(submissions).values())
    wait_until(lambda: _count(stack, billable_jobs) >= want, timeout=90, what=f"{want} ledger rows")
    return submissions, jobs


def _count(stack: DemoStack, jobs: list[str]) -> int:
    return ledger(stack.database_conninfo, "SELECT count(*) FROM usage_events WHERE job_id = ANY(%s)", (jobs,))[0][0]


def _rows(stack: DemoStack, job_id: str) -> list[tuple]:
    return ledger(
        stack.database_conninfo,
        "SELECT account_id, meter_code, quantity, plan_code, metadata FROM usage_events WHERE job_id = %s",
        (job_id,),
    )


def test_exact_rows_and_token_totals_per_account_and_meter(stack, run):
    submissions, jobs = run
    billable_jobs = [job for submission, job in jobs if not submission.synthetic]
    rows = ledger(
        stack.database_conninfo,
        "SELECT account_id, meter_code, count(*), sum(quantity) FROM usage_events WHERE job_id = ANY(%s) GROUP BY 1, 2",
        (billable_jobs,),
    )
    counts = {(account, meter): n for account, meter, n, _ in rows}
    sums = {(account, meter): total for account, meter, _, total in rows}
    assert counts == workload.expected_rows(submissions)
    for key, tokens in workload.expected_tokens(submissions).items():
        assert sums[key] == tokens, key
    for account, _ in workload.ACCOUNTS:
        assert sums[(account, "api_requests")] == 2


def test_every_task_span_carries_its_request_job_and_account(stack, run):
    _, jobs = run
    for submission, job in jobs:
        if submission.synthetic:
            continue
        rows = _rows(stack, job)
        assert {account for account, *_ in rows} == {submission.account_id}
        assert {plan for _, _, _, plan, _ in rows} == {submission.plan_code}
        tasks = sorted(meta["span.name"] for _, meter, _, _, meta in rows if meter == "worker_seconds")
        classify = ["run/docpipe.classify_document"] * (2 if submission.document.flaky else 1)
        assert tasks == sorted([*classify, "run/docpipe.detect_tables", "run/docpipe.extract_text"])
        services = {meta["service.name"] for _, meter, _, _, meta in rows}
        assert services == {"docpipe-web", "docpipe-worker"}


def test_quantities_follow_the_meter_rules(stack, run):
    _, jobs = run
    for submission, job in jobs:
        if submission.synthetic:
            continue
        document = submission.document
        by_meter: dict[str, list[tuple]] = {}
        for _, meter, quantity, _, meta in _rows(stack, job):
            by_meter.setdefault(meter, []).append((quantity, meta))
        for quantity, _ in by_meter["worker_seconds"]:
            assert quantity == quantity.quantize(Decimal("0.1")) and quantity >= Decimal("0.1")
        [(gpu_quantity, gpu_meta)] = by_meter["gpu_seconds"]
        assert gpu_meta["gpu.count"] == document.gpus and gpu_meta["gpu.model"] == workload.gpu_model(document.gpus)
        per_gpu = gpu_quantity / document.gpus
        assert per_gpu == per_gpu.quantize(Decimal("0.1"), ROUND_CEILING)  # rounded up, then × count
        assert per_gpu >= Decimal(str(workload.gpu_seconds(document.pages))).quantize(Decimal("0.1"))
        [(extract, _)] = [(q, m) for q, m in by_meter["worker_seconds"] if m["span.name"].endswith("extract_text")]
        assert extract >= Decimal(str(workload.extract_seconds(document.pages))).quantize(Decimal("0.1"))
        [(_, token_meta)] = by_meter["input_tokens"]
        assert token_meta["gen_ai.model"] == workload.model_for(document.pages)  # two models, by document size


def test_synthetic_traffic_is_metered_but_never_billed(stack, run):
    _, jobs = run
    [probe_job] = [job for submission, job in jobs if submission.synthetic]
    assert _rows(stack, probe_job) == []
    metrics = parse_metrics(stack.collector_metrics())
    synthetic = sum(v for k, v in metrics.items() if k.startswith("spanmeter_synthetic_spans_total"))
    assert synthetic >= 7  # the probe's request, three task runs, GPU section, two token records


def test_client_baggage_cannot_change_who_pays(stack, run):
    forged = {"baggage": "account_id=mallory,plan_code=scale,job_id=forged,spanmeter.synthetic=true"}
    submission = workload.Submission("globex", "growth", workload.Document("forged", 1, 1))
    job = stack.submit(submission, extra_headers=forged)
    assert job != "forged"
    wait_until(lambda: _count(stack, [job]) >= 7, timeout=60, what="the forged request's rows")
    rows = _rows(stack, job)
    assert len(rows) == 7 and {r[0] for r in rows} == {"globex"} and {r[3] for r in rows} == {"growth"}
    assert ledger(stack.database_conninfo, "SELECT count(*) FROM usage_events WHERE account_id = 'mallory'")[0][0] == 0


def test_unauthenticated_requests_are_refused_and_only_counted(stack, run):
    request = urllib.request.Request(
        f"http://{stack.web_address}/documents", data=json.dumps({"pages": 1}).encode(), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    # the refusal is an unattributed API request: counted by the collector, never a ledger row
    wait_until(
        lambda: (
            parse_metrics(stack.collector_metrics()).get('spanmeter_spans_unattributed_total{meter="api_requests"}', 0)
            >= 1
        ),
        timeout=30,
        what="the unattributed request to be counted",
    )


def test_spanmeter_demo_runs_the_whole_job_and_stops_what_it_started(postgres_admin, tmp_path):
    """The main job as a user runs it (on a test database instead of ./.spanmeter)."""
    import subprocess
    import sys

    from conftest import create_database

    database = create_database(postgres_admin)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanmeter",
            "demo",
            "--documents",
            "1",
            "--database-url",
            database,
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    submissions = workload.plan(documents_per_account=1, synthetic_probes=2)
    want = sum(workload.expected_rows(submissions).values())
    assert f"ledger: all {want} billable rows committed, each exactly once" in proc.stdout
    tokens = workload.expected_tokens(submissions)
    acme_line = next(line for line in proc.stdout.splitlines() if line.startswith("  acme "))
    assert f"{tokens[('acme', 'input_tokens')]:,}" in acme_line.split()
    assert "stopped every process the demo started" in proc.stdout
    rows = ledger(database, "SELECT count(*) FROM usage_events")[0][0]
    assert rows == want
    # nothing it started is left behind: the collector, web server and worker (with its pool) are gone
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", proc.stdout)]
    assert len(pids) == 3
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    pool = subprocess.run(["pgrep", "-P", ",".join(map(str, pids))], capture_output=True, text=True).stdout.split()
    assert pool == []
    _invoices_price_the_demo_ledger_exactly(database, submissions)


def _invoices_price_the_demo_ledger_exactly(database: str, submissions) -> None:
    """The demo's usage, invoiced: every account's draft prices exactly what the raw ledger holds."""
    import json
    import subprocess
    import sys
    from datetime import UTC, datetime
    from decimal import Decimal

    from spanmeter.billing.periods import Period
    from spanmeter.billing.rating import PRICING_VERSIONS, billable_quantities, invoice_total, rate_plan, round_money

    period = Period.containing(datetime.now(UTC))
    cli = [sys.executable, "-m", "spanmeter"]
    for account, plan in workload.ACCOUNTS:
        subprocess.run(
            [
                *cli,
                "subscription",
                "set",
                "--account",
                account,
                "--plan",
                plan,
                "--pricing",
                "v2_compute",
                "--from",
                f"{period.start:%Y-%m-%d}",
                "--database-url",
                database,
            ],
            check=True,
            capture_output=True,
        )
    report = subprocess.run(
        [
            *cli,
            "invoice",
            "shadow-report",
            "--period",
            str(period),
            "--shadow",
            "v1_request",
            "--format",
            "json",
            "--database-url",
            database,
        ],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    by_account = {r["account_id"]: r for r in json.loads(report.stdout)}
    assert set(by_account) == {account for account, _ in workload.ACCOUNTS}
    tokens = workload.expected_tokens(submissions)
    for account, plan in workload.ACCOUNTS:
        raw = {
            meter: Decimal(q)
            for meter, q in ledger(
                database,
                "SELECT meter_code, sum(quantity) FROM usage_events WHERE account_id = %s GROUP BY 1",
                (account,),
            )
        }
        assert raw["input_tokens"] == tokens[(account, "input_tokens")]
        assert raw["output_tokens"] == tokens[(account, "output_tokens")]
        expected = invoice_total(rate_plan(billable_quantities(raw), PRICING_VERSIONS["v2_compute"].plans[plan]))
        assert by_account[account]["primary"]["total"] == f"{expected:.2f}"
        assert (
            by_account[account]["shadow"]["total"]
            == f"{round_money(raw['api_requests'] * Decimal('0.0004'), 'EUR'):.2f}"
        )
