#!/usr/bin/env python
"""Many receivers, one ledger: committed spans/s with 1 `spanmeter serve` and with N behind routing by trace id.

    .venv/bin/python bench/receivers_bench.py                          # 1 vs 3 receivers, medians of 3
    .venv/bin/python bench/receivers_bench.py --repeat 1 --seconds 5   # quick

The load is what the gateway of deploy/otelcol-gateway.yaml sends under load (no Collector binary can be had
here): its persistent queue merges app batches into batches of ``sending_queue.batch.min_size`` spans (8,192)
and exports ``num_consumers`` (4) of them at once, each cut by trace id over the Collector's consistent hash
ring (``_trace_routing``) into one request per replica. So by default one client process (the gateway) keeps
``num_consumers`` batches of ``min_size`` spans in flight (closed loop), read from --gateway; with N receivers
a batch becomes N requests of about spans/N, each holding only traces that the ring gives its receiver (the
trace ids are drawn so, which costs no decode), sent one after the other in a random order, each once the
previous one is answered, as the exporter calls its sub-exporters (contrib's trace exporter ranges over the
backends of a batch and each sub-exporter, without a queue, returns when its replica answers; --parts-together
sends them at once instead); a batch is done when every part is answered. The same offered load whatever N. Client processes replay
pre-encoded batches (``_loadgen`` templates: every span a billable Celery run). --spans-per-batch, --inflight
and --clients replace the gateway's figures: ``--spans-per-batch 512 --inflight 8 --clients 2`` is a gateway
that forwards app batches as they come (the shipped one before it batched).

Figures per configuration (1 receiver, N receivers; alternated each repeat, medians of --repeat): committed
spans/s (a receiver answers OK only after COMMIT, so acknowledged = committed; each phase ends by checking
that the ledger holds exactly the acknowledged spans), batch latency p50/p99, and what bounds it: cores used by
each receiver, PostgreSQL and the load generator over the window, and the machine's busy cores. Every
receiver writes one ledger as ``spanmeter_writer`` in a fresh database of an embedded PostgreSQL under
--data-dir. Before each configuration every pending rollup delta is folded (the previous configuration's
deferred upkeep is not charged to the next), and each window samples the pending deltas and the fold lag
once a second: a lag at issue 1/7's bound (p99 10 s) or a backlog that grows by more than two folds means the
fold did not keep up and the rate overstates what is sustained (the summary warns). Results: bench/results/receivers-*.json.

Diagnostics (deploy/README.md, "The split itself"): ``--profile-statements`` samples pg_stat_activity every
20 ms over each window and prints where the database's backends spend their time, by statement and wait event;
``--split-control`` adds a third configuration, one receiver fed what each of the N gets (requests of spans/N,
as many in flight as each of the N holds: all the batches' with --parts-together, about 1/N of them when the
parts go in turn), which separates the cost of smaller requests from the cost of more processes;
``--inflight-many K`` gives the N receivers K batches in flight per client (a gateway with more queue
consumers; with --parts-together each then holds K parts, in turn about K/N); ``--spans-per-batch-many M``
gives them batches of M spans (M = N x --spans-per-batch: each receiver gets requests as large as the single
one does, as a gateway that batches again per replica would send).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import multiprocessing as mp
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _loadgen  # noqa: E402
import _monitor  # noqa: E402
from _trace_routing import HashRing  # noqa: E402

SPANMETER = str(Path(sys.executable).with_name("spanmeter"))


def log(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_rate(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:,.0f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the load: app batches split by trace id ----------------------------------------------------------------
class RoutedRequestFactory(_loadgen.RequestFactory):
    """``_loadgen.RequestFactory`` whose trace ids the caller chooses (so a request holds only the traces the
    ring gives one receiver); span ids, times and templates as there."""

    def next_with_traces(self, traces) -> bytes:
        import numpy as np

        t = self.templates[self.turn % len(self.templates)]
        self.turn += 1
        vals = self._vals
        vals[:, 8:16] = traces[self._ar // _loadgen.SPANS_PER_TRACE].astype(">u8").view(np.uint8).reshape(-1, 8)
        vals[:, 16:24] = (np.uint64(self.span_seq) + self._ar).astype(">u8").view(np.uint8).reshape(-1, 8)
        self.span_seq += self.n
        end = np.int64(time.time_ns()) - t.end_jitter_ns
        vals[:, 24:32] = (end - t.duration_ns).astype("<i8").view(np.uint8).reshape(-1, 8)
        vals[:, 32:40] = end.astype("<i8").view(np.uint8).reshape(-1, 8)
        buf = np.frombuffer(bytearray(t.body), dtype=np.uint8)
        buf[t.index] = vals.reshape(-1)
        return buf.tobytes()


class TracePools:
    """Trace counters (the last 8 bytes of a trace id after the 8-byte prefix) sorted by the receiver the
    ring routes them to, drawn in order: every receiver gets the traces the Collector would give it."""

    def __init__(self, prefix: bytes, ring: HashRing) -> None:
        self.prefix, self.ring = prefix, ring
        self.pools: dict[str, deque[int]] = {e: deque() for e in ring.endpoints}
        self.counter = 0

    def take(self, endpoint: str, n: int):
        import numpy as np

        pool = self.pools[endpoint]
        while len(pool) < n:
            self.counter += 1
            self.pools[self.ring.endpoint_for(self.prefix + self.counter.to_bytes(8, "big"))].append(self.counter)
        return np.array([pool.popleft() for _ in range(n)], dtype=np.uint64)


class _NoAnswer:
    """A part that could not be sent: no status code (counted as UNKNOWN)."""

    @staticmethod
    def code() -> None:
        return None


_NO_ANSWER = _NoAnswer()


def client_main(conf: dict, pipe) -> None:
    """Process entry: build templates, connect to every receiver, report ready, wait for (t_start, t0, t1), send
    batches split by trace id until t1, report the window's counts."""
    try:
        import grpc

        endpoints = conf["endpoints"]
        part = math.ceil(conf["spans"] / len(endpoints))
        templates = [
            _loadgen.build_template(part, 1, seed=conf["client"] * 100 + k + conf["phase"] * 7)
            for k in range(_loadgen.TEMPLATES_PER_CLIENT)
        ]
        factory = RoutedRequestFactory(templates, conf["nonce"], conf["client"], conf["phase"])
        prefix = bytes(factory.prefix.tobytes())
        pools = TracePools(prefix, HashRing(endpoints))
        traces_per_part = math.ceil(part / _loadgen.SPANS_PER_TRACE)
        options = [("grpc.max_send_message_length", 64 * 2**20), ("grpc.use_local_subchannel_pool", 1)]
        channels = {e: grpc.insecure_channel(e, options=options) for e in endpoints}
        for channel in channels.values():
            grpc.channel_ready_future(channel).result(timeout=30)
        calls = {
            e: c.unary_unary(_loadgen.METHOD, request_serializer=None, response_deserializer=None)
            for e, c in channels.items()
        }
        pipe.send(("ready", os.getpid()))
        t_start, t0, t1 = pipe.recv()
    except Exception as exc:  # reported, never a hang in the parent
        pipe.send(("error", repr(exc)))
        return

    lock = threading.Lock()
    inflight = threading.Semaphore(conf["inflight"])
    rng = random.Random(conf["client"] * 1000 + conf["phase"])
    result = {"window_spans": 0, "acked_spans": 0, "codes": Counter(), "latencies": [], "per_receiver": Counter()}

    def send_batch() -> None:
        sent_at = time.time()
        remaining = [len(endpoints)]

        def done(fut, endpoint: str, spans: int) -> None:
            now = time.time()
            code = fut.code()
            name = code.name if code is not None else "UNKNOWN"
            with lock:
                result["codes"][name] += 1
                if name == "OK":
                    result["acked_spans"] += spans
                    if t0 <= now < t1:
                        result["window_spans"] += spans
                        result["per_receiver"][endpoint] += spans
                remaining[0] -= 1
                last = remaining[0] == 0
                if last and t0 <= now < t1:
                    result["latencies"].append(now - sent_at)
            if last:
                inflight.release()

        parts = [(e, factory.next_with_traces(pools.take(e, traces_per_part))) for e in endpoints]
        if not conf["parts_together"]:
            # the loadbalancing exporter sends a batch's parts one after the other, each waiting for its
            # replica's answer (sub-exporters without a queue; ranging over a Go map: in no fixed order)
            rng.shuffle(parts)

            def send_from(i: int) -> None:
                for j in range(i, len(parts)):
                    endpoint, body = parts[j]
                    try:
                        fut = calls[endpoint].future(body, timeout=30)
                    except Exception:  # counted as unanswered; the exporter goes on to the next backend
                        done(_NO_ANSWER, endpoint, part)
                        continue
                    fut.add_done_callback(lambda f, e=endpoint, j=j: answered(f, e, j))
                    return

            def answered(fut, endpoint: str, j: int) -> None:
                try:
                    done(fut, endpoint, part)
                finally:  # the batch's permit is released only when its last part is done
                    send_from(j + 1)

            send_from(0)
            return
        for endpoint, body in parts:
            fut = calls[endpoint].future(body, timeout=30)
            fut.add_done_callback(lambda f, e=endpoint, n=part: done(f, e, n))

    while time.time() < t_start:
        time.sleep(0.005)
    while True:
        inflight.acquire()
        if time.time() >= t1:
            inflight.release()
            break
        send_batch()
    for _ in range(conf["inflight"]):  # drain: every batch answered before the ledger is checked
        inflight.acquire(timeout=60)
    for channel in channels.values():
        channel.close()
    result["codes"] = dict(result["codes"])
    result["per_receiver"] = dict(result["per_receiver"])
    pipe.send(("result", result))


# -- receivers and PostgreSQL -------------------------------------------------------------------------------
class Receiver:
    """One `spanmeter serve` on its own OTLP and metrics ports."""

    def __init__(self, number: int, database_url: str, work: Path, extra_env: dict[str, str]) -> None:
        self.number = number
        self.log_path = work / f"receiver-{number}.log"
        self.env = {
            **os.environ,
            "SPANMETER_LOG_LEVEL": "WARNING",
            "SPANMETER_OTLP_HTTP_ENDPOINT": "127.0.0.1:0",
            "SPANMETER_DATA_DIR": str(work / f"receiver-{number}-data"),
            **extra_env,
        }
        self.database_url = database_url
        self.respawns = 0
        self._spawn()

    def _spawn(self) -> None:
        # a port free now may be taken before serve binds it (another receiver's ephemeral port): wait_listening
        # then starts it again on other ports
        self.port, self.metrics_port = free_port(), free_port()
        self.log_file = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                *(SPANMETER, "serve", "--database-url", self.database_url),
                *("--otlp-endpoint", self.endpoint, "--metrics-port", str(self.metrics_port)),
            ],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "listening " in self.log_path.read_text():
                return
            if self.proc.poll() is not None:
                text = self.log_path.read_text()
                if ("already in use" in text or "cannot listen for OTLP/gRPC" in text) and self.respawns < 3:
                    self.respawns += 1
                    self.log_file.close()
                    self._spawn()
                    continue
                raise RuntimeError(f"receiver {self.number} exited:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"receiver {self.number} did not listen within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


class Ledger:
    """An embedded PostgreSQL (this bench's own data directory) and a fresh, migrated database in it."""

    def __init__(self, data_dir: Path) -> None:
        from psycopg import sql
        from psycopg.conninfo import make_conninfo

        from spanmeter.billing.ledger import migrate
        from spanmeter.billing.ledger.database import Database
        from spanmeter.billing.ledger.embedded import EmbeddedPostgres
        from spanmeter.billing.ledger.roles import WRITER_ROLE

        self.server = EmbeddedPostgres(data_dir)
        self.started_here = not self.server.is_running()
        default = self.server.start()
        self.admin = make_conninfo(default, dbname="postgres")
        self.name = f"receivers_{uuid.uuid4().hex[:8]}"
        with _connect(self.admin) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            self.version = conn.execute("SHOW server_version").fetchone()[0]
            self.settings = {
                k: conn.execute(f"SHOW {k}").fetchone()[0]
                for k in ("shared_buffers", "max_wal_size", "synchronous_commit", "fsync")
            }
        self.owner = Database(make_conninfo(default, dbname=self.name), embedded=False, description=self.name)
        migrate.upgrade(self.owner)
        self.writer_url = self.owner.as_user(WRITER_ROLE).conninfo
        self.postmaster_pid = int((self.server.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def rows_of(self, trace_prefix_hex: str) -> int:
        with _connect(self.owner.conninfo) as conn:
            return conn.execute(
                "SELECT count(*) FROM usage_events WHERE trace_id LIKE %s", (trace_prefix_hex + "%",)
            ).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Cumulative work counters of the bench database (PostgreSQL's statistics, flushed within ~1 s):
        commits, and rows written per ledger table, so a window's difference says what each span cost."""
        with _connect(self.owner.conninfo) as conn:
            out = {
                "commits": conn.execute(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                ).fetchone()[0]
            }
            for name, ins, upd in conn.execute(
                "SELECT relname, n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname IN"
                " ('usage_rollup_deltas', 'usage_job_set_members', 'usage_rollups_hourly', 'usage_rollups_daily')"
            ):
                out[f"{name} ins"] = ins
                out[f"{name} upd"] = upd
        return out

    def pending_deltas(self) -> tuple[int, float]:
        """(rollup deltas written and not folded yet, age of the oldest in seconds)."""
        from spanmeter.billing.ledger import rollup_store

        with _connect(self.owner.conninfo) as conn:
            p = rollup_store.pending_deltas(conn)
            return p.deltas, p.oldest_age_seconds

    def drain(self) -> int:
        """Fold every pending delta (as the owner, no receiver running), so that no configuration pays for
        the upkeep the previous one deferred. Returns how many were folded. The fold answers no row while
        another folder holds its lock (a stopped receiver's backend finishing a fold): then wait and retry."""
        folded = 0
        with _connect(self.owner.conninfo) as conn:
            while True:
                row = conn.execute("SELECT folded_deltas FROM spanmeter_fold_rollups(200000)").fetchone()
                if row is None:  # locked out: someone else is folding
                    time.sleep(0.2)
                    continue
                folded += row[0]
                if row[0] == 0 and self.pending_deltas()[0] == 0:
                    return folded

    def stop(self) -> None:
        if self.started_here:
            self.server.stop()


def _connect(conninfo: str):
    import psycopg

    return psycopg.connect(conninfo, autocommit=True)


# -- one measurement ----------------------------------------------------------------------------------------
def _client_load(args: argparse.Namespace, many: bool, split: int = 1) -> tuple[int, int]:
    """(spans per batch, batches in flight) per client process: the N receivers' (``many``) or the one's. A
    split control sends one receiver what each of the N gets: ceil(batch / split) spans per request, as many
    requests in flight as the N's batches when the parts go together, about a split-th of them when they go in
    turn (each of the N then holds one part of about every split-th batch)."""
    spans = args.spans_per_batch_many if many and args.spans_per_batch_many else args.spans_per_batch
    inflight = args.inflight_many if many and args.inflight_many else args.inflight
    if split > 1 and not args.parts_together:
        inflight = math.ceil(inflight / split)
    return math.ceil(spans / split), inflight


def run_phase(
    args: argparse.Namespace,
    db: Ledger,
    receivers: int,
    phase: int,
    nonce: bytes,
    work: Path,
    split: int = 1,
) -> dict:
    """One configuration. ``split`` > 1 (``--split-control``, one receiver): what each of the ``split``
    receivers gets: requests of ceil(batch/split) spans, the N's batches in flight, the N's environment."""
    many = receivers > 1 or split > 1  # the N receivers' load and environment
    env = dict(e.split("=", 1) for e in args.serve_env + (args.replica_env if many else []))
    spans, inflight = _client_load(args, many, split)
    drained = db.drain()
    if drained:
        log(f"    folded {drained:,} deltas left by the previous configuration before starting")
    started = [Receiver(n, db.writer_url, work, env) for n in range(receivers)]
    try:
        for r in started:
            r.wait_listening()
        endpoints = [r.endpoint for r in started]
        confs = [
            {
                "client": c,
                "phase": phase,
                "nonce": nonce,
                "endpoints": endpoints,
                "spans": spans,
                "inflight": inflight,
                "parts_together": args.parts_together,
            }
            for c in range(args.clients)
        ]
        ctx = mp.get_context("spawn")
        pipes, procs, pids = [], [], []
        sampler: _monitor.ActivitySampler | None = None
        for conf in confs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(conf, child), daemon=True)
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        try:
            for pipe in pipes:
                if not pipe.poll(120):
                    raise RuntimeError("a client process did not get ready within 120 s")
                kind, value = pipe.recv()
                if kind == "error":
                    raise RuntimeError(f"client failed to start: {value}")
                pids.append(value)
            t_start = time.time() + 0.3
            t0, t1 = t_start + args.warmup, t_start + args.warmup + args.seconds
            for pipe in pipes:
                pipe.send((t_start, t0, t1))
            components = {f"receiver {r.number + 1}": [r.proc.pid] for r in started} | {"load generator": pids}
            _sleep_until(t0)
            s0 = _monitor.cpu_snapshot(components, db.postmaster_pid, _monitor.pg_labels(db.admin))
            c0 = db.counts()
            sampler = _monitor.ActivitySampler(db.admin, db.name).start() if args.profile_statements else None
            w0 = time.time()
            backlog: list[tuple[int, float]] = []  # (pending deltas, fold lag s) once a second, as serve exports them
            while time.time() < t1 - 0.5:
                backlog.append(db.pending_deltas())
                _sleep_until(min(time.time() + 1.0, t1 - 0.5))
            _sleep_until(t1)
            s1 = _monitor.cpu_snapshot(components, db.postmaster_pid, _monitor.pg_labels(db.admin))
            c1 = db.counts()
            activity = sampler.stop() if sampler else None
            cpu = _monitor.cpu_delta(s0, s1, time.time() - w0)
            results = []
            for pipe in pipes:
                if not pipe.poll(120):
                    raise RuntimeError("a client process did not report within 120 s")
                kind, value = pipe.recv()
                if kind == "error":
                    raise RuntimeError(value)
                results.append(value)
        finally:
            if sampler is not None:
                sampler.stop()  # a second stop is harmless; this one is for a phase that failed
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
    finally:
        for r in started:
            r.stop()
    codes: Counter = Counter()
    per_receiver: Counter = Counter()
    latencies: list[float] = []
    for r in results:
        codes.update(r["codes"])
        per_receiver.update(r["per_receiver"])
        latencies.extend(r["latencies"])
    acked = sum(r["acked_spans"] for r in results)
    prefix = nonce.hex() + "__" + f"{phase & 0xFF:02x}"  # nonce6 ‖ client (any) ‖ phase
    in_ledger = db.rows_of(prefix)
    rate = sum(r["window_spans"] for r in results) / args.seconds
    return {
        "receivers": receivers,
        "split": split,
        "value": rate,
        "batch_latency_p50": _loadgen.percentile(latencies, 0.5),
        "batch_latency_p99": _loadgen.percentile(latencies, 0.99),
        "codes": dict(codes),
        "share": {e: per_receiver[e] / max(1, sum(per_receiver.values())) for e in endpoints},
        "acked_spans": acked,
        "ledger_rows": in_ledger,
        "exact": in_ledger == acked,
        "cpu": cpu,
        "db_work": {k: c1[k] - c0.get(k, 0) for k in c1},
        "pending_deltas": [n for n, _ in backlog],
        "fold_lag_s": [lag for _, lag in backlog],
        "seconds": args.seconds,
        "activity": activity,
    }


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.05))


def bound_by(res: dict) -> str:
    """What limits the figure: the window's CPU split (receivers, PostgreSQL, load) against the machine."""
    cpu = res["cpu"]
    cores, busy, ncpu = cpu["cores"], cpu["machine_busy_cores"], cpu["ncpu"]
    receivers = {k: v for k, v in cores.items() if k.startswith("receiver ")}
    rate = max(res["value"], 1e-9)
    receiver_cores = sum(receivers.values())
    parts = [
        f"receivers {receiver_cores:.2f}c ({receiver_cores * 1e6 / rate:.1f} µs/span"
        + (", " + " ".join(f"{v:.2f}" for v in receivers.values()) + " each" if len(receivers) > 1 else "")
        + ")",
        f"PostgreSQL {cpu['postgres_cores']:.2f}c ({cpu['postgres_cores'] * 1e6 / rate:.1f} µs/span)",
        f"load gen {cores.get('load generator', 0.0):.2f}c",
        f"machine {busy:.2f}/{ncpu} cores busy" + (" (saturated)" if busy >= 0.9 * ncpu else ""),
    ]
    if cpu["other_processes_cores"] > 0.1:
        parts.append(f"other processes {cpu['other_processes_cores']:.2f}c")
    return "; ".join(parts)


def report_phase(res: dict) -> None:
    n = res["receivers"]
    log(
        f"    committed {fmt_rate(res['value'])} spans/s; batch latency p50 {res['batch_latency_p50'] * 1e3:.0f} ms "
        f"p99 {res['batch_latency_p99'] * 1e3:.0f} ms; answers {res['codes']}"
    )
    if n > 1:
        log("    share by trace id: " + ", ".join(f"{e} {s:.1%}" for e, s in res["share"].items()))
    log(
        f"    ledger: {res['ledger_rows']:,} rows for {res['acked_spans']:,} acknowledged spans -> "
        + ("exact" if res["exact"] else "NOT EXACT")
    )
    cpu = res["cpu"]
    rate = max(res["value"], 1e-9)
    pg = {k: v for k, v in cpu["cores"].items() if k.startswith("postgres") and v >= 0.02}
    log(
        "      cpu: "
        + "; ".join(f"{k} {v:.2f}c" for k, v in cpu["cores"].items() if not k.startswith("postgres") and v >= 0.02)
    )
    log("      cpu: " + "; ".join(f"{k} {v:.2f}c" for k, v in pg.items()))
    total = sum(v for k, v in cpu["cores"].items() if not k.startswith(_SAMPLER))
    log(f"      all bench processes {total:.2f}c = {total * 1e6 / rate:.1f} µs of CPU per committed span")
    spans = max(res["value"] * res["seconds"], 1)
    log(
        "      database work per committed span: "
        + "; ".join(f"{k} {v / spans:.3f}" for k, v in res["db_work"].items() if v)
    )
    if res.get("activity"):
        act = res["activity"]
        total_active = sum(act["active"].values())
        log(
            f"      statements active (pg_stat_activity, {act['samples']} samples over {act['seconds']:.1f} s): "
            f"{total_active / max(act['seconds'], 1e-9):.2f} backends on average"
            + (f"; sampling stopped early: {act['error']}" if act["error"] else "")
        )
        for label, secs in list(act["active"].items())[:12]:
            log(f"        {secs / max(act['seconds'], 1e-9):5.2f}  {1e6 * secs / spans:6.1f} µs/span  {label}")
    pending, lags = res["pending_deltas"], sorted(res["fold_lag_s"])
    if pending:
        log(
            f"      rollup fold lag (sampled each 1 s, n={len(lags)}): p50 {_loadgen.percentile(lags, 0.5):.2f} s "
            f"p99 {_loadgen.percentile(lags, 0.99):.2f} s; pending deltas first {pending[0]:,} last {pending[-1]:,} "
            f"max {max(pending):,}"
            + (" (the fold is not keeping up: this rate is not sustained)" if _fold_behind(res) else "")
        )
    res["bound_by"] = bound_by(res)
    log(f"    bound by: {res['bound_by']}")


def _fold_behind(res: dict) -> bool:
    """The fold did not keep up over the window: its lag reached issue 1/7's bound (p99 < 10 s), or the
    backlog grew by more than two folds' worth (a fold takes up to 50,000 deltas, so the pending count
    saw-tooths by about that much while the fold keeps up)."""
    pending, lags = res["pending_deltas"], sorted(res["fold_lag_s"])
    if not pending:
        return False
    return _loadgen.percentile(lags, 0.99) >= 10.0 or pending[-1] - pending[0] > 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--receivers", type=int, default=3, help="the N compared with 1 receiver")
    p.add_argument("--repeat", type=int, default=3, help="measure both configurations N times; medians reported")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window per configuration")
    p.add_argument("--warmup", type=float, default=3.0, help="load before each window, not counted")
    p.add_argument(
        "--gateway",
        type=Path,
        default=BENCH_DIR.parent / "deploy" / "otelcol-gateway.yaml",
        help="the gateway whose load is sent: its sending_queue.batch.min_size spans per batch, num_consumers "
        "batches in flight, from one client process",
    )
    p.add_argument("--clients", type=int, default=None, help="load-generator processes (default: 1, the gateway)")
    p.add_argument(
        "--inflight", type=int, default=None, help="outstanding batches per client process (default: the gateway's)"
    )
    p.add_argument(
        "--spans-per-batch",
        type=int,
        default=None,
        help="spans per batch, split by trace id over the receivers (default: the gateway's)",
    )
    p.add_argument("--data-dir", type=Path, default=BENCH_DIR / ".data-receivers", help="embedded PostgreSQL and logs")
    p.add_argument("--serve-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for serve")
    p.add_argument(
        "--replica-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the N receivers only, e.g. SPANMETER_LEDGER_WRITERS=1 (N x 1 writer connections)",
    )
    p.add_argument(
        "--inflight-many",
        type=int,
        default=0,
        help="batches in flight per client process for the N receivers only (default: --inflight): a gateway "
        "with more consumers (with --parts-together, N x the consumers gives each receiver as many spans in "
        "flight as one receiver gets; parts in turn need N^2 x)",
    )
    p.add_argument(
        "--spans-per-batch-many",
        type=int,
        default=0,
        help="app batch size for the N receivers only (default: --spans-per-batch); N x the batch gives each "
        "receiver requests as large as one receiver gets, as a gateway that batches per replica would send",
    )
    p.add_argument(
        "--split-control",
        action="store_true",
        help="also measure 1 receiver fed what each of the N receivers gets (spans/N per request, as many in "
        "flight as each of them holds): what the smaller requests cost without more processes",
    )
    p.add_argument(
        "--parts-together",
        action="store_true",
        help="send a batch's parts to the N receivers at once (default: one after the other, each after the "
        "previous one's answer, as the loadbalancing exporter does)",
    )
    p.add_argument(
        "--profile-statements",
        action="store_true",
        help="sample pg_stat_activity every 20 ms over each window: backend-seconds per statement and wait event",
    )
    p.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    if args.receivers < 2:
        p.error("--receivers must be at least 2 (it is compared with 1)")
    args.clients = 1 if args.clients is None else args.clients
    try:  # read once: the load's defaults, and whether the load given is the gateway's (said in the header)
        spans, consumers = gateway_load(args.gateway)
        args.gateway_load = (spans, consumers, 1)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if args.inflight is None or args.spans_per_batch is None:  # the gateway's figures are needed
            p.error(f"--gateway {args.gateway}: {exc} (or give --spans-per-batch and --inflight)")
        args.gateway_load = None
    else:
        args.inflight = consumers if args.inflight is None else args.inflight
        args.spans_per_batch = spans if args.spans_per_batch is None else args.spans_per_batch
    return args


# the exporter helper's defaults (exporterhelper, v0.152): num_consumers 10, batch.min_size 8192
_DEFAULT_CONSUMERS, _DEFAULT_MIN_SIZE = 10, 8192


def gateway_load(path: Path) -> tuple[int, int]:
    """(spans per merged batch, batches exported at once) of a gateway file: its loadbalancing exporter's
    top-level ``sending_queue``, ``batch.min_size`` (the least a batch holds when it leaves under load) and
    ``num_consumers`` (with ``batch``, the batches exported at once), defaults as the exporter helper's."""
    import yaml

    config = yaml.safe_load(path.read_text())
    [name] = config["service"]["pipelines"]["traces"]["exporters"]
    queue = config["exporters"][name].get("sending_queue") or {}
    batch = queue.get("batch")
    if batch is None:
        raise ValueError("its sending_queue does not batch (it forwards app batches as they come)")
    # an unset batch sizer takes the queue's when that is set, else items; batching accepts items or bytes
    sizer = (batch or {}).get("sizer") or queue.get("sizer") or "items"
    if sizer != "items":
        raise ValueError(f"its batch is sized in {sizer}, not in spans (items)")
    return int((batch or {}).get("min_size", _DEFAULT_MIN_SIZE)), int(queue.get("num_consumers", _DEFAULT_CONSUMERS))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop receivers, server
    args.data_dir.mkdir(parents=True, exist_ok=True)
    (args.data_dir / ".gitignore").write_text("*\n")  # the server's files and logs stay out of git
    lock = open(args.data_dir / "bench.lock", "w")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"receivers_bench: another run is using {args.data_dir}; wait for it or pass --data-dir")
        return 2
    head = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    log(f"spanmeter receivers bench  {datetime.now(UTC).isoformat(timespec='seconds')}")
    log(f"  machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; code under test: {head[:70]}")
    log(
        f"  load: {args.clients} client process{'es' if args.clients != 1 else ''} x {args.inflight} batches in "
        f"flight x {args.spans_per_batch} spans/batch, split by trace id (the Collector's hash ring); windows "
        f"{args.seconds:g} s after {args.warmup:g} s warm-up; repeat {args.repeat}"
    )
    if (args.spans_per_batch, args.inflight, args.clients) == args.gateway_load:
        log(f"    = what {args.gateway.name} sends under load: merged batches of batch.min_size, num_consumers at once")
    if args.inflight_many or args.spans_per_batch_many:
        spans, inflight = _client_load(args, True)
        log(f"  the {args.receivers} receivers: {inflight} batches in flight x {spans} spans/batch per client")
    if args.serve_env or args.replica_env:
        log(
            f"  serve environment: {args.serve_env or '-'}; the {args.receivers} receivers also: {args.replica_env or '-'}"
        )
    db = Ledger(args.data_dir)
    log(f"  PostgreSQL {db.version} (embedded, {db.name}): " + ", ".join(f"{k}={v}" for k, v in db.settings.items()))
    nonce = os.urandom(6)
    work = args.data_dir / "run" / db.name
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "code": head, "repeats": []}
    phase = 0
    try:
        for rep in range(args.repeat):
            log(f"\n=== repeat {rep + 1}/{args.repeat} ===")
            order: list[int | str] = [1, args.receivers] + (["split"] if args.split_control else [])
            if rep % 2:
                order.reverse()  # alternated: drift cancels
            rr: dict[int | str, dict] = {}
            for n in order:
                phase += 1
                if n == "split":
                    spans, inflight = _client_load(args, True, args.receivers)
                    log(
                        f"(1 receiver, split requests) 1 x spanmeter serve fed {spans}-span requests, {inflight} in "
                        f"flight per client: what each of the {args.receivers} receivers gets"
                    )
                    rr[n] = run_phase(args, db, 1, phase, nonce, work, split=args.receivers)
                else:
                    log(f"({n} receiver{'s' if n > 1 else ''}) {n} x spanmeter serve, one ledger")
                    rr[n] = run_phase(args, db, n, phase, nonce, work)
                report_phase(rr[n])
            results["repeats"].append({str(k): v for k, v in rr.items()})
        summarize(results, args)
    finally:
        db.stop()
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"receivers-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, default=str, indent=1))
    log(f"\nresults: {out}")
    return 0 if all(r["exact"] for rep in results["repeats"] for r in rep.values()) else 1


def summarize(results: dict, args: argparse.Namespace) -> None:
    reps = results["repeats"]

    def med(n: int | str, key: str) -> float:
        values = [rep[str(n)][key] for rep in reps if not math.isnan(rep[str(n)][key])]
        return statistics.median(values) if values else float("nan")

    one, many = med(1, "value"), med(args.receivers, "value")
    log("")
    log("=" * 118)
    log(f"SUMMARY (medians of {len(reps)} repeat{'s' if len(reps) != 1 else ''}; committed = acknowledged spans/s)")
    log("=" * 118)
    log(f"{'figure':<44} {'value':>18}  bound by (last repeat)")
    for n, value in ((1, one), (args.receivers, many)):
        label = f"{n} receiver{'s' if n > 1 else ''} behind one ledger" + (", split by trace id" if n > 1 else "")
        if n > 1 and args.replica_env:
            log(f"    ({args.receivers} receivers with {' '.join(args.replica_env)})")
        log(f"{label:<44} {fmt_rate(value) + ' spans/s':>18}  {reps[-1][str(n)]['bound_by']}")
        log(
            f"{'    batch latency p50 / p99':<44} {med(n, 'batch_latency_p50') * 1e3:>11.0f} ms / "
            f"{med(n, 'batch_latency_p99') * 1e3:.0f} ms"
        )
    log("-" * 118)
    ratio = many / one if one else float("nan")
    # with --inflight-many / --spans-per-batch-many the N got another load than the one: a diagnostic, no verdict
    diagnostic = bool(args.inflight_many or args.spans_per_batch_many)
    met = not diagnostic and not math.isnan(ratio) and ratio >= 1.0
    verdict = "diagnostic: the N got another load, no verdict" if diagnostic else ("MET" if met else "NOT MET")
    log(
        f"{f'{args.receivers} receivers / 1 receiver':<44} {ratio:>18.3f}  target >= 1.000 (no figure below 1 "
        f"receiver)   {verdict}"
    )
    split = med("split", "value") if "split" in reps[0] else float("nan")
    if not math.isnan(split):
        log(
            f"{f'1 receiver fed {args.receivers}-way split requests':<44} {fmt_rate(split) + ' spans/s':>18}  "
            f"{reps[-1]['split']['bound_by']}"
        )
        log(
            f"{f'    {args.receivers} receivers / that control':<44} {(many / split if split else math.nan):>18.3f}"
            "  (near 1: the split's "
            "smaller requests, not the extra processes, cost the difference)"
        )
    for i, rep in enumerate(reps):
        log(
            f"  repeat {i + 1}: 1 receiver {fmt_rate(rep['1']['value'])}  {args.receivers} receivers "
            f"{fmt_rate(rep[str(args.receivers)]['value'])}"
            + (f"  1 receiver, split requests {fmt_rate(rep['split']['value'])}" if "split" in rep else "")
        )
    # CPU per committed span over every process of the bench: robust to other load on the machine, unlike the
    # rates; the machine's cores divided by it is what this host can commit when the bench has it to itself
    cost: dict[int | str, dict[str, float]] = {}
    for n in (1, args.receivers, *(["split"] if "split" in reps[0] else [])):
        per = [_cpu_per_span(rep[str(n)]) for rep in reps]
        cost[n] = {k: statistics.median(p[k] for p in per) for k in per[0]}
    ncpu = reps[-1]["1"]["cpu"]["ncpu"]
    log(
        f"  CPU per committed span, all bench processes (medians): 1 receiver {cost[1]['total']:.1f} µs "
        f"(receiver {cost[1]['receivers']:.1f}, PostgreSQL {cost[1]['postgres']:.1f}); {args.receivers} receivers "
        f"{cost[args.receivers]['total']:.1f} µs (receivers {cost[args.receivers]['receivers']:.1f}, PostgreSQL "
        f"{cost[args.receivers]['postgres']:.1f})"
    )
    if "split" in cost:
        log(
            f"  CPU per committed span, 1 receiver fed split requests: {cost['split']['total']:.1f} µs (receiver "
            f"{cost['split']['receivers']:.1f}, PostgreSQL {cost['split']['postgres']:.1f})"
        )
    ceiling = {n: ncpu * 1e6 / c["total"] for n, c in cost.items()}
    log(
        f"  CPU ceiling of this host ({ncpu} cores / CPU per span): 1 receiver {fmt_rate(ceiling[1])} spans/s, "
        f"{args.receivers} receivers {fmt_rate(ceiling[args.receivers])} spans/s "
        f"({ceiling[args.receivers] / ceiling[1]:.3f})"
    )
    noisy = [
        f"r{i + 1}:{n} {rep[n]['cpu']['other_processes_cores']:.2f}c"
        for i, rep in enumerate(reps)
        for n in rep
        if rep[n]["cpu"]["other_processes_cores"] > 0.25
    ]
    if noisy:
        log(
            f"  warning: processes outside the bench used > 0.25 core in {len(noisy)} windows (rates there are "
            "depressed; CPU per span is not): " + ", ".join(noisy)
        )
    behind = [f"r{i + 1}:{n}" for i, rep in enumerate(reps) for n in rep if _fold_behind(rep[n])]
    if behind:
        log(
            f"  warning: the fold fell behind in {len(behind)} windows ({', '.join(behind)}): rollup deltas piled up, "
            "so those rates deferred part of their PostgreSQL work and overstate what is sustained"
        )
    exact = all(r["exact"] for rep in reps for r in rep.values())
    log(f"  ledger exact after every configuration (rows = acknowledged spans): {'yes' if exact else 'NO'}")
    results["summary"] = {
        "one": one,
        "many": many,
        "split_control": split,
        "ratio": ratio,
        "met": met,
        "exact": exact,
        "cpu_us_per_span": cost,
        "cpu_ceiling": ceiling,
        "noisy_windows": noisy,
        "fold_behind_windows": behind,
    }


# --profile-statements' own backend: shown, but left out of the CPU per span (the figures stay comparable)
_SAMPLER = "bench activity sampler"


def _cpu_per_span(res: dict) -> dict[str, float]:
    cores, rate = res["cpu"]["cores"], max(res["value"], 1e-9)
    receivers = sum(v for k, v in cores.items() if k.startswith("receiver "))
    return {
        "total": 1e6 * sum(v for k, v in cores.items() if not k.startswith(_SAMPLER)) / rate,
        "receivers": 1e6 * receivers / rate,
        "postgres": 1e6 * res["cpu"]["postgres_cores"] / rate,
    }


if __name__ == "__main__":
    raise SystemExit(main())
