"""Resource accounting for one measurement window: CPU per component, Postgres activity, /metrics diffs."""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import _ledger
import psutil


def postgres_pids(postmaster_pid: int | None) -> list[int]:
    if postmaster_pid is None:
        return []
    try:
        master = psutil.Process(postmaster_pid)
        return [postmaster_pid] + [c.pid for c in master.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _pg_role(proc: psutil.Process, postmaster_pid: int | None) -> str:
    if proc.pid == postmaster_pid:
        return "postgres: postmaster"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "postgres: ?"
    if not cmd.startswith("postgres:"):
        return "postgres: other"
    rest = cmd[len("postgres:") :].strip()
    if "[local]" in rest or re.search(r"\d+\.\d+\.\d+\.\d+\(\d+\)", rest):
        parts = rest.split()
        return f"postgres backends ({parts[1] if len(parts) > 1 else '?'})"
    if rest.startswith("autovacuum worker"):
        return "postgres: autovacuum worker"
    return "postgres: " + rest


@dataclass
class CpuSnapshot:
    per_pid: dict[int, tuple[str, float]]  # pid -> (component, cpu seconds)
    machine: psutil._common.scputimes  # type: ignore[name-defined]


def pg_labels(admin_conninfo: str) -> dict[int, str]:
    """pid -> label from pg_stat_activity (client backends by database, background processes by type)."""
    with _ledger.connect(admin_conninfo, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, backend_type, datname, application_name FROM pg_stat_activity").fetchall()
    return {
        pid: (
            "bench activity sampler (a PostgreSQL backend)"
            if app == SAMPLER_APPLICATION
            else f"postgres backends ({db})"
            if btype == "client backend"
            else f"postgres: {btype}"
        )
        for pid, btype, db, app in rows
    }


def cpu_snapshot(
    components: dict[str, list[int]], postmaster_pid: int | None, labels: dict[int, str] | None = None
) -> CpuSnapshot:
    per_pid: dict[int, tuple[str, float]] = {}
    for name, pids in components.items():
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                per_pid[pid] = (name, t.user + t.system)
            except psutil.NoSuchProcess:
                pass
    for pid in postgres_pids(postmaster_pid):
        try:
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            label = (labels or {}).get(pid) or _pg_role(proc, postmaster_pid)
            per_pid[pid] = (label, t.user + t.system)
        except psutil.NoSuchProcess:
            pass
    return CpuSnapshot(per_pid, psutil.cpu_times())


def cpu_delta(a: CpuSnapshot, b: CpuSnapshot, wall: float) -> dict:
    """Cores used per component over the window, machine busy/iowait cores."""
    used: dict[str, float] = defaultdict(float)
    for pid, (name, cpu) in b.per_pid.items():
        before = a.per_pid[pid][1] if pid in a.per_pid else 0.0
        used[name] += max(0.0, cpu - before)
    total_a, total_b = sum(a.machine), sum(b.machine)
    idle = b.machine.idle - a.machine.idle
    iowait = getattr(b.machine, "iowait", 0.0) - getattr(a.machine, "iowait", 0.0)
    span = max(1e-9, total_b - total_a)
    ncpu = psutil.cpu_count() or 1
    pg_total = sum(v for k, v in used.items() if k.startswith("postgres"))
    busy = ncpu * (span - idle - iowait) / span
    return {
        "other_processes_cores": max(0.0, busy - sum(used.values()) / wall),
        "cores": {k: v / wall for k, v in sorted(used.items(), key=lambda kv: -kv[1])},
        "postgres_cores": pg_total / wall,
        "machine_busy_cores": busy,
        "machine_iowait_cores": ncpu * iowait / span,
        "ncpu": ncpu,
    }


def pg_snapshot(conninfo: str, dbname: str) -> dict:
    with _ledger.connect(conninfo, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        row = conn.execute(
            "SELECT xact_commit, blks_read, blks_hit, tup_inserted FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
        ckpt = conn.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").fetchone()[0]
    return {
        "wal_bytes": int(lsn),
        "commits": row[0],
        "blks_read": row[1],
        "blks_hit": row[2],
        "tup_inserted": row[3],
        "checkpoints": ckpt,
    }


def pg_delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


SAMPLER_APPLICATION = "bench-activity-sampler"


class ActivitySampler:
    """Where a database's backends spend their time, without pg_stat_statements (the embedded server has no
    contrib modules): every ``interval_seconds`` it reads pg_stat_activity and counts each active backend's
    statement (whitespace collapsed, its first 60 characters) with its wait event. Each sample stands for the
    window's wall time divided by the number of samples taken, so the figures are backend-seconds active in
    that statement, on CPU or waiting. Its own connection is left out of the samples, and ``pg_labels`` gives
    it a label of its own, so its CPU is not counted as the database's."""

    def __init__(self, conninfo: str, dbname: str, interval_seconds: float = 0.02) -> None:
        self.conninfo, self.dbname, self.interval_seconds = conninfo, dbname, interval_seconds
        self._samples: Counter[str] = Counter()
        self._ticks = 0
        self._error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity-sampler", daemon=True)
        self._started = self._stopped = 0.0

    def start(self) -> ActivitySampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with _ledger.connect(self.conninfo, autocommit=True, application_name=SAMPLER_APPLICATION) as conn:
                while not self._stop.is_set():
                    rows = conn.execute(
                        "SELECT query, wait_event_type, wait_event FROM pg_stat_activity"
                        " WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()",
                        (self.dbname,),
                    ).fetchall()
                    with self._lock:
                        self._ticks += 1
                        for query, wtype, wevent in rows:
                            label = " ".join((query or "").split())[:60].rstrip()
                            self._samples[f"{label}  [{wtype}:{wevent}]" if wtype else label] += 1
                    self._stop.wait(self.interval_seconds)
        except Exception as exc:  # said in the report, never a silent zero
            self._error = repr(exc)

    def stop(self) -> dict:
        """{"seconds": wall time sampled, "samples": n, "active": {statement [wait]: backend-seconds},
        "error": why sampling stopped early, or None}."""
        self._stop.set()
        self._thread.join(5)
        wall = time.monotonic() - self._started
        with self._lock:
            per_sample = wall / self._ticks if self._ticks else 0.0
            return {
                "seconds": wall,
                "samples": self._ticks,
                "active": {k: v * per_sample for k, v in self._samples.most_common()},
                "error": self._error,
            }


# -- Prometheus text -----------------------------------------------------------------------------------
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def metric_delta(a: dict[str, float], b: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: b[k] - a.get(k, 0.0) for k in b if k.startswith(prefix)}


def histogram_quantiles(a: dict[str, float], b: dict[str, float], name: str, qs=(0.5, 0.99)) -> dict:
    """Quantiles of the observations made between scrapes a and b, by linear interpolation in buckets."""
    buckets = []
    for key, value in b.items():
        if key.startswith(name + "_bucket{"):
            le = re.search(r'le="([^"]+)"', key).group(1)
            bound = math.inf if le == "+Inf" else float(le)
            buckets.append((bound, value - a.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out = {"count": total}
    for q in qs:
        if total <= 0:
            out[q] = float("nan")
            continue
        target = q * total
        prev_bound, prev_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= target:
                if math.isinf(bound):
                    out[q] = prev_bound  # beyond the last finite bucket
                else:
                    frac = (target - prev_count) / max(1e-12, count - prev_count)
                    out[q] = prev_bound + (bound - prev_bound) * frac
                break
            prev_bound, prev_count = bound, count
    return out


@dataclass
class Window:
    wall: float = 0.0
    cpu: dict = field(default_factory=dict)
    pg: dict = field(default_factory=dict)
