"""Which metering path `spanmeter serve` runs, said at start and in a metric: the compiled core where it is
installed, pure Python with SPANMETER_NATIVE=0 (and on a machine without Rust). scripts/test.sh runs the
receiver's end-to-end tests a second time with SPANMETER_NATIVE=0, so both paths are proven end to end."""

from __future__ import annotations

import os

import grpc

from support import Collector, SpanFactory, raw_export, request_bytes, totals

MS = 1_000_000


def _bill(collector: Collector, database: str, account: str) -> None:
    f = SpanFactory({"service.name": "mode-svc", "account_id": account})
    spans = [f.span(f"run/{i}", {"celery.action": "run"}, (i + 1) * 100 * MS) for i in range(3)]
    assert raw_export(collector.endpoint, request_bytes(spans)).code == grpc.StatusCode.OK
    assert str(totals(database, account)["worker_seconds"]) == "0.6"


def _build_info(collector: Collector) -> dict[str, float]:
    return {
        key.split('metering="')[1].split('"')[0]: value
        for key, value in collector.metrics().items()
        if key.startswith("spanmeter_build_info{")
    }


def test_serve_says_which_metering_path_it_runs(fresh_db):
    expected = "python" if os.environ.get("SPANMETER_NATIVE") == "0" else "native"
    default = Collector(fresh_db).start()  # inherits this run's SPANMETER_NATIVE
    try:
        assert any(line.startswith(f"  metering   {expected}") for line in default.output), default.output
        assert _build_info(default) == {expected: 1.0}
        _bill(default, fresh_db, "acct-default")
    finally:
        default.kill()
    forced = Collector(fresh_db, env={"SPANMETER_NATIVE": "0"}).start()
    try:
        assert any(line.startswith("  metering   python") for line in forced.output), forced.output
        assert _build_info(forced) == {"python": 1.0}
        _bill(forced, fresh_db, "acct-python")
    finally:
        forced.kill()


def test_what_the_native_core_hands_back_is_metered_by_python_and_counted(fresh_db):
    expected = "python" if os.environ.get("SPANMETER_NATIVE") == "0" else "native"
    collector = Collector(fresh_db).start()
    try:
        f = SpanFactory({"service.name": "mode-svc"})
        attributes = {"account_id": "acct-utf8", "celery.action": "run", "celery.task_name": "MARK"}
        body = request_bytes([f.span("run", attributes, 300 * MS)]).replace(b"MARK", b"M\xffRK")
        result = raw_export(collector.endpoint, body)
        assert result.code == grpc.StatusCode.OK  # invalid UTF-8: repaired by the Python reference
        assert "invalid UTF-8" in result.response.partial_success.error_message
        assert str(totals(fresh_db, "acct-utf8")["worker_seconds"]) == "0.3"
        handed_back = collector.metrics()['spanmeter_native_fallbacks_total{reason="handed_back"}']
        assert handed_back == (1 if expected == "native" else 0)
    finally:
        collector.kill()
