#!/usr/bin/env python
"""What a Python receiver cannot go below: CPU per span of each step, on the ingest bench's own requests.

    .venv/bin/python bench/python_floor.py              # 7 repeats x 200 requests per step, medians
    .venv/bin/python bench/python_floor.py --quick      # 3 x 50

The ingest bench (``ingest_bench.py``) shows ``spanmeter serve`` bound by its one core of Python (the GIL).
This script measures, in one process and with no gRPC, database or threads in the way, the CPU cost per span
of the steps any Python OTLP receiver that meters spans must take, from the cheapest floor upwards, on the
same pre-encoded requests the bench's load generator sends (512 spans; all billable, and 1 in 10 billable):

1. ``decode``: ``ExportTraceServiceRequest.FromString(body)`` (upb, C): what the no-op receiver (1) does;
2. ``walk``: (1) + visit every span and read every attribute *key* and test it against the set of keys
   metering needs (``for kv in span.attributes: kv.key in KEYS``): the least any Python metering can do to
   find out whether a span is billable, before it reads a single value;
3. ``meter``: (1) + spanmeter's ``meter_request`` (match, validate, quantities, keys, metadata);
4. ``meter+rows``: (3) + the rows as the ledger writer takes them (``usage_event_tuple``) + the COPY text,
   i.e. all of the receiver's per-span Python work except gRPC, the commit wait and the metrics.

Figures are medians over repeats of (process CPU time / spans). Compare them with the budgets the ingest
targets leave a receiver on a 2-core machine (printed at the end from the figures you pass in: the defaults
are the medians in ``bench/README.md``): target (4) >= 1/3 of (1) means a *whole* receiver at <= 3 x the no-op receiver's
CPU per span; target (3) >= 0.9 x (2) means Postgres (≈ 13 µs/row on this machine) plus the receiver must
fit 90% of the bare path's throughput into 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _loadgen import RequestFactory, build_template
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from spanmeter.collector.exporters.rows import usage_event_tuple
from spanmeter.collector.processors.usage import _SPAN_KEYS, MeteringLimits, meter_request


def _requests(billable_every: int, count: int) -> list[bytes]:
    templates = [build_template(512, billable_every, seed=k) for k in range(8)]
    factory = RequestFactory(templates, nonce6=b"floor!", client=1, phase=1)
    return [factory.next()[0] for _ in range(count)]


def _decode(bodies: list[bytes]) -> None:
    for body in bodies:
        ExportTraceServiceRequest.FromString(body)


def _walk(bodies: list[bytes]) -> None:
    keys = _SPAN_KEYS
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    for kv in span.attributes:
                        if kv.key in keys:
                            pass


def _meter(bodies: list[bytes]) -> None:
    limits = MeteringLimits()
    now = time.time_ns()
    for body in bodies:
        meter_request(ExportTraceServiceRequest.FromString(body), limits, now)


def _meter_rows(bodies: list[bytes]) -> None:
    from spanmeter.billing.ledger.writer import _text

    limits = MeteringLimits()
    now = time.time_ns()
    for body in bodies:
        result = meter_request(ExportTraceServiceRequest.FromString(body), limits, now)
        rows = [usage_event_tuple(row) for row in result.rows]
        "".join(
            f"{us}\t{key}\t{_text(a)}\t{_text(j)}\t{_text(p)}\t{m}\t{v}\t{q}\t{u}\t{t}\t{s}\t{_text(md)}\n"
            for us, key, a, j, p, m, v, q, u, t, s, md in rows
        )


STEPS = (("decode", _decode), ("walk", _walk), ("meter", _meter), ("meter+rows", _meter_rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--noop-us", type=float, default=1.5, help="no-op receiver CPU µs/span, figure (1)")
    parser.add_argument("--pg-us", type=float, default=13.0, help="Postgres CPU µs/row on the bare path (2)")
    parser.add_argument("--bare-rows-per-s", type=float, default=105_984, help="bare path throughput, figure (2)")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeat = 50, 3

    print(f"Python floor per span: {args.repeat} repeats x {args.requests} requests x 512 spans, medians of CPU time")
    print(f"  python {sys.version.split()[0]}")
    results: dict[tuple[str, str], float] = {}
    for label, every in (("all billable (3)", 1), ("1 in 10 billable (4)", 10)):
        bodies = _requests(every, args.requests)
        spans = 512 * len(bodies)
        _meter(bodies[:5])  # warm caches (metadata JSON memo, imports)
        for name, step in STEPS:
            samples = []
            for _ in range(args.repeat):
                t0 = time.process_time()
                step(bodies)
                samples.append((time.process_time() - t0) / spans * 1e6)
            results[(label, name)] = statistics.median(samples)
            print(f"  {label:22} {name:11} {results[(label, name)]:6.2f} µs/span   (min {min(samples):.2f})")

    print()
    noop, pg, bare = args.noop_us, args.pg_us, args.bare_rows_per_s
    walk4 = results[("1 in 10 billable (4)", "walk")]
    print(f"Target (4) >= 1/3 of (1): a whole receiver may spend at most 3 x {noop:.1f} = {3 * noop:.1f} µs/span.")
    print(
        f"  decode + key walk alone, 1 in 10 billable: {walk4:.2f} µs/span = {walk4 / (3 * noop):.0%} of that budget,"
    )
    print("  before reading a value, writing a row, committing, counting metrics or answering the call.")
    target3 = 0.9 * bare
    budget3 = 2 / target3 * 1e6 - pg  # µs of CPU per span the 2 cores have left once Postgres has its share
    rows3 = results[("all billable (3)", "meter+rows")]
    print(
        f"Target (3) >= 0.9 x (2) = {target3:,.0f} spans/s: on 2 cores, after Postgres's {pg:.0f} µs/row, the receiver "
        f"has {budget3:.1f} µs/span in all (and one core at most: the GIL);"
    )
    print(
        f"  decode + meter + rows + COPY text alone, all billable: {rows3:.2f} µs/span = {rows3 / budget3:.0%} of it."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
