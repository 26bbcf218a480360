#!/usr/bin/env python
"""Per-request overhead of tracing a trivial Django view: none, plain OpenTelemetry, spanmeter.

    .venv/bin/python bench/django_overhead.py                  # 5 interleaved rounds x 20,000 requests
    .venv/bin/python bench/django_overhead.py --rounds 7 --requests 50000
    .venv/bin/python bench/django_overhead.py --quick          # smoke run: 2 rounds x 5,000 requests
    .venv/bin/python bench/django_overhead.py --child spanmeter --requests 5000 --profile 25   # cProfile one config

Three configurations, each measured in its own fresh subprocess (instrumentation is process-global):

- ``none``: a minimal Django project configured in code (one URL, ``/ping/``, whose view returns
  ``HttpResponse("ok")``; ``MIDDLEWARE = [CommonMiddleware]``; no database; ``DEBUG = False``), no tracing;
- ``otel``: plain OpenTelemetry: ``TracerProvider()`` + ``BatchSpanProcessor(exporter)`` as the global provider,
  the default propagators (tracecontext + baggage), ``DjangoInstrumentor().instrument()``;
- ``spanmeter``: ``spanmeter.instrumentation.bootstrap.instrument(exporter=exporter)``, which is what
  ``import spanmeter.instrumentation.auto`` does with the OTLP exporter replaced: BillingSafeSampler,
  AttributionSpanProcessor, SpanmeterSpanProcessor, the attribution-safe baggage propagator, the official Django
  instrumentation and SpanmeterMiddleware (plus the Celery instrumentation, which is off the request path).
  ``SPANMETER_TRUSTED_HEADERS=true``, so every request is attributed from its headers (span attributes, baggage
  and a new uuid job id per request): the full attribution work.

Every configuration gets the same requests, with ``X-Spanmeter-Account-Id: acme`` and
``X-Spanmeter-Plan-Code: growth``. They are driven in-process through Django's ``WSGIHandler`` (built after the
instrumentation, as a WSGI server would: copy of a pre-built environ, iterate the body, ``close()`` it), with no
HTTP server and no network in the way, so the figure is the full in-process cost per request and the harshest
honest measure of instrumentation overhead (a real server adds its own fixed cost to every configuration).

Both traced configurations export to the same no-op exporter (it counts spans and returns SUCCESS), so the
measure is the instrumentation's in-process cost (span creation, processors, the batch thread), not an
exporter's serialisation or the network. After a ``force_flush`` the child checks the spans (the first and last
of every batch): server spans, and in the spanmeter configuration carrying ``account_id=acme``,
``plan_code=growth`` and a job id; it fails loudly otherwise, and when a response is not 200. Every request makes
one server span: the ones not exported were lost to a full batch queue, and are reported (``spans_lost``).

Each child warms up (--warmup requests, 2,000), then measures --requests requests (20,000) and prints, as JSON on
its last stdout line, ``requests_per_second``, ``micros_per_request`` (wall) and ``cpu_micros_per_request``
(this process's CPU time, all threads: less sensitive to being descheduled), plus the machine's busy cores in
the window. The parent runs --rounds rounds (5) of the three children, rotating the order every round (the
machine has two noisy cores), and prints the median requests/s per configuration, the ratios of the medians
and spanmeter's overhead over plain OpenTelemetry (target: <= 5%).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CONFIGS = ("none", "otel", "spanmeter")
TARGET_OVERHEAD_PERCENT = 5.0
ACCOUNT_ID = "acme"
PLAN_CODE = "growth"
URL_PATH = "/ping/"

urlpatterns: list = []  # filled by _configure_django(); this module is the child's ROOT_URLCONF


def log(msg: str = "") -> None:
    print(msg, flush=True)


# -- child: one configuration in this process ---------------------------------------------------------------------


def ping(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse("ok")


def _configure_django() -> None:
    import django
    from django.conf import settings
    from django.urls import path

    urlpatterns.append(path(URL_PATH.strip("/") + "/", ping, name="ping"))
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-overhead-bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        DATABASES={},
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()


class CountingExporter(SpanExporter):
    """A no-op span exporter: counts spans and returns SUCCESS.

    It checks the first and the last span of every batch (kind, attribution), not every span, to stay cheap."""

    def __init__(self) -> None:
        self.spans_exported = 0
        self.batches = 0
        self.checked = 0
        self.attributed = 0
        self.not_server = 0
        self.first: Any = None
        self.last: Any = None

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        if spans:
            if self.first is None:
                self.first = spans[0]
            self.last = spans[-1]
            self.spans_exported += len(spans)
            self.batches += 1
            for span in (spans[0], spans[-1]):
                attributes = span.attributes or {}
                self.checked += 1
                self.not_server += span.kind.name != "SERVER"
                self.attributed += (
                    attributes.get("account_id") == ACCOUNT_ID
                    and attributes.get("plan_code") == PLAN_CODE
                    and bool(attributes.get("job_id"))
                )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _instrument(config: str, exporter: CountingExporter) -> Any:
    """Set tracing up for ``config``; returns the provider to flush (None for ``none``)."""
    if config == "none":
        return None
    if config == "otel":
        from opentelemetry import trace
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        DjangoInstrumentor().instrument()
        return provider
    if config == "spanmeter":
        from spanmeter.instrumentation import bootstrap

        state = bootstrap.instrument(exporter=exporter)
        if state is None or state.provider is None:
            raise SystemExit("django_overhead: spanmeter instrumentation did not set a tracer provider up")
        return state.provider
    raise SystemExit(f"django_overhead: unknown configuration {config!r}")


def _environ() -> dict:
    """What a WSGI server hands Django for ``GET /ping/`` with the attribution headers (copied per request)."""
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": URL_PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "52000",
        "HTTP_HOST": "testserver",
        "HTTP_USER_AGENT": "django-overhead-bench/1",
        "HTTP_ACCEPT": "*/*",
        "HTTP_X_SPANMETER_ACCOUNT_ID": ACCOUNT_ID,
        "HTTP_X_SPANMETER_PLAN_CODE": PLAN_CODE,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _driver(handler: Any) -> Callable[[int], int]:
    """``drive(n)`` sends n requests through ``handler`` like a WSGI server; returns how many were not 200."""
    template = _environ()
    not_ok = [0]

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        if not status.startswith("200"):
            not_ok[0] += 1
        return None

    def drive(n: int) -> int:
        not_ok[0] = 0
        for _ in range(n):
            environ = template.copy()
            environ["wsgi.input"] = io.BytesIO(b"")
            body = handler(environ, start_response)
            for _chunk in body:
                pass
            body.close()
        return not_ok[0]

    return drive


def _first_request(handler: Any) -> None:
    seen: dict = {}

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        seen["status"] = status
        return None

    environ = _environ()
    body = handler(environ, start_response)
    content = b"".join(body)
    body.close()
    if seen.get("status") != "200 OK" or content != b"ok":
        raise SystemExit(f"django_overhead: first request: status {seen.get('status')!r}, body {content[:200]!r}")


def _check_spans(config: str, exporter: CountingExporter, expected: int) -> None:
    """Fail loudly unless spans were exported and, for spanmeter, every checked one is attributed.

    Spans lost to a full batch queue are not a failure here: the caller reports them (``spans_lost``)."""
    if config == "none":
        return
    if not exporter.spans_exported or exporter.spans_exported > expected:
        raise SystemExit(f"django_overhead: {config}: {exporter.spans_exported} spans exported, expected {expected}")
    if exporter.not_server:
        raise SystemExit(f"django_overhead: {config}: {exporter.not_server} checked spans are not SERVER spans")
    if config == "spanmeter" and exporter.attributed != exporter.checked:
        raise SystemExit(
            f"django_overhead: spanmeter: only {exporter.attributed} of {exporter.checked} checked spans carry "
            f"account_id={ACCOUNT_ID}, plan_code={PLAN_CODE} and a job id: {dict(exporter.last.attributes or {})}"
        )
    if config == "otel" and exporter.attributed:
        raise SystemExit(f"django_overhead: plain OpenTelemetry spans carry account_id: {exporter.last.attributes}")
    if config == "spanmeter" and exporter.first.attributes["job_id"] == exporter.last.attributes["job_id"]:
        raise SystemExit("django_overhead: spanmeter gave two requests the same job id")


def _spanmeter_drops() -> dict:
    from spanmeter.instrumentation import metrics

    return metrics.snapshot()


def _machine_busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_child(config: str, requests: int, warmup: int, profile_top: int, burst: int) -> None:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "SPANMETER_")) or name == "DJANGO_SETTINGS_MODULE":
            del os.environ[name]
    os.environ["SPANMETER_TRUSTED_HEADERS"] = "true"

    _configure_django()
    exporter = CountingExporter()
    provider = _instrument(config, exporter)
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()  # builds the middleware chain: after the instrumentation
    _first_request(handler)
    drive = _driver(handler)
    if drive(warmup):
        raise SystemExit(f"django_overhead: {config}: non-200 responses during warm-up")

    if profile_top:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        not_ok = drive(requests)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        log(f"cProfile, {config}, {requests:,} requests (tottime; divide by {requests:,} for µs per request):")
        stats.sort_stats("tottime").print_stats(profile_top)
        stats.sort_stats("cumulative").print_stats(profile_top)
        if not_ok:
            raise SystemExit(f"django_overhead: {config}: {not_ok} non-200 responses")
        return

    seconds = cpu_seconds = busy_seconds = 0.0
    measured = 0

    def measure(n: int) -> None:
        nonlocal seconds, cpu_seconds, busy_seconds, measured
        busy0 = _machine_busy_seconds()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        not_ok = drive(n)
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - cpu0
        busy_seconds += _machine_busy_seconds() - busy0
        measured += n
        if not_ok:
            raise SystemExit(f"django_overhead: {config}: {not_ok} of {n} responses were not 200")

    if burst:  # the parent says when: "run N" (reply "ok"), then "finish"
        print("ready", flush=True)
        for line in sys.stdin:
            command = line.split()
            if command and command[0] == "run":
                measure(int(command[1]))
                print("ok", flush=True)
            elif command == ["finish"]:
                break
    else:
        measure(requests)

    spans_expected = 1 + warmup + measured
    if provider is not None and not provider.force_flush(30_000):
        raise SystemExit(f"django_overhead: {config}: force_flush timed out")
    _check_spans(config, exporter, spans_expected)
    result = {
        "config": config,
        "pid": os.getpid(),
        "requests": measured,
        "warmup": warmup,
        "seconds": seconds,
        "requests_per_second": measured / seconds,
        "micros_per_request": seconds / measured * 1e6,
        "cpu_micros_per_request": cpu_seconds / measured * 1e6,
        "process_cores": cpu_seconds / seconds,
        "machine_busy_cores": busy_seconds / seconds,
        "outside_cores": max(0.0, (busy_seconds - cpu_seconds) / seconds),
        "spans_exported": exporter.spans_exported if provider is not None else 0,
        "spans_expected": spans_expected if provider is not None else 0,
        "spans_lost": spans_expected - exporter.spans_exported if provider is not None else 0,
        "spanmeter_drop_counters": _spanmeter_drops() if config == "spanmeter" else {},
        "middleware": list(settings.MIDDLEWARE),
        "sample_span_attributes": dict(exporter.last.attributes or {}) if exporter.last is not None else {},
    }
    print(json.dumps(result), flush=True)


# -- parent: interleaved rounds, medians, verdict ------------------------------------------------------------------


def _child_command(config: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        config,
        "--requests",
        str(args.requests),
        "--warmup",
        str(args.warmup),
        *(["--burst", str(args.burst)] if args.burst else []),
    ]


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}


def _child_result(config: str, returncode: int, stdout: str, stderr: str) -> dict:
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines:
        raise SystemExit(
            f"django_overhead: child {config} exited with {returncode}\n"
            f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
        )
    result = json.loads(lines[-1])
    result["queue_full_warnings"] = stderr.count("Queue full, dropping")  # the SDK's log line for a lost span
    return result


def run_config(config: str, args: argparse.Namespace) -> dict:
    """One configuration, measured in one go in its own fresh process."""
    proc = subprocess.run(
        _child_command(config, args), env=_child_env(), cwd=str(REPO_DIR), capture_output=True, text=True
    )
    return _child_result(config, proc.returncode, proc.stdout, proc.stderr)


def run_round_in_bursts(order: tuple[str, ...], args: argparse.Namespace) -> dict[str, dict]:
    """--burst: the three fresh processes of a round take turns, --burst requests at a time (order rotating)."""
    import tempfile

    children: dict[str, tuple[subprocess.Popen, Any]] = {}
    for config in order:
        stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read and closed below)
        proc = subprocess.Popen(
            _child_command(config, args),
            env=_child_env(),
            cwd=str(REPO_DIR),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        children[config] = (proc, stderr)
    for config, (proc, stderr) in children.items():
        if proc.stdout.readline().strip() != "ready":
            proc.wait()
            stderr.seek(0)
            raise SystemExit(f"django_overhead: child {config} did not start:\n{stderr.read()[-3000:]}")
    left = args.requests
    turn = 0
    while left > 0:
        n = min(args.burst, left)
        for config in order[turn % len(order) :] + order[: turn % len(order)]:
            proc, _ = children[config]
            proc.stdin.write(f"run {n}\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "ok":
                break  # it failed: its exit status and stderr are reported below
        left -= n
        turn += 1
    results = {}
    for config, (proc, stderr) in children.items():
        stdout, _ = proc.communicate("finish\n")
        stderr.seek(0)
        results[config] = _child_result(config, proc.returncode, stdout, stderr.read())
        stderr.close()
    return results


def _versions() -> str:
    from importlib.metadata import version

    names = ("Django", "opentelemetry-sdk", "opentelemetry-instrumentation-django")
    return ", ".join(f"{n} {version(n)}" for n in names)


def _code_state() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO_DIR, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "instrumentation", "spanmeter")
    return f"code at {commit}" + (" + uncommitted changes in instrumentation/ or spanmeter/" if dirty else "")


def run_parent(args: argparse.Namespace) -> None:
    started = datetime.now(UTC)
    log(
        f"Django instrumentation overhead: {args.rounds} rounds x {args.requests:,} requests per configuration "
        f"(after {args.warmup:,} warm-up requests), in-process through WSGIHandler, GET {URL_PATH} -> 'ok'"
    )
    log(
        f"  Python {platform.python_version()}, {_versions()}; {_code_state()}; "
        f"{os.cpu_count()} cores; started {started:%Y-%m-%d %H:%M:%S} UTC"
    )
    log(
        "  exporter (otel, spanmeter): no-op, counts spans and returns SUCCESS: in-process instrumentation cost only, "
        "no serialisation, no network"
    )
    if args.burst:
        log(
            f"  --burst {args.burst:,}: in each round the three fresh processes take turns, {args.burst:,} requests "
            "at a time (order rotating every turn)"
        )
    log()
    log(
        f"{'round':>5}  {'config':<10} {'requests/s':>12} {'µs/request':>11} {'CPU µs/req':>11} "
        f"{'spans exported':>15} {'lost':>6}  {'machine busy':>12} {'outside load':>12}"
    )
    results: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    per_round: list[dict[str, dict]] = []
    for r in range(args.rounds):
        order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
        this_round: dict[str, dict] = {}
        by_config = run_round_in_bursts(order, args) if args.burst else {c: run_config(c, args) for c in order}
        for config in order:
            res = by_config[config]
            results[config].append(res)
            this_round[config] = res
            spans, lost = (f"{res['spans_exported']:,}", f"{res['spans_lost']:,}") if config != "none" else ("-", "-")
            log(
                f"{r + 1:>5}  {config:<10} {res['requests_per_second']:>12,.0f} {res['micros_per_request']:>11.1f} "
                f"{res['cpu_micros_per_request']:>11.1f} {spans:>15} {lost:>6}  {res['machine_busy_cores']:>8.2f} cores "
                f"{res['outside_cores']:>6.2f} cores"
            )
        per_round.append(this_round)

    med = {c: statistics.median(x["requests_per_second"] for x in results[c]) for c in CONFIGS}
    med_us = {c: 1e6 / med[c] for c in CONFIGS}
    med_cpu = {c: statistics.median(x["cpu_micros_per_request"] for x in results[c]) for c in CONFIGS}
    spread = {
        c: (min(x["requests_per_second"] for x in results[c]), max(x["requests_per_second"] for x in results[c]))
        for c in CONFIGS
    }

    log()
    log("=" * 100)
    log(f"SUMMARY (medians of {args.rounds} rounds, {args.requests:,} requests each)")
    log("=" * 100)
    log(f"{'config':<42} {'requests/s':>12} {'µs/request':>11} {'CPU µs/req':>11}   {'min .. max requests/s':>23}")
    names = {
        "none": "none (Django, no tracing)",
        "otel": "otel (plain OpenTelemetry Django)",
        "spanmeter": "spanmeter (bootstrap.instrument)",
    }
    for c in CONFIGS:
        lo, hi = spread[c]
        log(f"{names[c]:<42} {med[c]:>12,.0f} {med_us[c]:>11.1f} {med_cpu[c]:>11.1f}   {lo:>10,.0f} .. {hi:>9,.0f}")
    log("-" * 100)
    otel_cost = med_us["otel"] - med_us["none"]
    spanmeter_cost = med_us["spanmeter"] - med_us["none"]
    overhead = med["otel"] / med["spanmeter"] - 1  # (1/s - 1/o) / (1/o)
    overhead_us = med_us["spanmeter"] - med_us["otel"]
    log(
        f"{'otel / none (requests/s)':<42} {med['otel'] / med['none']:>12.3f}   tracing costs {otel_cost:.1f} µs/request"
    )
    log(
        f"{'spanmeter / none (requests/s)':<42} {med['spanmeter'] / med['none']:>12.3f}   "
        f"tracing costs {spanmeter_cost:.1f} µs/request"
    )
    log(f"{'spanmeter / otel (requests/s)':<42} {med['spanmeter'] / med['otel']:>12.3f}")
    log(
        f"{'spanmeter overhead over plain OTel':<42} {overhead * 100:>11.1f}%   "
        f"{overhead_us:+.1f} µs/request (CPU: {med_cpu['spanmeter'] - med_cpu['otel']:+.1f} µs/request)"
    )
    paired = [rd["otel"]["requests_per_second"] / rd["spanmeter"]["requests_per_second"] - 1 for rd in per_round]
    log(
        f"    info: same-round overhead, per round: {', '.join(f'{p * 100:.1f}%' for p in paired)}; "
        f"median {statistics.median(paired) * 100:.1f}%"
    )
    for c in ("otel", "spanmeter"):
        lost = sum(x["spans_lost"] for x in results[c])
        if lost:
            expected = sum(x["spans_expected"] for x in results[c])
            if c == "spanmeter":
                counted = sum(x["spanmeter_drop_counters"].get("queue_full", 0) for x in results[c])
                source = f'spanmeter_sdk_spans_dropped_total{{reason="queue_full"}}: {counted:,.0f}'
            else:
                source = f"SDK 'Queue full' log lines: {sum(x['queue_full_warnings'] for x in results[c]):,}"
            runs = sum(1 for x in results[c] if x["spans_lost"])
            log(
                f"    WARNING: {c}: {lost:,} of {expected:,} spans lost to a full batch queue in {runs} of "
                f"{len(results[c])} runs ({source}): the export thread fell behind"
            )
    outside = max(x["outside_cores"] for c in CONFIGS for x in results[c])
    log(f"    info: most outside load in any window: {outside:.2f} cores (of {os.cpu_count()})")
    verdict = "PASS" if overhead * 100 <= TARGET_OVERHEAD_PERCENT else "MISS"
    log(
        f"verdict: spanmeter overhead over plain OpenTelemetry {overhead * 100:.1f}% "
        f"(target <= {TARGET_OVERHEAD_PERCENT:.0f}%): {verdict}"
    )
    log(f"finished in {(datetime.now(UTC) - started).total_seconds():.0f} s")


def run_entitlements(calls: int) -> None:
    """``--entitlements``: the cost of a cached ``spanmeter.instrumentation.entitlements.check()``, each call timed
    on its own (``perf_counter_ns`` around it; an empty timed call is measured and printed beside it). The cache
    is filled from a local stub of the entitlements document (the cached path never touches the network)."""
    import statistics

    from spanmeter.instrumentation import entitlements as E

    client = E.Entitlements("http://127.0.0.1:9", None, ttl_seconds=3600)
    decision = E.Decision(True, "acme", "worker_seconds", "cache", "soft limit 3600 s, used 2", "soft")
    now = time.monotonic()
    client._cache["acme"] = E._Entry(now + 3600, now + 7200, {"worker_seconds": decision}, {"worker_seconds": "open"})
    check, clock = client.check, time.perf_counter_ns
    for _ in range(10_000):
        check("acme", "worker_seconds")
    spent, empty = [], []
    for _ in range(calls):
        t0 = clock()
        check("acme", "worker_seconds")
        t1 = clock()
        t2 = clock()
        empty.append(t2 - t1)
        spent.append(t1 - t0)

    def p(values: list[int], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] / 1000

    print(f"cached entitlements.check(), {calls:,} calls each timed: median {statistics.median(spent) / 1000:.3f} us, "
          f"p99 {p(spent, 0.99):.3f} us, max {max(spent) / 1000:.1f} us (an empty timed call: median "
          f"{statistics.median(empty) / 1000:.3f} us, p99 {p(empty, 0.99):.3f} us)")  # fmt: skip
    verdict = "PASS" if statistics.median(spent) <= 2000 and p(spent, 0.99) <= 5 else "MISS"
    print(f"target: median <= 2 us, p99 <= 5 us: {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the three configurations")
    parser.add_argument("--requests", type=int, default=20_000, help="measured requests per configuration and round")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up requests before measuring (not counted)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds x 5,000 requests")
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="N",
        help="interleave finer: in each round the three processes take turns, N requests at a time (0: one go)",
    )
    parser.add_argument(
        "--entitlements", type=int, default=0, metavar="CALLS",
        help="instead: time CALLS cached entitlements.check() calls one by one (issue 7/7's budget)",
    )  # fmt: skip
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="with --child: run the measured requests under cProfile and print the TOP functions",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 2, 5_000
    if args.entitlements:
        run_entitlements(args.entitlements)
    elif args.child:
        run_child(args.child, args.requests, args.warmup, args.profile, args.burst)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
