#!/usr/bin/env python
"""spanmeter ingest benchmark: protocol ceiling, storage ceiling, and `spanmeter serve` between them.

    .venv/bin/python bench/ingest_bench.py                      # full run: 10M-row ledgers, 1 repeat
    .venv/bin/python bench/ingest_bench.py --repeat 3           # medians of 3
    .venv/bin/python bench/ingest_bench.py --prefill-rows 200000 --seconds 5   # quick smoke run

Figures, all measured in one run against ledgers that already hold --prefill-rows rows:

1. a do-nothing Python OTLP/gRPC receiver (decode only): spans/s, the protocol ceiling;
2. the bare ledger write path: the same rows written straight into spanmeter's usage_events (its indexes, no
   rollup upkeep: the delta trigger disabled) by several methods; the best one is the storage ceiling;
2r. (2) with the rollup upkeep the product needs: LedgerWriter with the delta trigger on and the fold
   running beside it once a second, as ``spanmeter serve`` does (fold lag sampled every second);
3. `spanmeter serve`, all spans billable: committed spans/s, pipeline lag p50/p99;
3u. (diagnostic, only when asked: ``--phases …,3u``) (3) with the delta trigger disabled: what serve would
   commit if rollup upkeep cost nothing, the ceiling any rollup design could reach on this machine;
2n, 3n, 2k, 3k. (diagnostic, only when asked: ``--phases …,2n,2k,3k,3n``) (2) with LedgerWriter and (3) with
   the writer's statement from before the key registry (2n, 3n: no key registered; 3n runs its own serve);
   and each with the registry's primary key dropped (2k, 3k: keys still registered, unchecked): what the
   registry (migration 0018) and its random B-tree insert per row cost, side by side;
4. `spanmeter serve`, 90% non-billable spans: spans/s received;
5. (2) on the textbook schema (bigserial id, text idempotency key + unique index, jsonb metadata), one
   INSERT … ON CONFLICT per row in executemany: rows/s.

Targets (issue 1/7): (3) >= 0.8 x (2) with lag p99 < 1 s and fold lag p99 < 10 s; (4) >= 0.7 x (1);
(2r) >= 1.5 x (5b), the textbook schema written with the same COPY method. See bench/README.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _ledger  # noqa: E402
import _loadgen  # noqa: E402
import _monitor  # noqa: E402

PY = sys.executable
BENCH_LOCK_ID = 0x62656E6368696E67  # "benching": one bench run per server
WRITE_METHODS = ("ledgerwriter", "copy_binary", "unnest", "executemany")
FOLD_INTERVAL_SECONDS = 1.0  # as spanmeter serve's default SPANMETER_ROLLUP_FOLD_INTERVAL_SECONDS


def log(msg: str = "") -> None:
    print(msg, flush=True)


def sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def fmt_rate(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"


# -- Postgres -----------------------------------------------------------------------------------------
class Postgres:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.embedded = None
        self.started_here = False
        self.postmaster_pid: int | None = None
        self.settings: dict[str, str] = {}

    def start(self) -> None:
        args = self.args
        if args.database_url:
            from spanmeter.billing.ledger.database import normalize_database_url

            self.admin = normalize_database_url(args.database_url)
            self._lock_conn = _ledger.connect(self.admin, autocommit=True)
            if not self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (BENCH_LOCK_ID,)).fetchone()[0]:
                raise SystemExit("ingest_bench: another bench run holds the lock on this server; wait for it")
        else:
            from spanmeter.billing.ledger.embedded import EmbeddedPostgres

            t = time.monotonic()
            self.embedded = EmbeddedPostgres(args.data_dir)
            self.started_here = not self.embedded.is_running()
            uri = self.embedded.start()
            self.admin = _ledger.db_conninfo(uri, "postgres")
            if self._configure():
                if self.started_here:
                    log("  restarting the embedded server to apply settings")
                    self._restart()
                else:
                    log(
                        "  warning: shared_buffers/max_wal_size need a restart, but this run did not start the "
                        "server; measuring with the settings it has"
                    )
            log(f"  embedded PostgreSQL in {self.embedded.pgdata} up in {time.monotonic() - t:.1f} s")
        self.ledger = _ledger.db_conninfo(self.admin, _ledger.LEDGER_DB)
        self.textbook = _ledger.db_conninfo(self.admin, _ledger.TEXTBOOK_DB)
        with _ledger.connect(self.admin, autocommit=True) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            self.version = conn.execute("SHOW server_version").fetchone()[0]
            for name in (
                "shared_buffers",
                "max_wal_size",
                "synchronous_commit",
                "wal_level",
                "checkpoint_timeout",
                "full_page_writes",
                "fsync",
            ):
                self.settings[name] = conn.execute(f"SHOW {name}").fetchone()[0]
            try:
                import psutil

                self.postmaster_pid = psutil.Process(backend).ppid()
            except Exception:
                self.postmaster_pid = None  # a remote server: no Postgres CPU accounting

    def _configure(self) -> bool:
        wanted = {"shared_buffers": self.args.pg_shared_buffers, "max_wal_size": self.args.pg_max_wal_size}
        return _ledger.apply_server_settings(self.admin, wanted)

    def _restart(self) -> None:
        import pgserver

        self.embedded.stop()
        pgserver.PostgresServer._instances.pop(self.embedded.pgdata, None)
        uri = self.embedded.start()
        self.admin = _ledger.db_conninfo(uri, "postgres")

    def stop(self) -> None:
        """Stop the embedded server only if this run started it (someone else may be using it)."""
        if self.embedded is not None and self.started_here:
            self.embedded.stop()


# -- child processes ----------------------------------------------------------------------------------
class Server:
    """A receiver subprocess (no-op or spanmeter serve) with the stage profiler on stdin."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.log_file = open(log_path, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(log_path.parent),
        )
        self.otlp = self.metrics = None
        deadline = time.time() + 90
        while time.time() < deadline:
            text = log_path.read_text()
            for line in text.splitlines():
                if line.startswith("listening otlp="):
                    fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
                    self.otlp = line.split()[1].split("=", 1)[1]
                    self.metrics = fields.get("metrics") if fields.get("metrics") not in (None, "-") else None
                    self.listening_line = line
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not print 'listening otlp=' within 90 s:\n{log_path.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The receiver and its receiver processes (``serve --processes N``)."""
        import psutil

        try:
            return [self.proc.pid] + [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return [self.proc.pid]

    def command(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def profile_begin(self) -> None:
        self.command("start")

    def profile_end(self, path: Path) -> dict:
        path.unlink(missing_ok=True)
        self.command(f"stop {path}")
        deadline = time.time() + 10
        while time.time() < deadline:
            if path.exists():
                return json.loads(path.read_text())
            time.sleep(0.02)
        return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def run_workers(entry, confs: list[dict], warmup: float, seconds: float, on_t0, on_t1):
    """Spawn one process per conf, start them together, call hooks at t0/t1, return their results."""
    ctx = mp.get_context("spawn")
    pipes, procs, pids = [], [], []
    for conf in confs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=entry, args=(conf, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a worker process did not get ready within 120 s")
            kind, value = pipe.recv()
            if kind == "error":
                raise RuntimeError(f"worker failed to start: {value}")
            pids.append(value)
        t_start = time.time() + 0.3
        t0, t1 = t_start + warmup, t_start + warmup + seconds
        for pipe in pipes:
            pipe.send((t_start, t0, t1))
        sleep_until(t0)
        s0 = on_t0(pids)
        sleep_until(t1)
        s1 = on_t1(pids)
        results = []
        for pipe in pipes:
            if not pipe.poll(120):
                raise RuntimeError("a worker process did not report within 120 s")
            kind, value = pipe.recv()
            results.append(value)
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return results, (t_start, t0, t1), s0, s1


class FoldSampler:
    """Beside a write phase: every second, fold pending deltas (``fold=True``, as serve does, for (2r)) or
    read serve's fold-lag gauge (``metrics_url``, for (3)/(4)); keeps the lag and pending-delta samples."""

    def __init__(self, conninfo: str, fold: bool, metrics_url: str | None = None) -> None:
        self.conninfo, self.fold, self.metrics_url = conninfo, fold, metrics_url
        self.lag: list[float] = []
        self.pending: list[int] = []
        self.folded = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FoldSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        from spanmeter.billing.ledger import rollup_store

        try:
            with _ledger.connect(self.conninfo, autocommit=False) as conn:
                while not self._stop.wait(FOLD_INTERVAL_SECONDS):
                    if self.fold:
                        while True:
                            r = rollup_store.fold(conn)
                            self.folded += r.deltas
                            if r.locked_out or r.deltas < 50_000:
                                break
                    if self.metrics_url:
                        m = _monitor.scrape(self.metrics_url)
                        self.lag.append(m.get("spanmeter_rollup_fold_lag_seconds", float("nan")))
                        self.pending.append(int(m.get("spanmeter_rollup_pending_deltas", -1)))
                    else:
                        p = rollup_store.pending_deltas(conn)
                        conn.commit()
                        self.lag.append(p.oldest_age_seconds)
                        self.pending.append(p.deltas)
        except Exception as exc:  # reported with the phase, never hides the figures
            self.errors.append(repr(exc))

    def summary(self) -> dict:
        lag = sorted(x for x in self.lag if not math.isnan(x))
        return {
            "samples": len(lag),
            "lag_p50_s": _loadgen.percentile(lag, 0.5) if lag else float("nan"),
            "lag_p99_s": _loadgen.percentile(lag, 0.99) if lag else float("nan"),
            "lag_max_s": max(lag) if lag else float("nan"),
            "pending_first": self.pending[0] if self.pending else None,
            "pending_last": self.pending[-1] if self.pending else None,
            "pending_max": max(self.pending) if self.pending else None,
            "folded": self.folded,
            "errors": self.errors,
        }


def fold_line(f: dict) -> str:
    return (
        f"      rollup fold lag (sampled each 1 s, n={f['samples']}): p50 {f['lag_p50_s']:.2f} s p99 "
        f"{f['lag_p99_s']:.2f} s max {f['lag_max_s']:.2f} s; pending deltas first {f['pending_first']} last "
        f"{f['pending_last']} max {f['pending_max']}" + (f"; errors {f['errors'][:1]}" if f["errors"] else "")
    )


# -- phases -------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, pg: Postgres) -> None:
        self.args = args
        self.pg = pg
        self.nonce = os.urandom(6)
        self.phase_no = 0
        self.work = Path(args.data_dir) / "run"
        self.work.mkdir(parents=True, exist_ok=True)

    # shared window accounting
    def _snap(self, components: dict[str, list[int]], dbname: str | None) -> dict:
        labels = _monitor.pg_labels(self.pg.admin) if self.pg.postmaster_pid else None
        snap = {"t": time.time(), "cpu": _monitor.cpu_snapshot(components, self.pg.postmaster_pid, labels)}
        if dbname:
            snap["pg"] = _monitor.pg_snapshot(self.pg.admin, dbname)
        return snap

    def _window(self, s0: dict, s1: dict) -> dict:
        wall = s1["t"] - s0["t"]
        out = {"wall": wall, "cpu": _monitor.cpu_delta(s0["cpu"], s1["cpu"], wall)}
        if "pg" in s0:
            out["pg"] = _monitor.pg_delta(s0["pg"], s1["pg"])
        return out

    def load(self, server: Server, billable_every: int, dbname: str | None, extra0=None, extra1=None) -> dict:
        """Closed-loop OTLP load from --clients processes against ``server``; returns the window's figures."""
        args = self.args
        self.phase_no += 1
        confs = [
            {
                "client": c,
                "phase": self.phase_no,
                "nonce": self.nonce,
                "target": server.otlp,
                "spans": args.spans_per_request,
                "billable_every": billable_every,
                "inflight": args.inflight,
                "channels": args.channels_per_client,
            }
            for c in range(args.clients)
        ]
        profile_path = self.work / f"profile-{server.name}-{self.phase_no}.json"

        def on_t0(pids):
            snap = self._snap({"receiver": server.pids(), "load generator": pids}, dbname)
            if extra0:
                snap.update(extra0())
            server.profile_begin()
            return snap

        def on_t1(pids):
            profile = server.profile_end(profile_path)
            snap = self._snap({"receiver": server.pids(), "load generator": pids}, dbname)
            snap["profile"] = profile
            if extra1:
                snap.update(extra1())
            return snap

        results, times, s0, s1 = run_workers(_loadgen.client_main, confs, args.warmup, args.seconds, on_t0, on_t1)
        window = self._window(s0, s1)
        codes: dict[str, int] = {}
        latencies: list[float] = []
        for r in results:
            for k, v in r.codes.items():
                codes[k] = codes.get(k, 0) + v
            latencies.extend(r.latencies)
        seconds = times[2] - times[1]
        return {
            "times": times,
            "spans_ok_per_s": sum(r.ok_spans for r in results) / seconds,
            "billable_ok_per_s": sum(r.ok_billable for r in results) / seconds,
            "requests_ok_per_s": sum(r.ok_requests for r in results) / seconds,
            "codes": codes,
            "request_latency_p50": _loadgen.percentile(latencies, 0.5),
            "request_latency_p99": _loadgen.percentile(latencies, 0.99),
            "bytes_per_span": statistics.mean(r.bytes_per_span for r in results),
            "window": window,
            "profile": s1.get("profile", {}),
            "s0": {k: v for k, v in s0.items() if k not in ("cpu",)},
            "s1": {k: v for k, v in s1.items() if k not in ("cpu", "profile")},
        }

    # (1)
    def phase_noop(self) -> dict:
        args = self.args
        server = Server(
            "noop",
            [PY, str(BENCH_DIR / "_noop_receiver.py"), "--port", "0", "--workers", str(args.grpc_workers)]
            + (["--no-instrument"] if args.no_instrument else []),
            dict(os.environ),
            self.work / "noop-receiver.log",
        )
        try:
            res = self.load(server, billable_every=10, dbname=None)
            res["listening"] = server.listening_line
        finally:
            server.stop()
        res["value"] = res["spans_ok_per_s"]
        return res

    # (2) and (5)
    def phase_write(self, method: str, conninfo: str, dbname: str) -> dict:
        args = self.args
        self.phase_no += 1
        _ledger.checkpoint(conninfo)
        confs = [
            {
                "method": method,
                "conninfo": conninfo,
                "writer": w,
                "batch": args.write_batch,
                "seed": hash((self.nonce, self.phase_no, w)) & 0xFFFFFFFF,
            }
            for w in range(args.writers)
        ]
        results, times, s0, s1 = run_workers(
            _ledger.writer_main,
            confs,
            args.warmup,
            args.seconds,
            lambda pids: self._snap({"bench writers (client)": pids}, dbname),
            lambda pids: self._snap({"bench writers (client)": pids}, dbname),
        )
        errors = [r["error"] for r in results if r["error"]]
        if errors:
            raise RuntimeError(f"{method}: {errors[0]}")
        seconds = times[2] - times[1]
        rows = sum(r["rows"] for r in results)
        lat = [x for r in results for x in r["latencies"]]
        return {
            "method": method,
            "label": _ledger.METHODS[method].label,
            "value": rows / seconds,
            "inserted_per_s": sum(r["inserted"] for r in results) / seconds,
            "batch_latency_p50": _loadgen.percentile(lat, 0.5),
            "batch_latency_p99": _loadgen.percentile(lat, 0.99),
            "window": self._window(s0, s1),
            "times": times,
        }

    # (3) and (4)
    def _writer_url(self) -> str:
        """serve writes as spanmeter_writer, as in production (the ledger was migrated as the owner); a server
        whose writer cannot log in (a password-protected --database-url) falls back to the owner."""
        import psycopg

        from spanmeter.billing.ledger.database import Database
        from spanmeter.billing.ledger.roles import WRITER_ROLE

        writer = Database(self.pg.ledger, embedded=False, description="bench").as_user(WRITER_ROLE).conninfo
        try:
            psycopg.connect(writer, connect_timeout=5).close()
        except psycopg.OperationalError:
            return ""
        return writer

    def start_serve(self, preload: tuple[Path, ...] = ()) -> Server:
        args = self.args
        env = dict(os.environ)
        database_url = self._writer_url()
        if not database_url:
            database_url = self.pg.ledger
            env["SPANMETER_ALLOW_OWNER"] = "true"
        env.update({"SPANMETER_DATA_DIR": str(self.work / "serve-data"), "SPANMETER_LOG_LEVEL": "WARNING"})
        for item in args.serve_env:
            key, _, value = item.partition("=")
            env[key] = value
        if args.serve_preload or preload:
            env["BENCH_SERVE_PRELOAD"] = ":".join(str(Path(p).resolve()) for p in (*args.serve_preload, *preload))
        cmd = (
            [PY, str(BENCH_DIR / "_serve_profiled.py")]
            + (["--no-instrument"] if args.no_instrument else [])
            + [
                "--",
                "serve",
                "--otlp-endpoint",
                "127.0.0.1:0",
                "--metrics-port",
                "0",
                "--database-url",
                self._writer_url(),
            ]
            + ["--processes", str(args.serve_processes)]
        )
        return Server("serve", cmd, env, self.work / "serve.log")

    def _mine(self) -> str:
        """LIKE pattern of this run's trace ids (run nonce + client + phase prefix): other writers don't count."""
        return self.nonce.hex() + "%"

    def _tail_count(self, since: float) -> int:
        with _ledger.connect(self.pg.ledger, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM usage_events WHERE occurred_at >= to_timestamp(%s) AND trace_id LIKE %s",
                (since, self._mine()),
            ).fetchone()[0]

    def phase_serve(self, server: Server, billable_every: int) -> dict:
        _ledger.checkpoint(self.pg.ledger)
        url = f"http://{server.metrics}/metrics"
        since = time.time()

        def extra():
            return {"metrics": _monitor.scrape(url), "ledger_rows": self._tail_count(since - 1.0)}

        with FoldSampler(self.pg.ledger, fold=False, metrics_url=url) as sampler:
            res = self.load(server, billable_every, _ledger.LEDGER_DB, extra, extra)
        res["fold"] = sampler.summary()
        _t_start, t0, t1 = res["times"]
        seconds = t1 - t0
        m0, m1 = res["s0"]["metrics"], res["s1"]["metrics"]
        res["committed_per_s"] = (res["s1"]["ledger_rows"] - res["s0"]["ledger_rows"]) / (
            res["s1"]["t"] - res["s0"]["t"]
        )
        res["received_per_s_metric"] = (
            m1["spanmeter_spans_received_total"] - m0["spanmeter_spans_received_total"]
        ) / seconds
        res["export_requests"] = {
            k.split('"')[1]: v for k, v in _monitor.metric_delta(m0, m1, "spanmeter_export_requests_total").items() if v
        }
        res["export_requests_total"] = {
            k.split('"')[1]: v for k, v in m1.items() if k.startswith("spanmeter_export_requests_total") and v
        }
        res["write_errors"] = {
            k: v for k, v in _monitor.metric_delta(m0, m1, "spanmeter_ledger_write_errors_total").items() if v
        }
        res["lag_metrics"] = _monitor.histogram_quantiles(m0, m1, "spanmeter_pipeline_lag_seconds")
        wd = _monitor.histogram_quantiles(m0, m1, "spanmeter_ledger_write_duration_seconds")
        res["group_commit"] = {"commits_per_s": wd["count"] / seconds, "p50_s": wd[0.5], "p99_s": wd[0.99]}
        with _ledger.connect(self.pg.ledger, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*), percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
                "(ORDER BY extract(epoch FROM received_at - occurred_at)) FROM usage_events "
                "WHERE occurred_at >= to_timestamp(%s) AND received_at >= to_timestamp(%s) "
                "AND received_at < to_timestamp(%s) AND trace_id LIKE %s",
                (since - 1.0, t0, t1, self._mine()),
            ).fetchone()
        res["lag_ledger"] = {"rows": row[0], 0.5: row[1][0] if row[1] else None, 0.99: row[1][1] if row[1] else None}
        res["value"] = res["committed_per_s"] if billable_every == 1 else res["spans_ok_per_s"]
        return res


# -- reporting ----------------------------------------------------------------------------------------
def cpu_lines(window: dict, rate: float, unit: str) -> list[str]:
    cpu = window["cpu"]
    out = [
        f"      machine: {cpu['machine_busy_cores']:.2f}/{cpu['ncpu']} cores busy, "
        f"iowait {cpu['machine_iowait_cores']:.2f}, processes outside the bench {cpu['other_processes_cores']:.2f}; Postgres total {cpu['postgres_cores']:.2f} cores "
        f"= {cpu['postgres_cores'] * 1e6 / max(rate, 1e-9):.1f} µs/{unit}"
    ]
    parts = [
        f"{name} {cores:.2f}c ({cores * 1e6 / max(rate, 1e-9):.1f} µs/{unit})"
        for name, cores in cpu["cores"].items()
        if cores >= 0.02
    ]
    for i in range(0, len(parts), 3):
        out.append("      cpu: " + "; ".join(parts[i : i + 3]))
    pg = window.get("pg")
    if pg and rate > 0:
        n = rate * window["wall"]
        out.append(
            f"      postgres: WAL {pg['wal_bytes'] / n:,.0f} B/{unit}, {pg['commits'] / window['wall']:,.0f} commits/s, "
            f"{pg['blks_read'] / n:.2f} blocks read from OS/{unit}, checkpoints in window: {pg['checkpoints']}"
        )
    return out


def _writers(args: argparse.Namespace) -> int:
    for item in args.serve_env:
        if item.startswith("SPANMETER_LEDGER_WRITERS="):
            return int(item.split("=", 1)[1])
    return int(os.environ.get("SPANMETER_LEDGER_WRITERS", "2"))


def analyse_profile(profile: dict, rate: float, writers: int) -> dict:
    """Per-unit CPU of each stage from the receiver's stage timers and thread clocks."""
    if not profile:
        return {}
    wall = profile["wall_s"]
    units = max(1e-9, rate * wall)
    threads = profile["thread_cpu_s"]
    timers = profile["timers"]

    def t(name, key="cpu_s"):
        return timers.get(name, {}).get(key, 0.0)

    py = {k: v for k, v in threads.items() if not k.startswith("native") and k != "bench probe"}
    out = {
        "process_cores": profile["process_cpu_s"] / wall,
        "python_cores": sum(py.values()) / wall,
        "thread_cores": {k: v / wall for k, v in threads.items() if v / wall >= 0.005},
        "gil_probe_ms": profile.get("gil_probe_ms", {}),
        "us_per_unit": {},
    }
    us = out["us_per_unit"]
    handler_threads = threads.get("grpc handler threads", 0.0)
    if "handler: decode (FromString)" in timers:  # no-op receiver
        us["decode (FromString)"] = 1e6 * t("handler: decode (FromString)") / units
        us["grpc python, per call (handler threads)"] = (
            1e6 * (handler_threads - t("handler: decode (FromString)")) / units
        )
    else:
        export = t("handler: _export (whole handler)")
        us["decode"] = 1e6 * t("handler: decode_request") / units
        us["meter"] = 1e6 * t("handler: meter_request") / units
        native = "handler: meter_native (Rust: decode + meter + COPY text)"
        adapter = "handler: to_metering_result (native result to Python)"
        us["native decode + meter (Rust)"] = 1e6 * t(native) / units
        us["native result to Python"] = 1e6 * t(adapter) / units
        us["handler rest (submit, wait, metrics)"] = (
            1e6 * (export - t("handler: decode_request") - t("handler: meter_request") - t(native) - t(adapter)) / units
        )
        us["grpc python, per call (handler threads)"] = 1e6 * (handler_threads - export) / units
        w = "writer: _write (one group commit)"
        write_cpu = t(w)
        parts = {
            k: t(k)
            for k in (
                "writer: write_usage (COPY + INSERT)",
                "writer: COMMIT",
                "writer: _record (metrics, per row)",
                "writer: write_rejected_spans",
            )
        }
        us["writer: join COPY text, encode Python rows, bookkeeping"] = 1e6 * (write_cpu - sum(parts.values())) / units
        us["writer: COPY + INSERT (client side)"] = 1e6 * parts["writer: write_usage (COPY + INSERT)"] / units
        us["writer: _record (metrics)"] = 1e6 * parts["writer: _record (metrics, per row)"] / units
        calls = timers.get(w, {}).get("calls", 0)
        if calls:
            wu = timers.get("writer: write_usage (COPY + INSERT)", {})
            cm = timers.get("writer: COMMIT", {})
            out["group_commit"] = {
                "per_s": calls / wall,
                "rows_per_commit": timers[w]["items"] / calls,
                "writer_busy": t(w, "wall_s") / (wall * max(1, writers)),
                "ms_wall": 1e3 * t(w, "wall_s") / calls,
                "ms_cpu": 1e3 * write_cpu / calls,
                "ms_write_usage_wall": 1e3 * wu.get("wall_s", 0.0) / max(1, wu.get("calls", 1)),
                "ms_write_usage_cpu": 1e3 * wu.get("cpu_s", 0.0) / max(1, wu.get("calls", 1)),
                "ms_commit_wall": 1e3 * cm.get("wall_s", 0.0) / max(1, cm.get("calls", 1)),
            }
        wait = timers.get("handler: exporter.wait (for COMMIT)", {})
        if wait.get("calls"):
            out["handler_wait_ms"] = 1e3 * wait["wall_s"] / wait["calls"]
    return out


def profile_lines(a: dict, unit: str) -> list[str]:
    if not a:
        return ["      (no receiver profile)"]
    gil = a.get("gil_probe_ms", {})
    lines = [
        f"      receiver: process {a['process_cores']:.2f} cores, Python threads {a['python_cores']:.2f} cores "
        f"(GIL demand); GIL-probe wake-up delay p50 {gil.get('p50') or 0:.1f} ms p99 {gil.get('p99') or 0:.1f} ms",
        "      receiver threads: " + "; ".join(f"{k} {v:.2f}c" for k, v in a["thread_cores"].items()),
        "      receiver CPU µs/" + unit + ": " + "; ".join(f"{k} {v:.1f}" for k, v in a["us_per_unit"].items()),
    ]
    gc = a.get("group_commit")
    if gc:
        lines.append(
            f"      group commits: {gc['per_s']:.1f}/s x {gc['rows_per_commit']:.0f} rows; writers busy "
            f"{gc['writer_busy']:.0%}; per commit {gc['ms_wall']:.0f} ms wall / {gc['ms_cpu']:.0f} ms CPU "
            f"(write_usage {gc['ms_write_usage_wall']:.0f} ms wall, {gc['ms_write_usage_cpu']:.0f} ms CPU; "
            f"COMMIT {gc['ms_commit_wall']:.1f} ms); handler waits {a.get('handler_wait_ms', 0):.0f} ms for its commit"
        )
    return lines


def report_write(r: dict, kind: str) -> None:
    """Print one bare-write figure ((2) or (5)) and record what bounds it."""
    log(
        f"    {fmt_rate(r['value'])} rows/s; transaction p50 {r['batch_latency_p50'] * 1e3:.0f} ms "
        f"p99 {r['batch_latency_p99'] * 1e3:.0f} ms"
    )
    for line in cpu_lines(r["window"], r["value"], "row"):
        log(line)
    r["bound_by"] = bound_by(kind, r)


def bound_by(kind: str, res: dict) -> str:
    """A one-line verdict from the window's CPU split and the receiver's stage profile (see README)."""
    cpu = res["window"]["cpu"]
    busy, ncpu = cpu["machine_busy_cores"], cpu["ncpu"]
    saturated = busy >= 0.9 * ncpu
    cores = cpu["cores"]
    sat = f"machine {busy:.1f}/{ncpu} cores busy" + (" (saturated)" if saturated else "")
    if kind in ("write", "textbook"):
        pg = cpu["postgres_cores"]
        client = cores.get("bench writers (client)", 0.0)
        pgw = res["window"].get("pg", {})
        n = max(1.0, res["value"] * res["window"]["wall"])
        if cpu["machine_iowait_cores"] > 0.3 * ncpu:
            return f"I/O wait ({cpu['machine_iowait_cores']:.2f} cores iowait); {sat}"
        return (
            f"Postgres CPU {pg:.2f}c = {pg * 1e6 / max(res['value'], 1):.0f} µs/row (WAL {pgw.get('wal_bytes', 0) / n:,.0f} "
            f"B/row); client {client:.2f}c; {sat}"
        )
    a = res.get("analysis") or {}
    gen = cores.get("load generator", 0.0)
    pg = cpu["postgres_cores"]
    us = sorted(a.get("us_per_unit", {}).items(), key=lambda kv: -kv[1])[:3]
    top = ", ".join(f"{k} {v:.1f} µs" for k, v in us)
    parts = []
    gc = a.get("group_commit")
    if kind == "serve_billable" and gc and gc["writer_busy"] >= 0.8:
        parts.append(
            f"ledger writers {gc['writer_busy']:.0%} busy ({gc['ms_wall']:.0f} ms/commit wall, "
            f"{gc['ms_cpu']:.0f} ms of it Python CPU under the GIL)"
        )
    if a.get("python_cores", 0) >= 0.8:
        gil = a.get("gil_probe_ms", {})
        parts.append(
            f"receiver GIL ({a['python_cores']:.2f} cores of Python threads, GIL wait p99 "
            f"{gil.get('p99') or 0:.0f} ms; top: {top})"
        )
    elif a and cores.get("receiver", 0.0) < 1.5 * a.get("process_cores", 0.0) + 0.05:
        parts.append(f"receiver {a.get('process_cores', 0):.2f}c (top: {top})")
    else:  # --serve-processes > 1: the stage timers see the supervisor only; the CPU window sees them all
        parts.append(f"receiver processes {cores.get('receiver', 0.0):.2f}c (no stage profile across processes)")
    if kind == "serve_mixed" and a.get("handler_wait_ms"):
        parts.append(f"every request waits {a['handler_wait_ms']:.0f} ms for a commit (closed loop)")
    parts.append(f"Postgres {pg:.2f}c; load gen {gen:.2f}c; {sat}")
    return "; ".join(parts)


def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


# -- main ---------------------------------------------------------------------------------------------
def code_under_test() -> str:
    """The commit and the files changed in the working tree (the product evolves while the bench runs)."""
    repo = BENCH_DIR.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        head = head if len(head) <= 60 else head[:59] + "…"
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prefill-rows", type=int, default=10_000_000, help="rows in each ledger before measuring")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window per phase")
    p.add_argument("--warmup", type=float, default=4.0, help="load before each window, not counted")
    p.add_argument("--repeat", type=int, default=1, help="run every phase N times; medians are reported")
    p.add_argument("--clients", type=int, default=2, help="load-generator processes")
    p.add_argument("--spans-per-request", type=int, default=512)
    p.add_argument("--inflight", type=int, default=4, help="outstanding Export requests per client process")
    p.add_argument(
        "--channels-per-client",
        type=int,
        default=1,
        help="gRPC connections per client process (requests round-robin); more than 1 lets --serve-processes spread",
    )
    p.add_argument(
        "--serve-processes",
        type=int,
        default=1,
        help="`spanmeter serve --processes N` for (3)/(4) (receiver processes on one port; stage timers: main only)",
    )
    p.add_argument(
        "--writers",
        type=int,
        default=2,
        help="connections (processes) for the bare write paths; spanmeter's default is 2 writers",
    )
    p.add_argument(
        "--write-batch",
        type=int,
        default=0,
        help="rows per transaction for (2)/(5); default clients*inflight*spans/writers",
    )
    p.add_argument("--methods", default=",".join(WRITE_METHODS), help=f"bare write methods for (2): {WRITE_METHODS}")
    p.add_argument("--phases", default="1,2,2r,5,3,4", help="which figures to measure, in this order")
    p.add_argument(
        "--no-textbook-copy",
        action="store_true",
        help="skip (5b), the textbook schema written with COPY staging (separates schema from method)",
    )
    p.add_argument("--grpc-workers", type=int, default=16, help="no-op receiver thread pool (serve's default)")
    p.add_argument("--data-dir", default=str(BENCH_DIR / ".data"), help="dedicated embedded PostgreSQL and logs")
    p.add_argument("--database-url", help="use this server instead (bench databases are created on it)")
    p.add_argument("--pg-shared-buffers", default="4GB", help="embedded server only ('' keeps the current value)")
    p.add_argument("--pg-max-wal-size", default="4GB", help="embedded server only ('' keeps the current value)")
    p.add_argument("--reset", action="store_true", help="drop and rebuild the bench databases")
    p.add_argument("--no-trim", action="store_true", help="keep rows earlier phases added (tables grow)")
    p.add_argument("--keep-db", action="store_true", help="leave the embedded server running at the end")
    p.add_argument(
        "--no-instrument",
        action="store_true",
        help="run the receivers without the bench's stage timers (see _profiler.py)",
    )
    p.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for spanmeter serve, e.g. SPANMETER_LEDGER_WRITERS=3",
    )
    p.add_argument(
        "--serve-preload",
        action="append",
        default=[],
        metavar="FILE.py",
        help="run FILE.py inside the serve process before it starts (try product changes on a "
        "private copy by monkeypatching; the repo is not touched)",
    )
    p.add_argument("--results", default=str(BENCH_DIR / "results"), help="where the JSON results go")
    args = p.parse_args(argv)
    if not args.write_batch:
        args.write_batch = max(1, args.clients * args.inflight * args.spans_per_request // max(1, args.writers))
    args.data_dir = str(Path(args.data_dir).resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop children, server
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from google.protobuf.internal import api_implementation

    log(f"spanmeter ingest bench  {datetime.now(UTC).isoformat(timespec='seconds')}")
    log(
        f"  machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; protobuf backend "
        f"{api_implementation.Type()}"
    )
    log(
        f"  load: {args.clients} client processes x {args.inflight} in flight x {args.spans_per_request} spans/request;"
        f" windows {args.seconds:g} s after {args.warmup:g} s warm-up; repeat {args.repeat}"
    )
    log(f"  bare writes: {args.writers} connections, {args.write_batch} rows/transaction")
    log(
        f"  spanmeter serve --processes {args.serve_processes}; {args.channels_per_client} gRPC connection(s) per "
        "client process"
    )
    code = code_under_test()
    log(f"  code under test: {code}")
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    lock = open(Path(args.data_dir) / "bench.lock", "w")  # noqa: SIM115 (held for the whole run)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(
            f"ingest_bench: another bench run is using {args.data_dir} (bench.lock is held); wait for it or "
            "pass a different --data-dir"
        )
        return 2
    pg = Postgres(args)
    pg.start()
    log(f"  PostgreSQL {pg.version}: " + ", ".join(f"{k}={v}" for k, v in pg.settings.items()))
    results: dict = {"args": vars(args), "started": time.time(), "code": code, "repeats": []}
    try:
        if args.reset:
            for db in (_ledger.LEDGER_DB, _ledger.TEXTBOOK_DB):
                _ledger.drop_database(pg.admin, db)
        for db in (_ledger.LEDGER_DB, _ledger.TEXTBOOK_DB):
            _ledger.ensure_database(pg.admin, db)
        from spanmeter.billing.ledger import migrate
        from spanmeter.billing.ledger.database import resolve_database

        before, after = migrate.upgrade(resolve_database(pg.ledger, Path(args.data_dir)))
        log(f"  ledger schema: {before or 'empty'} -> {after}")
        log(f"prefill ({args.prefill_rows:,} rows per ledger)")
        t = time.monotonic()
        results["prefill"] = {
            "ledger": _ledger.prefill(pg.ledger, "ledger", args.prefill_rows, textbook=False, log=log),
            "textbook": _ledger.prefill(pg.textbook, "textbook", args.prefill_rows, textbook=True, log=log),
        }
        log(f"  prefill step took {time.monotonic() - t:.0f} s this run")
        for name, url in (("spanmeter", pg.ledger), ("textbook", pg.textbook)):
            st = _ledger.table_stats(url)
            log(
                f"  {name} usage_events: ~{st['rows_estimate']:,} rows, {st['total_bytes'] / 2**30:.2f} GiB; indexes "
                + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in st["indexes"].items())
            )

        bench = Bench(args, pg)
        prefill_end = results["prefill"]["ledger"]["t_end"]  # rows after it are the phases' (trimmed)
        for rep in range(args.repeat):
            log(f"\n=== repeat {rep + 1}/{args.repeat} ===")
            if not args.no_trim:
                _ledger.trim(pg.ledger, "ledger", textbook=False, log=log)
                _ledger.trim(pg.textbook, "textbook", textbook=True, log=log)
            rr: dict = {}
            for phase in phases:
                if phase == "1":
                    log("(1) no-op receiver (decode only), 90% non-billable requests")
                    r = bench.phase_noop()
                    rr["1"] = r
                    log(
                        f"    {fmt_rate(r['value'])} spans/s ({r['bytes_per_span']:.0f} B/span); request latency "
                        f"p50 {r['request_latency_p50'] * 1e3:.0f} ms p99 {r['request_latency_p99'] * 1e3:.0f} ms; codes {r['codes']}"
                    )
                    r["analysis"] = analyse_profile(r["profile"], r["value"], 0)
                    for line in cpu_lines(r["window"], r["value"], "span") + profile_lines(r["analysis"], "span"):
                        log(line)
                    r["bound_by"] = bound_by("noop", r)
                    log(f"    bound by: {r['bound_by']}")
                elif phase == "2":
                    rr["2"] = {}
                    _ledger.set_rollup_upkeep(pg.ledger, False)  # the bare table: indexes, no rollup upkeep
                    try:
                        for method in methods:
                            log(f"(2) bare ledger write, no rollup upkeep: {_ledger.METHODS[method].label}")
                            r = bench.phase_write(method, pg.ledger, _ledger.LEDGER_DB)
                            rr["2"][method] = r
                            report_write(r, "write")
                    finally:
                        _ledger.set_rollup_upkeep(pg.ledger, True)
                elif phase == "2n":
                    # diagnostic: LedgerWriter as before the key registry (its rows go unregistered)
                    log("(2n) bare ledger write, no rollup upkeep, no key registry: LedgerWriter before 0018")
                    _ledger.set_rollup_upkeep(pg.ledger, False)
                    try:
                        r = bench.phase_write("ledgerwriter_no_registry", pg.ledger, _ledger.LEDGER_DB)
                    finally:
                        _ledger.set_rollup_upkeep(pg.ledger, True)
                    rr["2n"] = r
                    report_write(r, "write")
                elif phase == "2k":
                    # diagnostic: (2) with LedgerWriter and no key-registry index; bench ledgers only
                    log("(2k) bare ledger write, no rollup upkeep, key registry unindexed: LedgerWriter")
                    _ledger.set_rollup_upkeep(pg.ledger, False)
                    _ledger.set_key_registry_index(pg.ledger, False, prefill_end)
                    try:
                        r = bench.phase_write("ledgerwriter", pg.ledger, _ledger.LEDGER_DB)
                    finally:
                        _ledger.set_key_registry_index(pg.ledger, True, prefill_end)
                        _ledger.set_rollup_upkeep(pg.ledger, True)
                    rr["2k"] = r
                    report_write(r, "write")
                elif phase == "2r":
                    log("(2r) ledger write with rollup upkeep: LedgerWriter + delta trigger, folded every 1 s")
                    _ledger.discard_rollup_deltas(pg.ledger)
                    with FoldSampler(pg.ledger, fold=True) as sampler:
                        r = bench.phase_write("ledgerwriter", pg.ledger, _ledger.LEDGER_DB)
                    r["fold"] = sampler.summary()
                    rr["2r"] = r
                    report_write(r, "write")
                    log(fold_line(r["fold"]))
                elif phase == "5":
                    rr["5"] = {}
                    variants = ["textbook_executemany"] + ([] if args.no_textbook_copy else ["textbook_copy"])
                    for method in variants:
                        tag = "(5)" if method == "textbook_executemany" else "(5b)"
                        log(f"{tag} {_ledger.METHODS[method].label}")
                        r = bench.phase_write(method, pg.textbook, _ledger.TEXTBOOK_DB)
                        rr["5"][method] = r
                        report_write(r, "textbook")
                elif phase in ("3", "3u", "3k", "3n", "4"):
                    if phase == "3n":  # its own serve, patched; the next phase starts the product's again
                        if "serve" in rr:
                            shared = rr.pop("serve")
                            rr["serve_export_requests_total"] = _monitor.scrape(f"http://{shared.metrics}/metrics")
                            shared.stop()
                        _ledger.discard_rollup_deltas(pg.ledger)
                        server = bench.start_serve(preload=(BENCH_DIR / "_no_key_registry.py",))
                        log(f"    spanmeter serve without the key registry: {server.listening_line}")
                    else:
                        if "serve" not in rr:
                            _ledger.set_rollup_upkeep(pg.ledger, True)  # the product as it runs
                            _ledger.discard_rollup_deltas(pg.ledger)
                            rr["serve"] = bench.start_serve()
                            log(f"    spanmeter serve: {rr['serve'].listening_line}")
                        server = rr["serve"]
                    if phase in ("3", "3u", "3k", "3n"):
                        if phase == "3":
                            log("(3) spanmeter serve, all spans billable")
                            r = bench.phase_serve(server, billable_every=1)
                        elif phase == "3n":
                            # diagnostic: (3) with LedgerWriter's statement from before the key registry
                            log("(3n) spanmeter serve, all spans billable, no key registry (statement before 0018)")
                            try:
                                r = bench.phase_serve(server, billable_every=1)
                            except BaseException:
                                server.stop()
                                raise
                        elif phase == "3k":
                            # diagnostic: (3) without the key registry's random B-tree insert per row
                            log("(3k) spanmeter serve, all spans billable, key registry unindexed")
                            _ledger.discard_rollup_deltas(pg.ledger)
                            _ledger.set_key_registry_index(pg.ledger, False, prefill_end)
                            try:
                                r = bench.phase_serve(server, billable_every=1)
                            finally:
                                _ledger.set_key_registry_index(pg.ledger, True, prefill_end)
                        else:
                            # diagnostic: what (3) would be if rollup upkeep cost nothing (the ceiling any
                            # rollup design could reach); rollups are wrong while it runs, so bench ledgers only
                            log("(3u) spanmeter serve, all spans billable, rollup upkeep off (delta trigger disabled)")
                            _ledger.set_rollup_upkeep(pg.ledger, False)
                            _ledger.discard_rollup_deltas(pg.ledger)  # (3)'s leftovers: no fold in this window
                            try:
                                r = bench.phase_serve(server, billable_every=1)
                            finally:
                                _ledger.set_rollup_upkeep(pg.ledger, True)
                        rr[phase] = r
                        lm, ll = r["lag_metrics"], r["lag_ledger"]
                        log(
                            f"    committed {fmt_rate(r['value'])} spans/s (acknowledged {fmt_rate(r['spans_ok_per_s'])}); "
                            f"pipeline lag p50 {lm[0.5]:.3f} s p99 {lm[0.99]:.3f} s (/metrics histogram); "
                            f"ledger received_at-occurred_at p50 {ll[0.5] or float('nan'):.3f} s p99 {ll[0.99] or float('nan'):.3f} s"
                        )
                        log(
                            f"    request latency p50 {r['request_latency_p50'] * 1e3:.0f} ms p99 "
                            f"{r['request_latency_p99'] * 1e3:.0f} ms; group commits {r['group_commit']['commits_per_s']:.1f}/s "
                            f"(duration p50 {r['group_commit']['p50_s'] * 1e3:.0f} ms); export_requests in window {r['export_requests']}"
                            f"; write errors {r['write_errors'] or 0}"
                        )
                        log(fold_line(r["fold"]))
                        unit = "span"
                    else:
                        log("(4) spanmeter serve, 90% non-billable spans")
                        r = bench.phase_serve(server, billable_every=10)
                        rr["4"] = r
                        # a closed loop cannot beat in-flight requests x spans / request latency
                        r["closed_loop_bound"] = (
                            args.clients * args.inflight * args.spans_per_request / r["request_latency_p50"]
                            if r["request_latency_p50"]
                            else float("nan")
                        )
                        log(
                            f"    closed-loop bound: {args.clients} x {args.inflight} in flight x "
                            f"{args.spans_per_request} spans / p50 latency {r['request_latency_p50'] * 1e3:.0f} ms = "
                            f"{fmt_rate(r['closed_loop_bound'])} spans/s (raise --inflight while (4) is near it)"
                        )
                        log(
                            f"    received {fmt_rate(r['value'])} spans/s (spans_received_total: "
                            f"{fmt_rate(r['received_per_s_metric'])}/s), billable committed {fmt_rate(r['committed_per_s'])}/s;"
                            f" request latency p50 {r['request_latency_p50'] * 1e3:.0f} ms p99 {r['request_latency_p99'] * 1e3:.0f} ms;"
                            f" export_requests in window {r['export_requests']}"
                        )
                        unit = "span"
                    r["analysis"] = analyse_profile(r["profile"], r["spans_ok_per_s"], _writers(args))
                    for line in cpu_lines(r["window"], r["value"], unit) + profile_lines(r["analysis"], unit):
                        log(line)
                    r["bound_by"] = bound_by("serve_mixed" if phase == "4" else "serve_billable", r)
                    log(f"    bound by: {r['bound_by']}")
                    if phase == "3n":
                        server.stop()
            if "serve" in rr:
                server = rr.pop("serve")
                rr["serve_export_requests_total"] = _monitor.scrape(f"http://{server.metrics}/metrics")
                server.stop()
            results["repeats"].append(rr)
        summary = summarize(results, args, methods)
        results["summary"] = summary
    finally:
        if not args.keep_db:
            pg.stop()
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"ingest-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, default=str, indent=1))
    log(f"\nresults: {out}")
    return 0


def summarize(results: dict, args: argparse.Namespace, methods: list[str]) -> dict:
    reps = results["repeats"]

    def med(path):
        vals = []
        for rr in reps:
            node = rr
            try:
                for key in path:
                    node = node[key]
            except (KeyError, TypeError):
                continue
            vals.append(node)
        return median(vals)

    def last(path, default="-"):
        for rr in reversed(reps):
            node = rr
            try:
                for key in path:
                    node = node[key]
                return node
            except (KeyError, TypeError):
                continue
        return default

    n = len(reps)
    f1 = med(["1", "value"])
    method_meds = {m: med(["2", m, "value"]) for m in methods}
    valid = {m: v for m, v in method_meds.items() if not math.isnan(v)}
    best = max(valid, key=valid.get) if valid else None
    f2 = valid.get(best, float("nan")) if best else float("nan")
    f3 = med(["3", "value"])
    lag50 = med(["3", "lag_metrics", 0.5])
    lag99 = med(["3", "lag_metrics", 0.99])
    f4 = med(["4", "value"])
    f2r = med(["2r", "value"])
    fold99 = med(["3", "fold", "lag_p99_s"])
    f5 = med(["5", "textbook_executemany", "value"])
    f5b = med(["5", "textbook_copy", "value"])
    rows = []
    log("")
    log("=" * 118)
    log(f"SUMMARY (medians of {n} repeat{'s' if n != 1 else ''}; ledgers pre-filled with {args.prefill_rows:,} rows)")
    log("=" * 118)
    log(f"{'figure':<58} {'value':>22}  bound by (last repeat)")

    def row(label, value, unit, bound):
        text = f"{fmt_rate(value)} {unit}" if isinstance(value, float | int) else str(value)
        log(f"{label:<58} {text:>22}  {bound}")
        rows.append({"figure": label, "value": value, "unit": unit, "bound_by": bound})

    row("(1) no-op receiver, decode only (protocol ceiling)", f1, "spans/s", last(["1", "bound_by"]))
    for m in methods:
        mark = " <- best" if m == best else ""
        row(f"(2) bare write: {m}{mark}", method_meds[m], "rows/s", last(["2", m, "bound_by"]))
    row(f"(2) storage ceiling = best ({best})", f2, "rows/s", last(["2", best, "bound_by"]) if best else "")
    row("(2r) LedgerWriter + rollup upkeep (deltas, fold 1/s)", f2r, "rows/s", last(["2r", "bound_by"]))
    log(f"{'    (2r) rollup fold lag p99 (sampled 1/s)':<58} {med(['2r', 'fold', 'lag_p99_s']):>10.2f} s")
    row("(3) spanmeter serve, all billable: committed", f3, "spans/s", last(["3", "bound_by"]))
    log(f"{'    pipeline lag p50 / p99 (/metrics histogram)':<58} {lag50:>10.3f} s / {lag99:.3f} s")
    log(
        f"{'    lag p50 / p99, ledger received_at - occurred_at':<58} "
        f"{med(['3', 'lag_ledger', 0.5]):>10.3f} s / {med(['3', 'lag_ledger', 0.99]):.3f} s"
    )
    log(
        f"{'    export_requests_total by code (whole run, last repeat)':<58} "
        f"{json.dumps(last(['3', 'export_requests_total'], {}))}"
    )
    log(
        f"{'    (3) rollup fold lag p99 / max (sampled 1/s)':<58} {fold99:>10.2f} s / "
        f"{med(['3', 'fold', 'lag_max_s']):.2f} s; pending deltas first/last "
        f"{last(['3', 'fold', 'pending_first'])}/{last(['3', 'fold', 'pending_last'])}"
    )
    row("(4) spanmeter serve, 90% non-billable: received", f4, "spans/s", last(["4", "bound_by"]))
    row(
        "(5) textbook schema, executemany one-row INSERT..ON CONFLICT",
        f5,
        "rows/s",
        last(["5", "textbook_executemany", "bound_by"]),
    )
    if not math.isnan(f5b):
        row(
            "(5b) textbook schema, COPY staging (method held equal)",
            f5b,
            "rows/s",
            last(["5", "textbook_copy", "bound_by"]),
        )
    log("-" * 118)

    def ratio(label, num, den, target, extra_ok=True, extra=""):
        value = num / den if den and not math.isnan(num) and not math.isnan(den) else float("nan")
        ok = (not math.isnan(value)) and value >= target and extra_ok
        log(f"{label:<58} {value:>10.3f}   target >= {target:.3f}{extra}   {'PASS' if ok else 'MISS'}")
        return {"ratio": label, "value": value, "target": target, "pass": ok}

    ratios = [
        ratio(
            "(3)/(2) serve committed vs storage ceiling",
            f3,
            f2,
            0.80,
            lag99 < 1.0 and fold99 < 10.0,
            f", lag p99 {lag99:.3f} s < 1 s, fold lag p99 {fold99:.2f} s < 10 s",
        ),
        ratio("(2r)/(5b) with rollup upkeep vs textbook, same COPY method", f2r, f5b, 1.5),
        ratio("(4)/(1) serve 90% non-billable vs protocol ceiling", f4, f1, 0.70),
        ratio("    info: (2)/(5) storage ceiling vs textbook executemany", f2, f5, 1.5),
        ratio("    info: (2r)/(2) rollup upkeep's cost on the write path", f2r, f2, 0.0),
    ]
    f2n, f2k, f3k, f3n = med(["2n", "value"]), med(["2k", "value"]), med(["3k", "value"]), med(["3n", "value"])
    f2lw = method_meds.get("ledgerwriter", float("nan"))
    if not math.isnan(f2n):
        row("(2n) LedgerWriter, no key registry (diagnostic)", f2n, "rows/s", last(["2n", "bound_by"]))
        log(
            f"{'    info: (2)/(2n) LedgerWriter with the registry vs none':<58} {f2lw / f2n if f2n else math.nan:>10.3f}"
        )
    if not math.isnan(f2k):
        row("(2k) LedgerWriter, key registry unindexed (diagnostic)", f2k, "rows/s", last(["2k", "bound_by"]))
        log(
            f"{'    info: (2)/(2k) LedgerWriter with the registry vs without':<58} {f2lw / f2k if f2k else math.nan:>10.3f}"
        )
    if not math.isnan(f3k):
        row("(3k) serve, key registry unindexed (diagnostic)", f3k, "spans/s", last(["3k", "bound_by"]))
        log(f"{'    info: (3)/(3k) serve with the registry vs without':<58} {f3 / f3k if f3k else math.nan:>10.3f}")
    if not math.isnan(f3n):
        row("(3n) serve, no key registry (diagnostic)", f3n, "spans/s", last(["3n", "bound_by"]))
        log(f"{'    info: (3)/(3n) serve with the registry vs none':<58} {f3 / f3n if f3n else math.nan:>10.3f}")
    f3u = med(["3u", "value"])
    if not math.isnan(f3u):
        ratios.append(ratio("    info: (3u)/(2) serve with no rollup upkeep vs (2)", f3u, f2, 0.0))
        log(f"{'    info: (3)/(3u) serve with its upkeep vs without':<58} {f3 / f3u if f3u else math.nan:>10.3f}")
    if not math.isnan(f5b):
        log(f"{'    info: (2)/(5b) schema alone; (5b)/(5) method alone':<58} {f2 / f5b:>10.2f}   {f5b / f5:.2f}")

    # CPU per unit over everything the bench accounts for (receiver or bench writers, load generator, Postgres):
    # robust to other load on the machine, unlike the rates.
    def cpu_per_unit(path):
        vals = []
        for rr in reps:
            node = rr
            try:
                for key in path:
                    node = node[key]
            except (KeyError, TypeError):
                continue
            cores = node["window"]["cpu"]["cores"]
            vals.append(1e6 * sum(cores.values()) / max(node["value"], 1e-9))
        return median(vals)

    c2 = cpu_per_unit(["2", best]) if best else float("nan")
    c3 = cpu_per_unit(["3"])
    c4, c1 = cpu_per_unit(["4"]), cpu_per_unit(["1"])
    c3u = cpu_per_unit(["3u"])
    if not math.isnan(c3u):
        log(f"{'    info: CPU µs per span: (3u) serve, no rollup upkeep':<58} {c3u:>10.1f}")
    log(
        f"{'    info: CPU µs per row/span, all bench processes: (2) / (3)':<58} {c2:>10.1f}   {c3:.1f}   "
        f"-> (2)/(3) cost ratio {c2 / c3:.2f}"
    )
    log(f"{'    info: CPU µs per span: (1) / (4)':<58} {c1:>10.1f}   {c4:.1f}   -> (1)/(4) cost ratio {c1 / c4:.2f}")
    noisy = []
    for i, rr in enumerate(reps):
        for key, node in rr.items():
            nodes = node.items() if key in ("2", "5") else [(key, node)]
            for name, phase_res in nodes:
                if isinstance(phase_res, dict) and "window" in phase_res:
                    other = phase_res["window"]["cpu"].get("other_processes_cores", 0.0)
                    if other > 0.25:
                        noisy.append(f"r{i + 1}:{name} {other:.2f}c")
    if noisy:
        log(
            f"  warning: processes outside the bench used > 0.25 core in {len(noisy)} windows (rates there are "
            f"depressed; CPU per unit is not): " + ", ".join(noisy)
        )
    per_rep = []
    for i, rr in enumerate(reps):
        vals = {
            k: rr.get(k, {}).get("value") if isinstance(rr.get(k), dict) and "value" in rr.get(k, {}) else None
            for k in ("1", "2n", "2k", "2r", "3", "3u", "3k", "3n", "4")
        }
        vals["2"] = {m: rr.get("2", {}).get(m, {}).get("value") for m in methods}
        vals["5"] = rr.get("5", {}).get("textbook_executemany", {}).get("value")
        per_rep.append(vals)
        if n > 1:
            log(
                f"  repeat {i + 1}: (1) {fmt_rate(vals['1'])}  (2) "
                + " ".join(f"{m}={fmt_rate(v)}" for m, v in vals["2"].items())
                + f"  (2n) {fmt_rate(vals['2n'])}  (2k) {fmt_rate(vals['2k'])}  (2r) {fmt_rate(vals['2r'])}  (3) {fmt_rate(vals['3'])}  (3u) {fmt_rate(vals['3u'])}"
                + f"  (3k) {fmt_rate(vals['3k'])}  (3n) {fmt_rate(vals['3n'])}  (4) {fmt_rate(vals['4'])}  (5) {fmt_rate(vals['5'])}"
            )
    return {
        "rows": rows,
        "ratios": ratios,
        "best_method": best,
        "per_repeat": per_rep,
        "noisy_windows": noisy,
        "cpu_us_per_unit": {"1": c1, "2": c2, "3": c3, "3u": c3u, "4": c4},
        "lag_p50": lag50,
        "lag_p99": lag99,
    }


if __name__ == "__main__":
    raise SystemExit(main())
