"""Exact per-stage CPU accounting inside a receiver process (bench-only; the product code is not edited).

py-spy cannot attach to this machine's pyenv build (shared libpython: "Failed to find python version from
target process"), and stack sampling misattributes the short CPU bursts of handler threads (a 512-span
request is decoded and metered in a few ms, then the thread blocks). So the bench starts receivers through
small wrappers that, before the server starts, wrap a handful of functions with timers reading the calling
thread's CPU clock (``time.thread_time``, ~0.6 µs per read, a few reads per *request* or *batch*, never per
span) and wall clock:

- handler side: ``TraceReceiver._export`` (whole handler), ``decode_request``, ``meter_request``,
  ``LedgerExporter.submit`` / ``.wait`` (blocking for the commit);
- writer side: ``LedgerExporter._write`` (one group commit), ``LedgerWriter.write_usage`` (COPY + INSERT),
  ``LedgerWriter.write_rejected_spans``, ``psycopg.Connection.commit``, ``LedgerExporter._record`` (metrics);
  the rest of ``_write`` is building the rows (``_usage_row``: json.dumps, str(Decimal)) and bookkeeping.

At window boundaries it also reads every thread's CPU clock (Python threads by name, native gRPC-core threads
from /proc), and a probe thread that asks to wake up every 10 ms measures how late it gets the GIL back.

Control is line-based on stdin: ``start`` opens a window; ``stop PATH`` writes a JSON report to PATH.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
from collections import Counter, defaultdict

_thread_time = time.thread_time
_perf = time.perf_counter


class Timers:
    """name -> [calls, cpu s, wall s, items]; per-thread accumulators summed on read (no lock on the hot path)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[dict] = []
        self._all_lock = threading.Lock()

    def _mine(self) -> dict:
        d = getattr(self._local, "d", None)
        if d is None:
            d = defaultdict(lambda: [0, 0.0, 0.0, 0])
            self._local.d = d
            with self._all_lock:
                self._all.append(d)
        return d

    def wrap(self, name: str, fn, items=None):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            c0, w0 = _thread_time(), _perf()
            try:
                return fn(*args, **kwargs)
            finally:
                s = self._mine()[name]
                s[0] += 1
                s[1] += _thread_time() - c0
                s[2] += _perf() - w0
                if items is not None:
                    with contextlib.suppress(Exception):
                        s[3] += items(args)

        return timed

    def snapshot(self) -> dict[str, list]:
        out: dict[str, list] = defaultdict(lambda: [0, 0.0, 0.0, 0])
        with self._all_lock:
            tables = list(self._all)
        for d in tables:
            for name, s in list(d.items()):
                o = out[name]
                for i in range(4):
                    o[i] += s[i]
        return dict(out)


TIMERS = Timers()


def instrument_spanmeter() -> None:
    """Wrap the serve pipeline's stages. Must run before the server is constructed."""
    import psycopg

    from spanmeter.billing.ledger import writer as writer_mod
    from spanmeter.collector import receiver as receiver_mod
    from spanmeter.collector.exporters import ledger as exporter_mod

    T = TIMERS

    def wrap(owner, attr: str, name: str, items=None) -> None:
        """Wrap owner.attr if it exists (the product code evolves; a missing stage is simply not timed)."""
        fn = getattr(owner, attr, None)
        if fn is None:
            print(f"bench profiler: {owner.__name__}.{attr} not found, not timed", file=sys.stderr, flush=True)
            return
        setattr(owner, attr, T.wrap(name, fn, items))

    R = receiver_mod.TraceReceiver
    wrap(R, "_export", "handler: _export (whole handler)")
    wrap(receiver_mod, "decode_request", "handler: decode_request")
    wrap(receiver_mod, "meter_request", "handler: meter_request")
    wrap(receiver_mod, "meter_native", "handler: meter_native (Rust: decode + meter + COPY text)")
    wrap(receiver_mod, "to_metering_result", "handler: to_metering_result (native result to Python)")
    E = exporter_mod.LedgerExporter
    wrap(E, "submit", "handler: exporter.submit")
    wrap(E, "wait", "handler: exporter.wait (for COMMIT)")
    wrap(E, "_write", "writer: _write (one group commit)", items=lambda a: sum(p.row_count for p in a[3]))
    wrap(E, "_record", "writer: _record (metrics, per row)")
    wrap(E, "_take_batch", "writer: _take_batch (waiting for work)")
    W = writer_mod.LedgerWriter
    wrap(W, "write_copy", "writer: write_usage (COPY + INSERT)", items=lambda a: a[2])
    wrap(W, "write_rejected_spans", "writer: write_rejected_spans")
    wrap(psycopg.Connection, "commit", "writer: COMMIT")


def _group(name: str) -> str:
    if name.startswith("otlp"):
        return "grpc handler threads"
    if name.startswith("ledger-writer"):
        return "ledger writer threads"
    if name.startswith("bench-"):
        return "bench probe"
    if name == "MainThread":
        return "main"
    if name == "metrics-http":
        return "metrics http"
    m = name.find("(")
    if name.startswith("Thread-") and m > 0:
        return f"python thread {name[m:]}"  # e.g. grpc's (_serve) poller
    return "other python"


def _proc_threads() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/self/task/{tid}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _thread_cpu() -> dict[str, float]:
    """group -> CPU seconds so far, Python threads via their CPU clocks, native ones via /proc."""
    groups: Counter[str] = Counter()
    py_native_ids = set()
    for t in threading.enumerate():
        if t.ident is None:
            continue
        py_native_ids.add(t.native_id)
        with contextlib.suppress(OSError, OverflowError):
            groups[_group(t.name)] += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    for tid, (comm, cpu) in _proc_threads().items():
        if tid not in py_native_ids:
            groups[f"native: {comm}"] += cpu
    return dict(groups)


class GilProbe:
    """Wakes every 10 ms; how late it runs again is the wait for the GIL (plus scheduler noise)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.active = False
        threading.Thread(target=self._run, name="bench-gil-probe", daemon=True).start()

    def _run(self) -> None:
        while True:
            t = _perf()
            time.sleep(0.01)
            late = _perf() - t - 0.01
            if self.active:
                self.delays.append(late)


class Profiler:
    def __init__(self) -> None:
        self.gil = GilProbe()
        self._begin: dict | None = None

    def begin(self) -> None:
        self.gil.delays = []
        self.gil.active = True
        self._begin = {"wall": _perf(), "times": os.times(), "threads": _thread_cpu(), "timers": TIMERS.snapshot()}

    def end(self, path: str) -> None:
        b = self._begin or {"wall": _perf(), "times": os.times(), "threads": {}, "timers": {}}
        wall = _perf() - b["wall"]
        times = os.times()
        threads = _thread_cpu()
        timers = TIMERS.snapshot()
        self.gil.active = False
        delays = sorted(self.gil.delays)
        diff = {}
        for name, s in timers.items():
            s0 = b["timers"].get(name, [0, 0.0, 0.0, 0])
            d = [s[i] - s0[i] for i in range(4)]
            if d[0]:
                diff[name] = {"calls": d[0], "cpu_s": d[1], "wall_s": d[2], "items": d[3]}
        report = {
            "wall_s": wall,
            "process_cpu_s": (times.user + times.system) - (b["times"].user + b["times"].system),
            "thread_cpu_s": {
                k: v - b["threads"].get(k, 0.0)
                for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                if v - b["threads"].get(k, 0.0) > 0.0
            },
            "timers": diff,
            "gil_probe_ms": {
                "n": len(delays),
                "p50": 1e3 * delays[len(delays) // 2] if delays else None,
                "p99": 1e3 * delays[int(len(delays) * 0.99)] if delays else None,
                "mean": 1e3 * sum(delays) / len(delays) if delays else None,
            },
        }
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh)
        os.replace(tmp, path)


def control_from_stdin(profiler: Profiler) -> None:
    def loop() -> None:
        for line in sys.stdin:
            parts = line.strip().split(maxsplit=1)
            if not parts:
                continue
            if parts[0] == "start":
                profiler.begin()
            elif parts[0] == "stop" and len(parts) == 2:
                profiler.end(parts[1])

    threading.Thread(target=loop, name="bench-profiler-control", daemon=True).start()
