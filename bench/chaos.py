"""Soak and chaos: is the ledger still exact after minutes of load, receiver SIGKILLs and database restarts?

Two `spanmeter serve` receivers (each on its own port, both writing one ledger as ``spanmeter_writer``) take
pre-encoded Export requests (``_loadgen``: unique span ids, every span billable) from client threads that
behave like a durable queue: a request is re-sent, alternating receivers, until one answers OK. When the
window ends the clients stop taking new requests and drain what they hold. Then:

- exactness: the ledger holds exactly one row per billable span acknowledged (``count(*)`` = the clients'
  sum, ``count(DISTINCT trace_id, span_id)`` = ``count(*)``), each registered at its end time in the key
  registry and nothing else registered, and the rollups, folded, equal the ledger
  (``rollup_store.check`` finds nothing);
- ``--mode soak``: a steady load (``--rate`` requests/s), the receivers' RSS sampled every 10 s;
- ``--mode chaos``: as fast as the clients go, ``--kills`` SIGKILLs of a random receiver spread over the
  window (restarted a second later on its port) and ``--db-restarts`` stops of the database (5 s each).

    .venv/bin/python bench/chaos.py --mode soak --minutes 10
    .venv/bin/python bench/chaos.py --mode chaos --minutes 3 --kills 10 --db-restarts 2

The embedded PostgreSQL lives under ``--data-dir`` (default ``bench/.chaos-data``); each run uses a fresh
database in it. Results: ``bench/results/chaos-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
from _loadgen import METHOD, RequestFactory, build_template  # noqa: E402

from spanmeter.billing.ledger import migrate, rollup_store  # noqa: E402
from spanmeter.billing.ledger.database import Database  # noqa: E402
from spanmeter.billing.ledger.embedded import EmbeddedPostgres  # noqa: E402
from spanmeter.billing.ledger.roles import WRITER_ROLE  # noqa: E402

SPANMETER = str(Path(sys.executable).with_name("spanmeter"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """One `spanmeter serve` on a fixed port, restartable after a SIGKILL."""

    def __init__(self, number: int, database_url: str, log_dir: Path) -> None:
        self.number = number
        self.database_url = database_url
        self.port, self.metrics_port = _free_port(), _free_port()
        self.log = open(log_dir / f"receiver-{number}.log", "a")  # noqa: SIM115
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "SPANMETER_LOG_LEVEL": "WARNING", "SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "5"}
        self.proc = subprocess.Popen(
            [
                *(SPANMETER, "serve", "--database-url", self.database_url),
                *("--otlp-endpoint", self.endpoint, "--metrics-port", str(self.metrics_port)),
                *("--otlp-http-endpoint", "none"),  # the clients speak gRPC; two receivers cannot share 4318
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"receiver {self.number} exited with {self.proc.returncode}") from None
                time.sleep(0.1)
        raise RuntimeError(f"receiver {self.number} did not listen within 60 s")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.restarts += 1

    def rss_mib(self) -> float:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2**20 if self.proc else 0.0
        except psutil.NoSuchProcess:
            return 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Client(threading.Thread):
    """A durable queue: each request is re-sent, alternating receivers, until one answers OK."""

    def __init__(
        self, number: int, receivers: list[Receiver], stop: threading.Event, rate: float | None, spans: int
    ) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.factory = RequestFactory(
            [build_template(spans, 1, seed=number * 10 + k) for k in range(4)], os.urandom(6), number, 0
        )
        self.receivers = receivers
        self.stop_event = stop
        self.interval = 1.0 / rate if rate else 0.0
        self.acknowledged_spans = 0
        self.requests = 0
        self.attempts = 0
        self.codes: dict[str, int] = {}
        self.channels: dict[str, grpc.Channel] = {}

    def _call(self, endpoint: str, body: bytes) -> grpc.StatusCode:
        channel = self.channels.get(endpoint)
        if channel is None:
            channel = self.channels[endpoint] = grpc.insecure_channel(endpoint)
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        try:
            call(body, timeout=15)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()

    def run(self) -> None:
        turn = random.randrange(len(self.receivers))
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            if self.interval:
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            body, _spans, billable = self.factory.next()
            while True:  # held until acknowledged, even after the window closed: nothing is dropped
                receiver = self.receivers[turn % len(self.receivers)]
                code = self._call(receiver.endpoint, body)
                self.attempts += 1
                self.codes[code.name] = self.codes.get(code.name, 0) + 1
                if code == grpc.StatusCode.OK:
                    break
                turn += 1
                time.sleep(0.2)
            self.requests += 1
            self.acknowledged_spans += billable


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("soak", "chaos"), required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--spans-per-request", type=int, default=128)
    p.add_argument("--rate", type=float, default=10.0, help="soak: requests/s per client")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--db-restarts", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=BENCH_DIR / ".chaos-data")
    a = p.parse_args()

    server = EmbeddedPostgres(a.data_dir)
    default = server.start()
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(default, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    owner = Database(make_conninfo(default, dbname=name), embedded=False, description=name)
    migrate.upgrade(owner)
    writer = owner.as_user(WRITER_ROLE)
    logs = a.data_dir / "logs" / name
    logs.mkdir(parents=True, exist_ok=True)
    receivers = [Receiver(n, writer.conninfo, logs) for n in range(2)]
    try:
        for r in receivers:
            r.start()
    except BaseException:  # one that did start must not outlive the run
        for r in receivers:
            if r.proc is not None:
                r.stop()
        raise
    stop = threading.Event()
    rate = a.rate if a.mode == "soak" else None
    clients = [Client(n, receivers, stop, rate, a.spans_per_request) for n in range(a.clients)]
    started = time.monotonic()
    for c in clients:
        c.start()
    window = a.minutes * 60
    events: list[str] = []
    rss: list[tuple[float, list[float]]] = []
    if a.mode == "chaos":
        plan = sorted(
            [("kill", window * (i + 1) / (a.kills + 1)) for i in range(a.kills)]
            + [("db", window * (i + 1) / (a.db_restarts + 1) + 3) for i in range(a.db_restarts)],
            key=lambda e: e[1],
        )
        for what, at in plan:
            time.sleep(max(0.0, started + at - time.monotonic()))
            if what == "kill":
                victim = random.choice(receivers)
                victim.kill()
                events.append(f"{time.monotonic() - started:6.1f}s SIGKILL receiver {victim.number}")
                time.sleep(1)
                victim.start()
            else:
                server_pid = int((server.pgdata / "postmaster.pid").read_text().splitlines()[0])
                os.kill(server_pid, signal.SIGINT)  # PostgreSQL's fast shutdown: sessions are cut
                while server.is_running():
                    time.sleep(0.1)
                events.append(f"{time.monotonic() - started:6.1f}s database stopped")
                time.sleep(5)
                server.start()
                events.append(f"{time.monotonic() - started:6.1f}s database started")
        time.sleep(max(0.0, started + window - time.monotonic()))
    else:
        while time.monotonic() - started < window:
            rss.append((round(time.monotonic() - started, 1), [round(r.rss_mib(), 1) for r in receivers]))
            time.sleep(min(10.0, max(0.0, started + window - time.monotonic())))
        rss.append((round(time.monotonic() - started, 1), [round(r.rss_mib(), 1) for r in receivers]))
    stop.set()
    for c in clients:
        c.join(300)
    elapsed = time.monotonic() - started
    for r in receivers:
        r.stop()

    expected = sum(c.acknowledged_spans for c in clients)
    with psycopg.connect(owner.conninfo) as conn:
        rows, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (trace_id, span_id, meter_code)) FROM usage_events"
        ).fetchone()
        # the key registry (migration 0018): every row's key once, at the row's own end time
        registered = conn.execute(
            "SELECT count(*) FROM usage_events u JOIN usage_event_keys k"
            " ON k.idempotency_key = u.idempotency_key AND k.occurred_at = u.occurred_at"
        ).fetchone()[0]
        keys = conn.execute("SELECT count(*) FROM usage_event_keys").fetchone()[0]
        while rollup_store.fold(conn).deltas:
            pass
        differences = rollup_store.check(conn)
    codes: dict[str, int] = {}
    for c in clients:
        for k, v in c.codes.items():
            codes[k] = codes.get(k, 0) + v
    exact = rows == expected == distinct == registered == keys and not differences
    result = {
        "mode": a.mode,
        "minutes": a.minutes,
        "elapsed_s": round(elapsed, 1),
        "requests_acknowledged": sum(c.requests for c in clients),
        "spans_acknowledged": expected,
        "ledger_rows": rows,
        "ledger_distinct_spans": distinct,
        "registry_keys": keys,
        "rows_registered": registered,
        "rollup_differences": len(differences),
        "answers": codes,
        "receiver_restarts": [r.restarts for r in receivers],
        "events": events,
        "rss_mib": rss,
        "exact": exact,
    }
    print(
        f"{a.mode}: {elapsed:.0f} s, {result['requests_acknowledged']:,} requests, {expected:,} billable spans acknowledged"
    )
    print(f"  answers: {codes}")
    for e in events:
        print(f"  {e}")
    if rss:
        first, last = rss[0][1], rss[-1][1]
        peak = [max(s[1][i] for s in rss) for i in range(len(receivers))]
        print(f"  receiver RSS MiB: first {first}, last {last}, max {peak} ({len(rss)} samples)")
    print(
        f"  ledger: {rows:,} rows, {distinct:,} distinct spans, {registered:,} registered at their end time "
        f"({keys:,} keys), rollups vs ledger differences: {len(differences)}"
        f" -> {'EXACT' if exact else 'NOT EXACT'}"
    )
    out = BENCH_DIR / "results" / f"chaos-{a.mode}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"  results: {out}")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
