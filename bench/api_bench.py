#!/usr/bin/env python
"""spanmeter API benchmark: ``GET /v1/accounts/{id}/month-to-date`` open-loop at a fixed rate on the 10M-event ledger.

    .venv/bin/python bench/api_bench.py                 # 200 requests/s for 30 s after 5 s of warm-up
    .venv/bin/python bench/api_bench.py --rate 400 --seconds 60

The ledger is the rating bench's (``bench/rating_bench.py``: 10M events, 2,000 Zipf accounts, October 2026, in
``bench/.data-rating``; built by that bench when missing, ~8 min). The API runs as ``spanmeter api`` does
(:mod:`spanmeter.api.app` over pooled read-only snapshots, uvicorn) in its own process, with its clock pinned to
2026-10-30T18:00Z so that "month to date" is the ledger's month (``bench/_api_server.py``).

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened before; a pool of client threads, each
with a keep-alive connection, sends them, and a request's latency is timed from its **due** time (so time
spent queued behind a slow request counts: no coordinated omission). Accounts are drawn like traffic: Zipf by
their size (the largest accounts most often), with an operator token. Target: p99 <= 10 ms at 200 requests/s.

The load generator shares the 2-core machine with the server and PostgreSQL; its CPU is reported.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import rating_bench  # noqa: E402

NOW = "2026-10-30T18:00:00Z"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(port: int, token: str, accounts: list[str], weights: list[float], rate: float, seconds: float,
             threads: int) -> dict:  # fmt: skip
    due: queue.Queue = queue.Queue()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {token}"}
        while True:
            item = due.get()
            if item is None:
                return
            scheduled, account = item
            try:
                conn.request("GET", f"/v1/accounts/{account}/month-to-date", headers=headers)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and b'"invoice_so_far"' in body
            except OSError as exc:
                ok, body = False, repr(exc).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            done = time.perf_counter()
            with lock:
                latencies.append(done - scheduled)
                if not ok:
                    errors.append(body[:200].decode("utf-8", "replace"))

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    rng = random.Random(7)
    n = int(rate * seconds)
    picks = rng.choices(accounts, weights=weights, k=n)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter() + 0.05
    for i in range(n):
        at = start + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        due.put((at, picks[i]))
    for _ in workers:
        due.put(None)
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ms = [x * 1000 for x in latencies]
    return {
        "requests": n,
        "errors": len(errors),
        "first_errors": errors[:3],
        "achieved_rate": n / elapsed,
        "p50_ms": statistics.median(ms),
        "p90_ms": _percentile(ms, 0.90),
        "p99_ms": _percentile(ms, 0.99),
        "max_ms": max(ms),
        "loadgen_cpu_cores": ((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)) / elapsed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds (default 30)")
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="unmeasured warm-up at the same rate")
    p.add_argument("--threads", type=int, default=16, help="client threads, each one keep-alive connection")
    p.add_argument("--data-dir", default=str(BENCH_DIR / ".data-rating"), help="the rating bench's PostgreSQL")
    args = p.parse_args()
    rargs = rating_bench.parse_args(["--data-dir", args.data_dir])
    zipf_s, probs = rating_bench.zipf(rargs.accounts, rargs.zipf_s)
    accounts = [rating_bench.account_id(r) for r in range(1, rargs.accounts + 1)]
    pg = rating_bench.Postgres(rargs)
    pg.start()
    try:
        rating_bench.prepare(pg, rargs, zipf_s, probs)
        import psycopg

        from spanmeter.billing import tokens
        from spanmeter.billing.subscriptions import set_subscription

        with psycopg.connect(pg.url) as conn:
            have = {r[0] for r in conn.execute("SELECT DISTINCT account_id FROM subscriptions").fetchall()}
            for rank, account in enumerate(accounts, start=1):
                if account not in have:
                    set_subscription(conn, account_id=account, plan_code=rating_bench.plan_of(rank),
                                     pricing_version="v2_compute", valid_from=rating_bench.MONTH_START,
                                     created_by="api_bench")  # fmt: skip
            _, token = tokens.issue(conn, account_id=None, note="api_bench", created_by="api_bench")
            conn.commit()
        port = _free_port()
        server = subprocess.Popen([sys.executable, str(BENCH_DIR / "_api_server.py"), "--database-url", pg.url,
                                   "--listen", f"127.0.0.1:{port}", "--now", NOW])  # fmt: skip
        try:
            for _ in range(100):
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/openapi.json")
                    break
                except OSError:
                    time.sleep(0.1)
            print(f"spanmeter api bench: {args.rate:.0f} requests/s open loop, month to date as of {NOW}, "
                  f"{len(accounts):,} accounts (Zipf), {args.threads} client threads")  # fmt: skip
            run_load(port, token, accounts, probs, args.rate, args.warmup_seconds, args.threads)
            result = run_load(port, token, accounts, probs, args.rate, args.seconds, args.threads)
        finally:
            server.terminate()
            server.wait(10)
    finally:
        pg.stop()
    verdict = "PASS" if result["p99_ms"] <= 10 and result["errors"] == 0 else "MISS"
    print(f"  {result['requests']:,} requests in {args.seconds:.0f} s ({result['achieved_rate']:.1f}/s), "
          f"{result['errors']} errors")  # fmt: skip
    print(f"  latency from the due time: p50 {result['p50_ms']:.2f} ms, p90 {result['p90_ms']:.2f} ms, "
          f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms; load generator "
          f"{result['loadgen_cpu_cores']:.2f} cores")  # fmt: skip
    print(f"  month-to-date endpoint p99 <= 10 ms at {args.rate:.0f} requests/s: {verdict}")
    if result["first_errors"]:
        print("  first errors: " + json.dumps(result["first_errors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
