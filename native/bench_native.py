#!/usr/bin/env python
"""Micro-benchmark: Python reference vs the native core, CPU µs per span, on the ingest bench's requests.

    .venv/bin/python native/bench_native.py            # 5 repeats x 100 requests x 512 spans, medians
    .venv/bin/python native/bench_native.py --quick    # 3 x 30

Steps (same pre-encoded 512-span requests as bench/python_floor.py; all billable, and 1 in 10 billable):

- ``python``: ``decode_request`` + ``meter_request`` + ``usage_event_tuple`` + the COPY text (python_floor's
  "meter+rows", with the receiver's decode);
- ``native``: ``Meter.meter(body, ...)`` + ``.copy_text`` + the compact row tuples (what a receiver needs
  for the ledger and its metrics);
- ``native+adapter``: the native result converted to the reference's ``MeteringResult`` (UsageEvent objects,
  Decimals, metadata dicts) + ``.copy_text``: what a drop-in replacement of ``meter_request`` would cost.

Then a threads run: the native step over the same requests on 1 and 2 threads (wall-clock spans/s), which
only scales if the GIL is released during the work. The machine's 2 cores may be shared: figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))

from _loadgen import RequestFactory, build_template  # noqa: E402

from spanmeter.billing.ledger.writer import _text  # noqa: E402
from spanmeter.collector.exporters.rows import usage_event_tuple  # noqa: E402
from spanmeter.collector.otlp import decode_request  # noqa: E402
from spanmeter.collector.processors.native import _bounds, meter, to_metering_result  # noqa: E402
from spanmeter.collector.processors.usage import MeteringLimits, meter_request  # noqa: E402

METER = meter()


def _requests(billable_every: int, count: int) -> list[bytes]:
    templates = [build_template(512, billable_every, seed=k) for k in range(8)]
    factory = RequestFactory(templates, nonce6=b"native", client=1, phase=1)
    return [factory.next()[0] for _ in range(count)]


def _python(bodies: list[bytes], now: int) -> None:
    limits = MeteringLimits()
    for body in bodies:
        result = meter_request(decode_request(body).request, limits, now)
        rows = [usage_event_tuple(row) for row in result.rows]
        "".join(
            f"{us}\t{key}\t{_text(a)}\t{_text(j)}\t{_text(p)}\t{m}\t{v}\t{q}\t{u}\t{t}\t{s}\t{_text(md)}\n"
            for us, key, a, j, p, m, v, q, u, t, s, md in rows
        ).encode()


def _native(bodies: list[bytes], now: int) -> None:
    max_d, oldest, newest = _bounds(MeteringLimits(), now)
    meter = METER.meter
    for body in bodies:
        result = meter(body, now, max_d, oldest, newest, None)
        result.copy_text  # noqa: B018
        result.rows  # noqa: B018


def _native_adapter(bodies: list[bytes], now: int) -> None:
    max_d, oldest, newest = _bounds(MeteringLimits(), now)
    for body in bodies:
        result = METER.meter(body, now, max_d, oldest, newest, None)
        to_metering_result(result, body)
        result.copy_text  # noqa: B018


STEPS = (("python", _python), ("native", _native), ("native+adapter", _native_adapter))


def _native_copy(bodies: list[bytes], now: int) -> None:
    max_d, oldest, newest = _bounds(MeteringLimits(), now)
    meter = METER.meter
    for body in bodies:
        meter(body, now, max_d, oldest, newest, None).copy_text  # noqa: B018


def _threads(step, bodies: list[bytes], now: int, threads: int, rounds: int) -> float:
    """Wall-clock spans/s with `threads` threads each running `step` over all bodies `rounds` times."""
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(rounds):
            step(bodies, now)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in pool:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return threads * rounds * len(bodies) * 512 / wall, cpu / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeat = 30, 3
    print(
        f"native vs Python per span: {args.repeat} repeats x {args.requests} requests x 512 spans, medians of CPU time"
    )
    print(f"  python {sys.version.split()[0]}")
    now = time.time_ns()
    for label, every in (("all billable", 1), ("1 in 10 billable", 10)):
        bodies = _requests(every, args.requests)
        spans = 512 * len(bodies)
        _python(bodies[:3], now)
        _native(bodies[:3], now)
        figures = {}
        for name, step in STEPS:
            samples = []
            for _ in range(args.repeat):
                t0 = time.process_time()
                step(bodies, now)
                samples.append((time.process_time() - t0) / spans * 1e6)
            figures[name] = statistics.median(samples)
            print(f"  {label:17} {name:15} {figures[name]:6.2f} µs/span   (min {min(samples):.2f})")
        print(f"  {label:17} speed-up: native {figures['python'] / figures['native']:.1f}x, "
              f"native+adapter {figures['python'] / figures['native+adapter']:.1f}x")  # fmt: skip

    print()
    print(f"threads (wall clock; load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores):")
    bodies = _requests(1, args.requests)
    rounds = max(1, 2 * args.repeat // 3)
    for name, step in (
        ("native (meter + copy_text)", _native_copy),
        ("native (+ row tuples)", _native),
        ("python", _python),
    ):
        r = 1 if step is _python else rounds
        one = sorted(_threads(step, bodies, now, 1, r) for _ in range(3))[1]
        two = sorted(_threads(step, bodies, now, 2, r) for _ in range(3))[1]
        print(
            f"  all billable, {name:27} 1 thread {one[0]:9,.0f} spans/s, 2 threads {two[0]:9,.0f} spans/s "
            f"({two[0] / one[0]:.2f}x; CPU/wall with 2 threads {two[1]:.2f})"
        )
    print("  (meter + copy_text runs with the GIL released; building row tuples and the Python path hold it;")
    print("   CPU/wall near 2 = both threads ran at once; another process on the 2 cores lowers both figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
