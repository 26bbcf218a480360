"""`spanmeter serve --processes 2`: two receiver processes on one OTLP port (SO_REUSEPORT) under a
supervisor, against a real PostgreSQL: the traffic spreads, the metrics add up to what the ledger holds,
a killed receiver is replaced without loss or double counting, the port is not shared with an unrelated
serve, and SIGTERM stops everything gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc

from spanmeter.billing.ledger import migrate
from support import SPANMETER, Collector, SpanFactory, ledger, request_bytes, wait_until

MS = 1_000_000
OPTIONS = ("--metrics-port", "0", "--processes")
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _children(pid: int) -> list[int]:
    """The receiver processes of supervisor ``pid`` (multiprocessing's resource tracker is a child too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def _established_on(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` whose local port is ``port`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def _send_from_many_connections(endpoint: str, account: str, connections: int, requests_each: int) -> list:
    """Each sender has its own TCP connection (a local subchannel pool) and retries until OK, as an
    exporter with a persistent queue does."""
    factory = SpanFactory({"service.name": "processes-svc"})
    lock = threading.Lock()
    codes: list[grpc.StatusCode] = []

    def sender(number: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(endpoint, options=options) as channel:
            call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            for r in range(requests_each):
                with lock:
                    spans = [
                        factory.span(f"run/{number}/{r}/{i}", {"account_id": account, "celery.action": "run"}, 100 * MS)
                        for i in range(20)
                    ]
                body = request_bytes(spans)
                while True:
                    try:
                        call(body, timeout=30)
                        with lock:
                            codes.append(grpc.StatusCode.OK)
                        break
                    except grpc.RpcError as err:
                        with lock:
                            codes.append(err.code())
                        time.sleep(0.2)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return codes


def test_two_receiver_processes_spread_the_load_and_the_metrics_add_up_to_the_ledger(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_PROCESSES": "2"}).start()
    try:
        receivers = _children(collector.proc.pid)
        assert len(receivers) == 2, collector.output
        head = migrate.head_revision()
        assert collector.get("/readyz") == (200, f"ready (schema {head}); 2 receiver processes\n")

        codes = _send_from_many_connections(collector.endpoint, "acct-multi", connections=16, requests_each=5)
        assert codes.count(grpc.StatusCode.OK) == 80
        assert ledger(fresh_db, "SELECT count(*) FROM usage_events WHERE account_id = 'acct-multi'") == [(1600,)]

        m = collector.metrics()
        assert m['spanmeter_spans_billed_total{meter="worker_seconds"}'] == 1600
        assert m["spanmeter_spans_received_total"] == 1600
        assert m['spanmeter_export_requests_total{grpc_code="OK"}'] == 80
        assert m["spanmeter_pipeline_lag_seconds_count"] == 1600
        assert m["spanmeter_ledger_last_commit_timestamp_seconds"] > time.time() - 120
        # sampled every second in each receiver (a scrape-time gauge cannot cross processes)
        wait_until(
            lambda: collector.metrics()["spanmeter_ledger_pending_requests"] == 0, timeout=10, what="nothing pending"
        )
        # the supervisor folds the receivers' rollup deltas (the gauge is a sample: read the tables themselves)
        folded = "SELECT coalesce(sum(events), 0) FROM usage_rollups_daily WHERE account_id = 'acct-multi'"
        wait_until(lambda: ledger(fresh_db, folded) == [(1600,)], timeout=30, what="the deltas folded")
        assert collector.metrics()["spanmeter_rollup_deltas_folded_total"] >= 1
    finally:
        collector.kill()


def test_connections_land_on_both_receivers(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_PROCESSES": "2"}).start()
    try:
        receivers = _children(collector.proc.pid)
        port = int(collector.endpoint.rsplit(":", 1)[1])
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.insecure_channel(collector.endpoint, options=options) for _ in range(16)]
        try:
            for channel in channels:
                grpc.channel_ready_future(channel).result(timeout=15)
            per_receiver = [_established_on(pid, port) for pid in receivers]
            assert sum(per_receiver) == 16 and min(per_receiver) >= 1, per_receiver  # all on one: p = 2**-15
        finally:
            for channel in channels:
                channel.close()
    finally:
        collector.kill()


def test_a_killed_receiver_is_replaced_and_the_ledger_stays_exact(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_PROCESSES": "2", "SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "3"})
    collector.start()
    try:
        victim = _children(collector.proc.pid)[0]
        results: list = []
        sending = threading.Thread(
            target=lambda: results.extend(_send_from_many_connections(collector.endpoint, "acct-kill", 8, 10))
        )
        sending.start()
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)  # mid-stream
        sending.join(180)
        assert results.count(grpc.StatusCode.OK) == 80  # every request acknowledged in the end (after retries)
        wait_until(lambda: len(_children(collector.proc.pid)) == 2, timeout=30, what="the receiver replaced")
        assert victim not in _children(collector.proc.pid)
        # exactly once: every span once, none twice, whatever the killed process had in flight
        assert ledger(
            fresh_db, "SELECT count(*), count(DISTINCT span_id) FROM usage_events WHERE account_id = 'acct-kill'"
        ) == [(1600, 1600)]
        wait_until(lambda: collector.get("/readyz")[0] == 200, timeout=30, what="ready again")
    finally:
        collector.kill()


def test_the_port_is_not_shared_with_another_serve_and_sigterm_stops_every_process(fresh_db):
    collector = Collector(fresh_db, env={"SPANMETER_PROCESSES": "2"}).start()
    try:
        receivers = _children(collector.proc.pid)
        for processes in ("2", "1"):
            second = subprocess.run(
                [
                    SPANMETER,
                    "serve",
                    "--database-url",
                    fresh_db,
                    "--allow-owner",
                    "--otlp-endpoint",
                    collector.endpoint,
                    *OPTIONS,
                    processes,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert second.returncode == 2, second.stdout + second.stderr  # a port in use: the setting is named
            assert f"cannot listen for OTLP/gRPC on {collector.endpoint}" in second.stderr
            assert "SPANMETER_OTLP_ENDPOINT" in second.stderr
            assert "Traceback" not in second.stderr
        assert collector.stop(timeout=60) == 0
        assert "spanmeter: stopped" in collector.output
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in receivers), timeout=20, what="receivers gone"
        )
    finally:
        collector.kill()


def test_bad_process_counts_are_refused_with_the_setting_named(fresh_db):
    for value in ("0", "65", "two"):
        run = subprocess.run(
            [SPANMETER, "serve", "--database-url", fresh_db, "--processes", value],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2
        assert f"--processes={value!r} is invalid" in run.stderr and "1 to 64" in run.stderr
        assert "Traceback" not in run.stderr
