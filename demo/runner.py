"""``spanmeter demo``: the main job. A real Django + Celery service, metered end to end, in one command.

1. the ledger: the embedded PostgreSQL in ``./.spanmeter`` (or ``--database-url``), migrated;
2. the collector: ``spanmeter serve`` on free local ports;
3. the docpipe web tier: Django's server with ``import spanmeter.instrumentation.auto`` in its settings;
4. a Celery worker (prefork, 2 processes) on a broker that needs no system service: kombu's SQLAlchemy
   transport on the same PostgreSQL (``--broker redis://…`` or ``amqp://…`` to use a real one);
5. the workload: documents for three accounts on different plans (one in four fails once and is retried)
   plus synthetic probes, posted as an authenticating gateway would;

then it waits until the ledger holds every billable span of the run (the exact row count is known in
advance, :mod:`.workload`), prints the usage per account and meter, and stops every process it started.
Logs of the three processes stay in ``<data dir>/demo-logs/<run>/``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import psycopg

from spanmeter.billing.ledger import migrate
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.embedded import EmbeddedPostgres

from . import workload
from .stack import DemoStack, StackError, sqla_broker_url

__all__ = ["DemoOptions", "ledger_usage", "run_demo"]

METERS = ("api_requests", "worker_seconds", "gpu_seconds", "input_tokens", "output_tokens")


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path = Path(".spanmeter")
    database_url: str | None = None
    broker_url: str | None = None
    documents_per_account: int = 5
    synthetic_probes: int = 2
    pace_seconds: float = 0.6  # between submissions: a steady trickle, not a burst
    ledger_timeout_seconds: float = 120.0


def ledger_usage(conninfo: str, job_ids: list[str]) -> dict[tuple[str, str], tuple[int, Decimal]]:
    """(account_id, meter_code) -> (rows, quantity) for the given jobs."""
    with psycopg.connect(conninfo) as connection:
        rows = connection.execute(
            "SELECT account_id, meter_code, count(*), sum(quantity) FROM usage_events"
            " WHERE job_id = ANY(%s) GROUP BY account_id, meter_code",
            (job_ids,),
        ).fetchall()
    return {(account, meter): (count, Decimal(total)) for account, meter, count, total in rows}


class _Out:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._status = False

    def line(self, text: str = "") -> None:
        if self._status:
            self.stream.write("\n")
            self._status = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        """A line that updates in place on a terminal (and is printed once elsewhere)."""
        if self.tty:
            self.stream.write("\r" + text.ljust(78))
            self.stream.flush()
            self._status = True
        else:
            self.line(text)


def run_demo(options: DemoOptions = DemoOptions(), stream: TextIO = sys.stdout) -> int:
    out = _Out(stream)
    run = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = options.data_dir.resolve() / "demo-logs" / run
    started = time.monotonic()
    out.line("spanmeter demo: a Django + Celery document pipeline, metered from its own spans")

    embedded = None if options.database_url else EmbeddedPostgres(options.data_dir)
    we_started_postgres = embedded is not None and not embedded.is_running()
    database = resolve_database(options.database_url, options.data_dir)
    _, head = migrate.upgrade(database)
    out.line(f"  ledger     {database.description} (schema {head})")
    broker_url = options.broker_url or sqla_broker_url(database.conninfo)
    broker_name = "PostgreSQL (kombu SQLAlchemy transport)" if broker_url.startswith("docpipe-sqla+") else broker_url
    stack = DemoStack(database.conninfo, broker_url, logs)
    try:
        stack.start(on_step=lambda step: out.status(f"  starting the {step} …"))
        pids = {name: process.proc.pid for name, process in stack.processes().items() if process.proc}
        out.line(
            f"  collector  OTLP/gRPC {stack.otlp_endpoint}, metrics http://{stack.metrics_address}/metrics"
            f" (pid {pids['collector']})"
        )
        out.line(f"  web        Django at http://{stack.web_address}, service docpipe-web (pid {pids['web']})")
        out.line(f"  worker     Celery, 2 prefork processes, broker: {broker_name} (pid {pids['worker']})")
        out.line(f"  logs       {logs}")
        submissions = workload.plan(options.documents_per_account, options.synthetic_probes)
        job_ids = _drive(stack, submissions, options.pace_seconds, out)
        expected = workload.expected_rows(submissions)
        usage = _wait_for_ledger(database.conninfo, job_ids, expected, options.ledger_timeout_seconds, out)
        if usage is None:
            return 1
        _report(usage, submissions, stack, out)
        _invoice_preview(database.conninfo, out)
    except StackError as exc:
        out.line(f"spanmeter demo: {exc}")
        return 1
    except KeyboardInterrupt:
        out.line("spanmeter demo: interrupted")
        return 130
    finally:
        out.status("  stopping the web server, the worker and the collector …")
        stack.stop()
        if we_started_postgres and embedded is not None:
            embedded.stop()
        out.line(f"  stopped every process the demo started ({time.monotonic() - started:.0f} s in all)")
    accounts = ", ".join(account for account, _ in workload.ACCOUNTS)
    out.line(f"\nThe ledger keeps these rows: try `spanmeter usage --account acme` (accounts: {accounts}),")
    out.line(f"and `spanmeter invoice --account acme --period {datetime.now(UTC):%Y-%m} --shadow v1_request`.")
    return 0


def _drive(stack: DemoStack, submissions: list[workload.Submission], pace: float, out: _Out) -> list[str]:
    billable = [s for s in submissions if not s.synthetic]
    out.line(
        f"\nworkload: {len(billable)} documents for {len(workload.ACCOUNTS)} accounts,"
        f" {len(submissions) - len(billable)} synthetic probes"
    )
    job_ids: list[str] = []
    width = len(str(len(submissions)))
    for number, submission in enumerate(submissions, 1):
        document = submission.document
        job_id = stack.submit(submission)
        if not submission.synthetic:
            job_ids.append(job_id)
        notes = ", retried once" if document.flaky else ""
        notes += ", synthetic: never billed" if submission.synthetic else ""
        out.line(
            f"  [{number:>{width}}/{len(submissions)}] {submission.account_id:<8} {submission.plan_code:<9}"
            f" {document.name:<10} {_plural(document.pages, 'page'):<8} {_plural(document.gpus, 'GPU'):<6}"
            f"  job {job_id[:8]}{notes}"
        )
        time.sleep(pace)
    return job_ids


def _wait_for_ledger(
    conninfo: str,
    job_ids: list[str],
    expected: dict[tuple[str, str], int],
    timeout: float,
    out: _Out,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[tuple[str, str], tuple[int, Decimal]] | None:
    want = sum(expected.values())
    deadline = time.monotonic() + timeout
    waited = time.monotonic()
    last = -1
    while True:
        usage = ledger_usage(conninfo, job_ids)
        have = sum(count for count, _ in usage.values())
        if have != last:
            out.status(f"  ledger: {have}/{want} billable rows committed ({time.monotonic() - waited:.1f} s)")
            last = have
        if have >= want:
            break
        if time.monotonic() > deadline:
            out.line(f"spanmeter demo: the ledger holds {have} of {want} rows after {timeout:.0f} s; missing:")
            for key, count in sorted(expected.items()):
                got = usage.get(key, (0, Decimal(0)))[0]
                if got != count:
                    out.line(f"    {key[0]} {key[1]}: {got} of {count}")
            return None
        sleep(0.5)
    wrong = {key: usage.get(key, (0, 0))[0] for key, count in expected.items() if usage.get(key, (0, 0))[0] != count}
    if wrong or set(usage) - set(expected):
        out.line(f"spanmeter demo: unexpected ledger rows: {wrong or sorted(set(usage) - set(expected))}")
        return None
    out.line(f"  ledger: all {want} billable rows committed, each exactly once")
    return usage


def _report(
    usage: dict[tuple[str, str], tuple[int, Decimal]],
    submissions: list[workload.Submission],
    stack: DemoStack,
    out: _Out,
) -> None:
    out.line("\nUsage this run, per account and meter (straight from the ledger):")
    header = f"  {'account':<9}{'plan':<10}" + "".join(f"{meter:>16}" for meter in METERS)
    out.line(header)
    out.line("  " + "-" * (len(header) - 2))
    for account, plan_code in workload.ACCOUNTS:
        cells = []
        for meter in METERS:
            _, quantity = usage.get((account, meter), (0, Decimal(0)))
            cells.append(f"{_fmt(quantity):>16}")
        out.line(f"  {account:<9}{plan_code:<10}" + "".join(cells))
    units = "api_requests: requests; worker_seconds, gpu_seconds: seconds rounded up to 0.1 s per span; tokens"
    out.line(f"  ({units})")
    retries = sum(1 for s in submissions if s.document.flaky and not s.synthetic)
    probes = sum(1 for s in submissions if s.synthetic)
    synthetic = _synthetic_spans(stack)
    out.line(
        f"\n  {retries} documents failed once and were retried: both attempts bill worker time (policy bill_failed)."
    )
    out.line(
        f"  {probes} synthetic probes: {synthetic} usage records metered in spanmeter_synthetic_spans_total,"
        " none in the ledger."
    )


PRICING = Path(__file__).resolve().parent / "pricing"


def _invoice_preview(conninfo: str, out: _Out) -> None:
    """Import the demo's price book and per-model pricing version (once), subscribe the demo accounts (when they
    have no subscription yet), and print their draft invoices against the flat-rate v2_compute."""
    from datetime import timedelta

    import psycopg

    from spanmeter.billing import invoices, prices, subscriptions
    from spanmeter.billing.periods import Period
    from spanmeter.billing.pricebook import load_file
    from spanmeter.billing.pricebook.parse import read_document
    from spanmeter.billing.rating.plan_data import parse_pricing_version

    period = Period.containing(datetime.now(UTC))
    with psycopg.connect(conninfo) as conn:
        book = load_file(PRICING / "docpipe-2026-01.yaml")
        prices.import_book(conn, book, imported_by="spanmeter demo", drift_window=timedelta(days=2))
        version = parse_pricing_version(read_document(PRICING / "v3_models.yaml"))
        prices.import_pricing_version(conn, version, imported_by="spanmeter demo")
        conn.commit()
        out.line(
            f"\n  draft invoices for {period}: {version.code} (tokens and GPU time per model, price book {book.label})"
            "\n  against the flat token and GPU-second rates of v2_compute"
        )
        for account, plan in workload.ACCOUNTS:
            if not subscriptions.history(conn, account):
                subscriptions.set_subscription(
                    conn,
                    account_id=account,
                    plan_code=plan,
                    pricing_version=version.code,
                    valid_from=period.start,
                    created_by="spanmeter demo",
                    note="created by spanmeter demo",
                )
                conn.commit()
            try:
                comparison = invoices.shadow_comparison(conn, account, period, "v2_compute")
            except invoices.InvoiceError as exc:
                out.line(f"  {account:<10} {exc}")
                continue
            primary, shadow = comparison.primary, comparison.shadow
            models = sorted({line.dimension for line in primary.lines if line.dimension})
            out.line(
                f"  {account:<10} {primary.subscriptions[-1]['plan_code']:<9} {primary.pricing_version} "
                f"{primary.total:>9,.2f} {primary.currency}   v2_compute {shadow.total:>9,.2f} {shadow.currency}"
                f"   difference {primary.total - shadow.total:+,.2f}   ({', '.join(models)})"
            )
    out.line(f"  each line explained: spanmeter invoice explain --account acme --period {period}")


def _synthetic_spans(stack: DemoStack) -> int:
    try:
        text = stack.collector_metrics()
    except OSError:
        return 0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("spanmeter_synthetic_spans_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _fmt(quantity: Decimal) -> str:
    if quantity == quantity.to_integral_value():
        return f"{int(quantity):,}"
    return f"{quantity:,.1f}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
