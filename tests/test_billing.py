"""Rollups, subscriptions, corrections, invoices, late usage, shadow pricing and reconciliation on a real
PostgreSQL, with usage written through the ledger's own write path (the collector's)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree

import psycopg
import pytest

from spanmeter.billing import adjustments, invoices, reconcile, rollups, subscriptions
from spanmeter.billing.ledger import migrate, rollup_store
from spanmeter.billing.ledger.database import resolve_database
from spanmeter.billing.ledger.writer import LedgerWriter
from spanmeter.billing.periods import Period
from support import assert_append_only, ledger

SEP, OCT, NOV = Period(2026, 9), Period(2026, 10), Period(2026, 11)
NOV_WINDOW = ("--from", "2026-11-01", "--to", "2026-12-01")
_keys = itertools.count(1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def usage(account, meter, quantity, when, *, job=None, plan="growth", model=None):
    """A ledger row as the collector writes it (fresh idempotency key)."""
    metadata = json.dumps({"gen_ai.model": model} if model else {})
    micros = int(when.timestamp()) * 1_000_000 + when.microsecond
    key = uuid.UUID(int=next(_keys) + (uuid.uuid4().int >> 64 << 64)).hex
    unit = {"worker_seconds": "s", "gpu_seconds": "s", "api_requests": "{request}"}.get(meter, "{token}")
    return (micros, key, account, job, plan, meter, 1, str(quantity), unit, "ab" * 16, "cd" * 8, metadata)


def write(db, rows):
    with psycopg.connect(db) as conn:
        LedgerWriter(conn).write_usage(rows)
        conn.commit()


@pytest.fixture
def db(fresh_db):
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))
    return fresh_db


def subscribe(db, account, plan, start, pricing="v2_compute", end=None):
    with psycopg.connect(db) as conn:
        subscriptions.set_subscription(
            conn,
            account_id=account,
            plan_code=plan,
            pricing_version=pricing,
            valid_from=start,
            valid_to=end,
            created_by="test",
        )
        conn.commit()


def invoice(db, account, period, **kw):
    with psycopg.connect(db) as conn:
        return invoices.build_invoice(conn, account, period, **kw)


def finalize(db, account, period, now):
    with psycopg.connect(db) as conn:
        result = invoices.finalize_invoice(conn, account, period, now=now, finalized_by="test")
        conn.commit()
        return result


def lines(inv):
    return [
        (line.kind, line.meter_code, str(line.quantity), str(line.amount), line.reference_period) for line in inv.lines
    ]


def snapshot(db):
    with psycopg.connect(db) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4").fetchall()
            for t in ("usage_rollups_hourly", "usage_rollups_daily", "usage_rollup_jobs")
        }


# ------------------------------------------------------------------------------------------ rollups


def test_rollups_stay_exact_with_concurrent_writers_retries_and_late_rows_and_rebuild_equals_them(db):
    t = at("2026-11-03T10:15:00")
    first = [usage("acme", "worker_seconds", "1.5", t, job="j1"), usage("acme", "worker_seconds", "2.5", t, job="j2")]
    second = [
        usage("acme", "worker_seconds", "4.0", t + timedelta(minutes=5), job="j1"),
        usage("globex", "worker_seconds", "7", t),
    ]
    a, b = psycopg.connect(db), psycopg.connect(db)
    LedgerWriter(a).write_usage(first)  # a's transaction stays open on rows of the same account and hour
    done = threading.Event()

    def write_b():
        LedgerWriter(b).write_usage(second)
        b.commit()
        done.set()

    thread = threading.Thread(target=write_b)
    thread.start()
    thread.join(10)  # b appends its own deltas: it never waits for a's uncommitted ones (no shared row)
    assert done.is_set()
    with psycopg.connect(db) as conn:  # a reader sees b's committed usage and nothing of a's yet
        assert rollups.rollup_totals(conn, "acme", NOV.start, NOV.end)["worker_seconds"].quantity == Decimal("4.0")
        assert rollup_store.fold(conn).deltas == 2  # b's two (acme, globex); a's are not committed
    a.commit()
    # a third receiver commits first rows for another account, then a retry of everything, then a late row
    write(
        db,
        [
            usage("initech", "input_tokens", 1000, t, model="gpt-x"),
            usage("initech", "output_tokens", 200, t, model="docpipe-classifier-small"),
        ],
    )
    write(db, first + second)  # retried: duplicates, counted nowhere
    write(db, [usage("acme", "worker_seconds", "0.5", at("2026-11-01T00:00:00"), job="j3")])  # late, early bucket
    a.close(), b.close()

    with psycopg.connect(db) as conn:
        assert rollup_store.check(conn) == []
        totals = rollups.rollup_totals(conn, "acme", NOV.start, NOV.end)
        assert totals["worker_seconds"].quantity == Decimal("8.5")
        assert totals["worker_seconds"].events == 4
        hour = rollups.rollup_totals(conn, "acme", at("2026-11-03T10:00:00"), at("2026-11-03T11:00:00"))
        assert hour["worker_seconds"].quantity == Decimal("8.0")
        agg = {code: rollups.aggregate(conn, code, "acme", NOV.start, NOV.end) for code in rollups.AGGREGATES}
        assert agg["worker_seconds"] == Decimal("8.5")
        assert agg["jobs"] == 3  # j1 twice, j2, j3
        assert agg["largest_task_seconds"] == Decimal("4.0")
        assert agg["last_task_seconds"] == Decimal("4.0")  # the 10:20 row is the latest
        assert rollups.aggregate(conn, "weighted_output_tokens", "initech", NOV.start, NOV.end) == Decimal("20.0")
        assert rollups.aggregate(conn, "input_tokens", "initech", NOV.start, NOV.end) == Decimal(1000)
        assert rollups.aggregate(conn, "api_requests", "initech", NOV.start, NOV.end) is None
    with psycopg.connect(db) as conn:  # fold what is pending: the folded tables alone now equal a rebuild
        assert rollup_store.fold(conn).deltas > 0 and rollup_store.pending_deltas(conn).deltas == 0
    maintained = snapshot(db)
    with psycopg.connect(db) as conn:
        rollup_store.rebuild(conn)
    assert snapshot(db) == maintained
    # the CLI says the same
    check = subprocess.run(
        [sys.executable, "-m", "spanmeter", "rollups", "check", "--database-url", db], capture_output=True, text=True
    )
    assert check.returncode == 0 and "rollups match the raw ledger" in check.stdout, check.stderr


def test_rollups_check_finds_a_tampered_rollup(db):
    write(db, [usage("acme", "worker_seconds", "3", at("2026-11-03T10:15:00"))])
    with psycopg.connect(db) as conn:
        rollup_store.fold(conn)
        conn.execute("UPDATE usage_rollups_daily SET quantity = quantity + 1")
        conn.commit()
        differences = rollup_store.check(conn)
        assert [(d.maintained, d.recomputed) for d in differences] == [("4/1", "3/1")]
        rollup_store.rebuild(conn)
        assert rollup_store.check(conn) == []


# ----------------------------------------------------------------------------------- invoices


def test_late_usage_inside_the_drift_window_and_after_finalization_is_billed_exactly_once(db):
    subscribe(db, "acme", "growth", SEP.start)
    write(db, [usage("acme", "worker_seconds", 40_000, at("2026-09-10T12:00:00"))])
    with pytest.raises(invoices.InvoiceError, match="stays open for late usage until 2026-10-03"):
        finalize(db, "acme", SEP, now=at("2026-10-02T00:00:00"))
    # late, inside the drift window: on September's own invoice
    write(db, [usage("acme", "worker_seconds", 1_000, at("2026-09-30T23:59:00"))])
    september, created = finalize(db, "acme", SEP, now=at("2026-10-04T00:00:00"))
    assert created and september.invoice_number == "INV-2026-09-0001"
    assert lines(september) == [
        ("fee", None, "1", "299.00", None),
        ("usage", "worker_seconds", "5000", "8.00", None),  # 41,000 - 36,000 included, at 0.0016
        ("usage", "gpu_seconds", "0", "0.00", None),
        ("usage", "tokens", "0", "0.00", None),
    ]
    assert september.total == Decimal("307.00")

    # after finalization: September is never recomputed; the late 500 s go on October's invoice
    write(db, [usage("acme", "worker_seconds", 500, at("2026-09-30T23:59:30"))])
    assert lines(invoice(db, "acme", SEP)) == lines(september)
    write(db, [usage("acme", "worker_seconds", 100, at("2026-10-05T08:00:00"))])
    october = invoice(db, "acme", OCT)
    assert october.status == "draft"
    assert lines(october)[-1] == ("adjustment", "worker_seconds", "1", "0.80", "2026-09")  # 500 s at 0.0016
    assert "Late usage for 2026-09: 500 s of worker_seconds" in october.lines[-1].description
    assert october.total == Decimal("299.80")
    with psycopg.connect(db) as conn:
        assert reconcile.reconcile(conn, SEP).delta == 0  # the 500 s are pending on October's draft

    october, _ = finalize(db, "acme", OCT, now=at("2026-11-05T00:00:00"))
    assert october.total == Decimal("299.80")
    # November's draft does not bill September's late usage again; a new late row for September does go there
    assert [line.kind for line in invoice(db, "acme", NOV).lines] == ["fee", "usage", "usage", "usage"]
    write(db, [usage("acme", "worker_seconds", 250, at("2026-09-15T00:00:00"))])
    november = invoice(db, "acme", NOV)
    assert lines(november)[-1] == ("adjustment", "worker_seconds", "1", "0.40", "2026-09")
    with psycopg.connect(db) as conn:
        for period in (SEP, OCT, NOV):
            result = reconcile.reconcile(conn, period)
            assert result.delta == 0, result.summary()
        conn.commit()
        assert conn.execute("SELECT count(*), max(delta) FROM reconciliation_runs").fetchone() == (
            4,
            0,
        )  # the earlier run too
        assert reconcile.latest_delta(conn) == 0


def test_finalized_invoices_are_immutable_and_numbered_per_period(db):
    for account in ("acme", "globex"):
        subscribe(db, account, "starter", SEP.start)
    write(db, [usage("acme", "worker_seconds", 3_700, at("2026-09-02T00:00:00"))])
    first, created = finalize(db, "acme", SEP, now=at("2026-10-10T00:00:00"))
    again, created_again = finalize(db, "acme", SEP, now=at("2026-10-11T00:00:00"))
    second, _ = finalize(db, "globex", SEP, now=at("2026-10-10T00:00:00"))
    assert (first.invoice_number, created, again.invoice_number, created_again) == (
        "INV-2026-09-0001",
        True,
        "INV-2026-09-0001",
        False,
    )
    assert second.invoice_number == "INV-2026-09-0002"
    assert first.total == Decimal("49.20")  # 49 + 100 s over 3,600 at 0.0020
    with psycopg.connect(db) as conn:
        assert_append_only(
            conn,
            (
                "UPDATE invoices SET total = 0",
                "DELETE FROM invoice_lines",
                "UPDATE usage_adjustments SET quantity = 1",
            ),
        )
        assert conn.execute(
            "SELECT sum(amount) FROM invoice_lines WHERE invoice_number = 'INV-2026-09-0001'"
        ).fetchone()[0] == Decimal("49.20")


def test_corrections_are_idempotent_rows_that_change_the_invoice(db):
    subscribe(db, "acme", "starter", NOV.start)
    write(db, [usage("acme", "worker_seconds", 5_000, at("2026-11-02T00:00:00"))])
    assert invoice(db, "acme", NOV).total == Decimal("51.80")  # 49 + 1,400 s at 0.0020
    with psycopg.connect(db) as conn:
        args = dict(
            idempotency_key="OPS-1",
            account_id="acme",
            meter_code="worker_seconds",
            quantity=Decimal(-1_000),
            occurred_at=at("2026-11-02T00:00:00"),
            reason="retry loop refunded",
            created_by="finance",
        )
        assert adjustments.record(conn, **args)[1] is True
        assert adjustments.record(conn, **args)[1] is False  # the same command again: nothing new
        with pytest.raises(adjustments.AdjustmentError, match="already used for a different correction"):
            adjustments.record(conn, **{**args, "quantity": Decimal(-2_000)})
        with pytest.raises(adjustments.AdjustmentError, match="reason is required"):
            adjustments.record(conn, **{**args, "idempotency_key": "OPS-2", "reason": " "})
        conn.commit()
        assert conn.execute("SELECT count(*) FROM usage_adjustments").fetchone()[0] == 1
        assert conn.execute("SELECT sum(quantity) FROM usage_events").fetchone()[0] == 5_000  # usage untouched
    november = invoice(db, "acme", NOV)
    assert november.usage["worker_seconds"] == Decimal(4_000)
    assert november.total == Decimal("49.80")


def test_usage_views_show_corrections_beside_the_raw_usage_and_agree_with_the_invoice(db):
    """5,400 s of usage and a -600 s correction: usage and export usage say 5,400 raw, -600, 4,800 adjusted,
    and 4,800 is what November's invoice bills (the views used to show 5,400 and say nothing)."""
    from spanmeter.billing import exports

    subscribe(db, "acme", "starter", NOV.start)
    write(
        db,
        [
            usage("acme", "worker_seconds", 3_000, at("2026-11-02T00:00:00")),
            usage("acme", "worker_seconds", 2_400, at("2026-11-03T00:00:00")),
            usage("acme", "gpu_seconds", 10, at("2026-11-03T00:00:00")),
        ],
    )
    with psycopg.connect(db) as conn:
        for key, meter, quantity in (("OPS-9", "worker_seconds", -600), ("OPS-10", "api_requests", 3)):
            adjustments.record(
                conn, idempotency_key=key, account_id="acme", meter_code=meter, quantity=Decimal(quantity),
                occurred_at=at("2026-11-20T00:00:00"), reason="refund of a retry loop", created_by="finance",
            )  # fmt: skip
        conn.commit()
    november = invoice(db, "acme", NOV)
    assert november.usage["worker_seconds"] == Decimal(4_800)

    def cli(*args):
        done = subprocess.run(
            [sys.executable, "-m", "spanmeter", "usage", "--account", "acme", "--database-url", db, *args, *NOV_WINDOW],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    meters = {m["meter_code"]: m for m in json.loads(cli("--format", "json"))["meters"]}
    worker = meters["worker_seconds"]
    assert (worker["quantity"], worker["adjustments"], worker["adjusted"], worker["events"]) == (
        "5400",
        "-600",
        "4800",
        2,
    )
    assert Decimal(worker["adjusted"]) == november.usage["worker_seconds"]
    assert (meters["gpu_seconds"]["adjustments"], meters["gpu_seconds"]["adjusted"]) == ("0", "10")
    # a meter with a correction and no usage in the window is listed, not left out
    requests = meters["api_requests"]
    assert (requests["quantity"], requests["events"], requests["adjusted"], requests["unit"]) == (
        "0",
        0,
        "3",
        "{request}",
    )
    table = cli().splitlines()
    assert table[1].split() == ["meter", "quantity", "adjustments", "adjusted", "unit", "events"]
    assert table[4].split() == ["worker_seconds", "5400", "-600", "4800", "s", "2"]
    assert "2 correction(s) dated in this window" in table[5] and "adjusted: what invoices bill" in table[5]
    assert cli("--format", "csv").splitlines()[0].endswith(",events,adjustments,adjusted")

    with psycopg.connect(db) as conn:
        exported = {r["meter_code"]: r for r in exports.export(conn, "usage", NOV, "acme")}
    assert (exported["worker_seconds"]["quantity"], exported["worker_seconds"]["adjusted"]) == ("5400", "4800")
    assert exported["worker_seconds"]["adjustments"] == "-600"
    assert (exported["api_requests"]["quantity"], exported["api_requests"]["adjusted"]) == ("0", "3")


def test_a_plan_change_mid_month_prorates_and_reports_span_plan_codes_that_disagree(db):
    subscribe(db, "acme", "starter", NOV.start)
    subscribe(db, "acme", "growth", at("2026-11-16T00:00:00"))
    write(
        db,
        [
            usage("acme", "worker_seconds", 3_000, at("2026-11-05T00:00:00"), plan="starter"),
            usage(
                "acme", "worker_seconds", 20_000, at("2026-11-20T00:00:00"), plan="starter"
            ),  # client still says starter
        ],
    )
    november = invoice(db, "acme", NOV)
    assert [s["plan_code"] for s in november.subscriptions] == ["starter", "growth"]
    assert lines(november) == [
        ("fee", None, "0.5", "24.50", None),  # half of €49
        ("usage", "worker_seconds", "1200", "2.40", None),  # 3,000 - 1,800 included (half of 3,600), at 0.0020
        ("usage", "gpu_seconds", "0", "0.00", None),
        ("usage", "tokens", "0", "0.00", None),
        ("fee", None, "0.5", "149.50", None),  # half of €299
        ("usage", "worker_seconds", "2000", "3.20", None),  # 20,000 - 18,000 included, at 0.0016
        ("usage", "gpu_seconds", "0", "0.00", None),
        ("usage", "tokens", "0", "0.00", None),
    ]
    assert november.total == Decimal("179.60")
    assert november.plan_mismatches == [
        {
            "span_plan_code": "starter",
            "subscription_plan_code": "growth",
            "from": "2026-11-16T00:00:00+00:00",
            "to": "2026-12-01T00:00:00+00:00",
            "quantity": "20000",
        }
    ]


def test_usage_without_a_subscription_is_reported_unrated_and_counted_by_reconciliation(db):
    subscribe(db, "acme", "starter", at("2026-11-10T00:00:00"))
    write(
        db,
        [
            usage("acme", "worker_seconds", 10, at("2026-11-02T00:00:00")),
            usage("acme", "worker_seconds", 5, at("2026-11-12T00:00:00")),
        ],
    )
    november = invoice(db, "acme", NOV)
    assert november.usage["worker_seconds"] == 5
    assert november.unrated_usage == {"worker_seconds": Decimal(10)}
    with psycopg.connect(db) as conn:
        assert reconcile.reconcile(conn, NOV).delta == 10
    with pytest.raises(invoices.InvoiceError, match="no subscription in 2026-11"):
        invoice(db, "globex", NOV)


def test_shadow_invoices_for_several_accounts_and_the_cli_shapes(db, focus_validator, tmp_path):
    for account, plan in (("acme", "starter"), ("globex", "growth"), ("initech", "platform")):
        subscribe(db, account, plan, NOV.start)
        write(
            db,
            [usage(account, "api_requests", 1, at("2026-11-03T00:00:00")) for _ in range(50)]
            + [
                usage(account, "worker_seconds", 25_000, at("2026-11-03T00:00:00")),
                usage(account, "input_tokens", 300_000, at("2026-11-04T00:00:00")),
            ],
        )
    cli = [sys.executable, "-m", "spanmeter"]
    report = subprocess.run(
        [
            *cli,
            "invoice",
            "shadow-report",
            "--period",
            "2026-11",
            "--shadow",
            "v1_request",
            "--format",
            "json",
            "--database-url",
            db,
        ],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    rows = {r["account_id"]: r for r in json.loads(report.stdout)}
    # v1_request: 50 requests at €0.0004 = €0.02 each; v2_compute per plan:
    # starter 49 + 21,400 s x 0.0020 + 50,000 tokens x 0.0000018 = 49 + 42.80 + 0.09; growth 299 (all included);
    # platform 499 + 5,000 s x 0.0020 = 509.00
    assert {a: (r["primary"]["total"], r["shadow"]["total"], r["difference"]) for a, r in rows.items()} == {
        "acme": ("91.89", "0.02", "-91.87"),
        "globex": ("299.00", "0.02", "-298.98"),
        "initech": ("509.00", "0.02", "-508.98"),
    }
    assert "91.89" in rows["acme"]["explanation"] and "0.02" in rows["acme"]["explanation"]

    shown = subprocess.run(
        [
            *cli,
            "invoice",
            "--account",
            "acme",
            "--period",
            "2026-11",
            "--format",
            "json",
            "--shadow",
            "v1_request",
            "--database-url",
            db,
        ],
        capture_output=True,
        text=True,
    )
    document = json.loads(shown.stdout)
    assert document["invoice_number"] == "DRAFT-2026-11-acme" and document["pricing_version"] == "v2_compute"
    assert document["meter_versions"] == {"api_requests": [1], "input_tokens": [1], "worker_seconds": [1]}
    assert sum(Decimal(line["amount"]) for line in document["lines"]) == Decimal(document["total"]) == Decimal("91.89")
    assert set(document["lines"][0]) >= {
        "meter_code",
        "description",
        "quantity",
        "included_quantity",
        "overage_quantity",
        "unit_price",
        "amount",
    }
    assert document["shadow"]["shadow"]["total"] == "0.02"
    csv_out = subprocess.run(
        [*cli, "invoice", "--account", "acme", "--period", "2026-11", "--format", "csv", "--database-url", db],
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert csv_out[0].startswith("invoice_number,account_id,period,currency,pricing_version,line_no,kind")
    assert len(csv_out) == 1 + len(document["lines"])
    focus = subprocess.run(
        [*cli, "export", "focus", "--period", "2026-11", "--format", "json", "--database-url", db],
        capture_output=True,
        text=True,
    )
    focus_rows = json.loads(focus.stdout)
    assert {r["BillingAccountId"] for r in focus_rows} == {"acme", "globex", "initech"}
    assert sum(Decimal(r["BilledCost"]) for r in focus_rows) == Decimal("91.89") + 299 + 509
    # consumed, not billed: acme's worker lines add up to its 21,400 s of usage (the allowance included)
    acme_worker = [r for r in focus_rows if r["BillingAccountId"] == "acme" and r["SkuId"].endswith(":worker_seconds")]
    assert sum(Decimal(r["ConsumedQuantity"]) for r in acme_worker) == Decimal(document["usage"]["worker_seconds"])
    focus_csv = tmp_path / "focus.csv"
    focus_csv.write_text(
        subprocess.run(
            [*cli, "export", "focus", "--period", "2026-11", "--provider", "Docpipe Inc.", "--database-url", db],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    _assert_focus_valid(focus_validator, focus_csv, tmp_path)
    bad = subprocess.run(
        [*cli, "invoice", "--account", "acme", "--period", "2026-13", "--database-url", db],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


def test_a_transition_cap_shows_as_a_line_on_the_shadow_invoice(db):
    subscribe(db, "acme", "starter", NOV.start, pricing="v1_request")
    write(db, [usage("acme", "api_requests", 1, at("2026-11-03T00:00:00")) for _ in range(100)])
    write(db, [usage("acme", "worker_seconds", 3_600, at("2026-11-03T00:00:00"))])
    with psycopg.connect(db) as conn:
        from spanmeter.billing.rating import TransitionPolicy

        plain = invoices.shadow_comparison(conn, "acme", NOV, "v2_compute")
        capped = invoices.shadow_comparison(
            conn, "acme", NOV, "v2_compute", transition=TransitionPolicy("cap", until_period="2027-01")
        )
    assert (plain.primary.total, plain.shadow.total) == (Decimal("0.04"), Decimal("49.00"))  # 100 x 0.0004; €49 fee
    assert capped.shadow.lines[-1].kind == "transition"
    assert capped.shadow.lines[-1].amount == Decimal("-48.96")  # capped at 0.04 x 1.10 = 0.04
    assert capped.shadow.total == Decimal("0.04")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "spanmeter",
            "invoice",
            "--account",
            "acme",
            "--period",
            "2026-11",
            "--shadow",
            "v2_compute",
            "--transition",
            "credit:10",
            "--format",
            "json",
            "--database-url",
            db,
        ],
        capture_output=True,
        text=True,
    )
    shadow = json.loads(cli.stdout)["shadow"]["shadow"]
    assert (shadow["total"], shadow["lines"][-1]["kind"], shadow["lines"][-1]["amount"]) == (
        "39.00",
        "credit",
        "-10.00",
    )


def test_serve_exports_quota_burn_only_for_accounts_over_half_a_quota_and_the_reconciliation_delta(db, make_collector):
    from support import wait_until

    now = datetime.now(UTC)
    month = Period.containing(now)
    subscribe(db, "acme", "starter", month.start)
    subscribe(db, "globex", "starter", month.start)
    write(
        db,
        [
            usage("acme", "worker_seconds", 3_000, now - timedelta(seconds=5)),
            usage("acme", "input_tokens", 250_000, now - timedelta(seconds=5)),
        ],
    )
    write(db, [usage("globex", "worker_seconds", 100, now - timedelta(seconds=5))])
    with psycopg.connect(db) as conn:
        reconcile.reconcile(conn, month)
    collector = make_collector(db, SPANMETER_BILLING_METRICS_INTERVAL_SECONDS="0.2")
    wait_until(
        lambda: collector.metrics().get("spanmeter_billing_metrics_refresh_timestamp_seconds", 0) > 0,
        timeout=30,
        what="the billing metrics to refresh",
    )
    metrics = collector.metrics()
    quota = {k: v for k, v in metrics.items() if k.startswith("spanmeter_account_quota_used_ratio")}
    assert quota == {
        'spanmeter_account_quota_used_ratio{account_id="acme",meter="tokens"}': 1.0,
        'spanmeter_account_quota_used_ratio{account_id="acme",meter="worker_seconds"}': 0.8333,
    }
    assert metrics["spanmeter_reconciliation_delta"] == 0
    # the same refresh rewrote the month-to-date table the Grafana billing dashboard reads
    with psycopg.connect(db) as conn:
        mtd = conn.execute(
            "SELECT account_id, plan_code, currency, invoice_so_far, period_start FROM account_month_to_date"
            " ORDER BY account_id"
        ).fetchall()
        drafts = {a: invoices.build_invoice(conn, a, month).total for a in ("acme", "globex")}
    assert [(a, p, c, t) for a, p, c, t, _ in mtd] == [
        ("acme", "starter", "EUR", drafts["acme"]),
        ("globex", "starter", "EUR", drafts["globex"]),
    ]
    assert drafts == {"acme": Decimal("49.00"), "globex": Decimal("49.00")}  # within the allowances
    assert {row[4] for row in mtd} == {month.start}
    # a tampered rollup: the next reconciliation stores a non-zero delta and the metric follows
    with psycopg.connect(db) as conn:
        rollup_store.fold(conn)  # serve folds every second too; a tampered folded row is what this is about
        conn.execute("UPDATE usage_rollups_daily SET quantity = quantity + 7 WHERE account_id = 'globex'")
        assert reconcile.reconcile(conn, month).delta == 7
    wait_until(lambda: collector.metrics().get("spanmeter_reconciliation_delta") == 7, timeout=30, what="delta 7")


def test_usage_shows_month_to_date_quotas_and_the_invoice_so_far(db):
    now = datetime.now(UTC)
    month = Period.containing(now)
    subscribe(db, "acme", "starter", month.start)
    write(db, [usage("acme", "worker_seconds", 4_600, now - timedelta(seconds=5))])
    shown = subprocess.run(
        [sys.executable, "-m", "spanmeter", "usage", "--account", "acme", "--format", "json", "--database-url", db],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    mtd = json.loads(shown.stdout)["month_to_date"]
    assert (mtd["period"], mtd["plan_code"], mtd["pricing_version"]) == (str(month), "starter", "v2_compute")
    assert mtd["quotas"][0] == {"metric": "worker_seconds", "used": "4600", "included": "3600", "ratio": "1.2778"}
    assert mtd["invoice_so_far"] == "51.00"  # 49 + 1,000 s over the allowance at 0.0020
    assert Decimal(mtd["projected_total"]) >= Decimal("51.00")  # the month is not over: a linear projection


def test_quota_gauges_skip_a_subscription_that_ended_earlier_in_the_month(db):
    """An account cancelled on the 10th keeps its month-to-date row, but its frozen ratios stop paging."""
    from spanmeter.billing.quotas import refresh_month_to_date

    october = Period.containing(datetime(2026, 10, 1, tzinfo=UTC))
    subscribe(db, "gone", "starter", october.start, end=datetime(2026, 10, 10, tzinfo=UTC))
    subscribe(db, "stays", "starter", october.start)
    day5 = datetime(2026, 10, 5, 12, tzinfo=UTC)
    write(db, [usage("gone", "worker_seconds", 3_600, day5), usage("stays", "worker_seconds", 3_000, day5)])
    with psycopg.connect(db) as conn:
        exported = refresh_month_to_date(conn, datetime(2026, 10, 20, tzinfo=UTC))
        rows = conn.execute("SELECT account_id FROM account_month_to_date ORDER BY 1").fetchall()
    assert [(a, m, str(r)) for a, m, r in exported] == [("stays", "worker_seconds", "0.8333")]
    assert rows == [("gone",), ("stays",)]  # the dashboard still shows what the ended subscription owes


def test_the_billing_component_refreshes_on_one_replica_at_a_time(db):
    """Two replicas' billing components on one ledger: the one holding the lock rewrites month to date and
    exports the quota ratios; the other skips the rewrite, exports none, and still reads the reconciliation;
    when the leader is gone, the next pass of the other takes over."""
    from spanmeter.billing.component import REFRESH_LOCK_ID, BillingComponent

    now = datetime.now(UTC)
    subscribe(db, "acme", "starter", Period.containing(now).start)
    write(db, [usage("acme", "worker_seconds", 3_000, now - timedelta(seconds=5))])
    with psycopg.connect(db) as conn:
        reconcile.reconcile(conn, Period.containing(now))
        conn.commit()
    database = resolve_database(db, data_dir=None)
    one, other = BillingComponent(database), BillingComponent(database)
    with psycopg.connect(db) as holder:  # replica one's pass, in progress: it holds the lock
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (REFRESH_LOCK_ID,))
        follower = other.refresh()
        assert (follower.leader, follower.quotas) == (False, ())
        assert follower.reconciliation is not None and follower.refreshed_at > 0
        assert ledger(db, "SELECT count(*) FROM account_month_to_date") == [(0,)]  # nothing rewritten
    leader = other.refresh()  # the holder is gone (its transaction ended): this replica takes over
    assert leader.leader and leader.quotas == (("acme", "worker_seconds", 0.8333),)
    assert ledger(db, "SELECT account_id FROM account_month_to_date") == [("acme",)]
    assert one.refresh().leader  # passes alternate freely once nobody holds the lock


# The FinOps Foundation's validator, pinned: FOCUS 1.0 is the newest version focus-validator 1.0.0 supports.
# pandera 0.17 (its dependency) needs multimethod's API before 1.11. Installed with uv in its own virtualenv
# (it pins numpy < 2 and pandas < 3, which must not touch the project's environment).
FOCUS_VALIDATOR = ("focus-validator==1.0.0", "multimethod<1.11")


@pytest.fixture(scope="module")
def focus_validator(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("focus-validator") / "venv"
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *FOCUS_VALIDATOR],
        check=True,
        timeout=900,
    )
    return venv / "bin" / "focus-validator"


def _assert_focus_valid(validator: Path, data: Path, tmp_path: Path) -> None:
    report = tmp_path / "focus-report.xml"
    run = subprocess.run(
        [str(validator), "--data-file", str(data), "--validate-version", "1.0", "--output-type", "unittest",
         "--output-destination", str(report)],
        capture_output=True, text=True, timeout=300,
        # it reads its ISO 4217 list from the relative path focus_validator/utils/currency_codes.csv
        cwd=validator.parent.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages",
    )  # fmt: skip
    assert run.returncode == 0 and report.is_file(), run.stdout + run.stderr
    suites = ElementTree.parse(report).getroot()
    cases = suites.findall(".//testcase")
    failed = [
        f"{case.get('classname')}/{case.get('name')}: {(problem.get('message') or problem.text or '').strip()[:200]}"
        for case in cases
        for problem in (*case.findall("failure"), *case.findall("error"))
    ]
    assert len(cases) > 100 and not failed, "\n".join(failed)
