"""OTLP/gRPC load generator: pre-encoded ExportTraceServiceRequest templates, patched at send time.

The official Python exporter spends ~50 µs of client CPU per span and cannot load a receiver, so each client
process builds a few request templates once (protobuf objects, ~300 B/span), records the byte offsets of
every span's trace_id, span_id, start and end time (the ids are ``bytes`` fields of fixed length and the
times are ``fixed64``), and then, for every request it sends, patches those 40 bytes per span with numpy in
one fancy-index assignment (~0.1 ms per 512-span request):

- trace_id = run nonce (6 random bytes) ‖ client ‖ phase ‖ trace counter (8 spans per trace), span_id =
  a per-client counter: unique across clients, phases and runs, so every billable span is a new ledger row;
- end time = ``time.time_ns()`` when the request is built, right before it is sent (minus a few ms of
  per-span jitter baked in the template), start = end - duration: the pipeline lag the receiver reports is
  commit time minus send time.

The raw bytes go through a generic unary call (no serializer) to
``/opentelemetry.proto.collector.trace.v1.TraceService/Export``, with ``inflight`` requests outstanding
per process (closed loop). Only requests that complete inside the measurement window [t0, t1) are counted.
"""

from __future__ import annotations

import os
import random
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from _ledger import TASKS

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ACCOUNTS = 2000
PLANS = ("starter", "growth", "scale", "platform")
TEMPLATES_PER_CLIENT = 8
SPANS_PER_TRACE = 8


def account_id(number: int) -> str:
    return f"acct_{number:05d}"


# -- templates ----------------------------------------------------------------------------------------
def _kv(key: str, value: object):
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _sentinels(i: int) -> tuple[bytes, bytes, int, int]:
    trace = b"\xfa\xce\xb0\x0c" + struct.pack(">I", i) + b"\xde\xad\xbe\xef" + struct.pack(">I", i ^ 0x5A5A5A5A)
    span = b"\xc0\xff" + struct.pack(">I", i) + b"\xee\xe1"
    start = 0x5A5A000000000000 | (i << 16) | 0xA5A5
    end = 0x3C3C000000000000 | (i << 16) | 0xC3C3
    return trace, span, start, end


@dataclass
class Template:
    body: bytes
    index: np.ndarray  # (n*40,) byte offsets: trace_id[16] span_id[8] start[8] end[8] per span
    end_jitter_ns: np.ndarray  # (n,) int64
    duration_ns: np.ndarray  # (n,) int64
    spans: int
    billable: int


def build_template(spans: int, billable_every: int, seed: int) -> Template:
    """One request of ``spans`` spans; every ``billable_every``-th span (1 = all) is a billable Celery run."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    rng = random.Random(seed)
    service = f"svc-{seed % 23:02d}"
    resource = Resource(
        attributes=[
            _kv("service.name", service),
            _kv("service.version", "2026.11.3"),
            _kv("deployment.environment.name", "production"),
            _kv("host.name", f"ip-10-0-{seed % 200}-17"),
            _kv("process.pid", 4000 + seed % 1000),
            _kv("telemetry.sdk.name", "opentelemetry"),
            _kv("telemetry.sdk.language", "python"),
            _kv("telemetry.sdk.version", "1.38.0"),
        ]
    )
    scope = InstrumentationScope(name="opentelemetry.instrumentation.celery", version="0.59b0")
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.CopyFrom(ResourceSpans(resource=resource))
    ss = rs.scope_spans.add()
    ss.CopyFrom(ScopeSpans(scope=scope))
    durations, jitters, billable = [], [], 0
    for i in range(spans):
        trace, span_id, start, end = _sentinels(i)
        parent = b"\x1e" + struct.pack(">I", rng.getrandbits(32)) + b"\x00\x01\x02"
        is_billable = i % billable_every == 0
        if is_billable:
            billable += 1
            task = rng.choice(TASKS)
            acct = rng.randrange(ACCOUNTS)
            attrs = [
                _kv("celery.action", "run"),
                _kv("celery.task_name", task),
                _kv("celery.state", "SUCCESS"),
                _kv("messaging.system", "celery"),
                _kv("messaging.destination.name", "celery"),
                _kv("account_id", account_id(acct)),
                _kv("job_id", f"job-{rng.getrandbits(48):012x}"),
                _kv("plan_code", PLANS[acct % 4]),
            ]
            sp = Span(
                trace_id=trace,
                span_id=span_id,
                parent_span_id=parent,
                name=f"run/{task}",
                kind=Span.SpanKind.SPAN_KIND_CONSUMER,
                start_time_unix_nano=start,
                end_time_unix_nano=end,
                attributes=attrs,
            )
            durations.append(rng.randrange(50_000_000, 30_000_000_000))
        else:
            variant = i % 3
            if variant == 0:  # HTTP client call
                attrs = [
                    _kv("http.request.method", "GET"),
                    _kv("url.full", f"https://api.internal.example/v1/items/{rng.randrange(10**6)}"),
                    _kv("server.address", "api.internal.example"),
                    _kv("server.port", 443),
                    _kv("http.response.status_code", 200),
                    _kv("network.protocol.version", "1.1"),
                ]
                sp = Span(
                    trace_id=trace,
                    span_id=span_id,
                    parent_span_id=parent,
                    name="GET",
                    kind=Span.SpanKind.SPAN_KIND_CLIENT,
                    start_time_unix_nano=start,
                    end_time_unix_nano=end,
                    attributes=attrs,
                )
            elif variant == 1:  # database call
                attrs = [
                    _kv("db.system.name", "postgresql"),
                    _kv("db.namespace", "app"),
                    _kv("db.operation.name", "SELECT"),
                    _kv("db.query.text", "SELECT id, name, state FROM items WHERE id = $1"),
                    _kv("server.address", "db.internal.example"),
                    _kv("server.port", 5432),
                ]
                sp = Span(
                    trace_id=trace,
                    span_id=span_id,
                    parent_span_id=parent,
                    name="SELECT app.items",
                    kind=Span.SpanKind.SPAN_KIND_CLIENT,
                    start_time_unix_nano=start,
                    end_time_unix_nano=end,
                    attributes=attrs,
                )
            else:  # internal
                attrs = [
                    _kv("code.function.name", "render_template"),
                    _kv("code.file.path", "app/views/report.py"),
                    _kv("code.line.number", 118),
                    _kv("thread.id", 140234),
                    _kv("template.name", "report.html"),
                ]
                sp = Span(
                    trace_id=trace,
                    span_id=span_id,
                    parent_span_id=parent,
                    name="render_template",
                    kind=Span.SpanKind.SPAN_KIND_INTERNAL,
                    start_time_unix_nano=start,
                    end_time_unix_nano=end,
                    attributes=attrs,
                )
            durations.append(rng.randrange(1_000_000, 200_000_000))
        jitters.append(rng.randrange(0, 5_000_000))
        ss.spans.append(sp)
    body = request.SerializeToString()
    # The spans are serialized in order, each with its trace id, span id, start and end in that order: span
    # i's sentinels are searched from the end of span i-1's, and each must occur exactly once in that stretch
    # (linear in the body; a search of the whole body per sentinel took 40 s for an 8,192-span template).
    offsets = np.empty((spans, 4), dtype=np.int64)
    region = 0
    for i in range(spans):
        trace, span_id, start, end = _sentinels(i)
        needles = (trace, span_id, struct.pack("<Q", start), struct.pack("<Q", end))
        cursor = region
        for col, needle in enumerate(needles):
            pos = body.find(needle, cursor)
            if pos < 0:
                raise RuntimeError(f"template sentinel {col} of span {i} not found")
            offsets[i, col] = cursor = pos
        stretch_end = offsets[i, 3] + 8
        for col, needle in enumerate(needles):
            if body.count(needle, region, stretch_end) != 1:
                raise RuntimeError(f"template sentinel {col} of span {i} not found exactly once")
        region = stretch_end
    index = np.concatenate(
        [
            offsets[:, 0:1] + np.arange(16),
            offsets[:, 1:2] + np.arange(8),
            offsets[:, 2:3] + np.arange(8),
            offsets[:, 3:4] + np.arange(8),
        ],
        axis=1,
    ).reshape(-1)
    return Template(
        body=body,
        index=index,
        end_jitter_ns=np.array(jitters, dtype=np.int64),
        duration_ns=np.array(durations, dtype=np.int64),
        spans=spans,
        billable=billable,
    )


class RequestFactory:
    """Patches templates in turn: fresh ids and end times = now for every request."""

    def __init__(self, templates: list[Template], nonce6: bytes, client: int, phase: int) -> None:
        self.templates = templates
        self.prefix = np.frombuffer(nonce6 + bytes([client & 0xFF, phase & 0xFF]), dtype=np.uint8)
        self.n = templates[0].spans
        self.trace_seq = 1
        self.span_seq = 1
        self.turn = 0
        self._ar = np.arange(self.n, dtype=np.uint64)
        self._vals = np.empty((self.n, 40), dtype=np.uint8)
        self._vals[:, 0:8] = self.prefix

    def next(self) -> tuple[bytes, int, int]:
        t = self.templates[self.turn % len(self.templates)]
        self.turn += 1
        vals = self._vals
        traces = (np.uint64(self.trace_seq) + self._ar // SPANS_PER_TRACE).astype(">u8")
        vals[:, 8:16] = traces.view(np.uint8).reshape(-1, 8)
        spans = (np.uint64(self.span_seq) + self._ar).astype(">u8")
        vals[:, 16:24] = spans.view(np.uint8).reshape(-1, 8)
        self.trace_seq += (self.n + SPANS_PER_TRACE - 1) // SPANS_PER_TRACE
        self.span_seq += self.n
        end = np.int64(time.time_ns()) - t.end_jitter_ns
        vals[:, 24:32] = (end - t.duration_ns).astype("<i8").view(np.uint8).reshape(-1, 8)
        vals[:, 32:40] = end.astype("<i8").view(np.uint8).reshape(-1, 8)
        buf = np.frombuffer(bytearray(t.body), dtype=np.uint8)
        buf[t.index] = vals.reshape(-1)
        return buf.tobytes(), t.spans, t.billable


# -- client process -----------------------------------------------------------------------------------
@dataclass
class ClientResult:
    client: int
    ok_requests: int = 0
    ok_spans: int = 0
    ok_billable: int = 0
    sent_requests: int = 0
    codes: Counter = field(default_factory=Counter)
    latencies: list = field(default_factory=list)
    bytes_per_span: float = 0.0
    error: str | None = None


def client_main(conf: dict, pipe) -> None:
    """Process entry: build templates, connect, report ready, wait for (t_start, t0, t1), send, report."""
    try:
        import grpc

        templates = [
            build_template(conf["spans"], conf["billable_every"], seed=conf["client"] * 100 + k + conf["phase"] * 7)
            for k in range(TEMPLATES_PER_CLIENT)
        ]
        factory = RequestFactory(templates, conf["nonce"], conf["client"], conf["phase"])
        # one TCP connection per channel (no shared subchannel pool): `serve --processes N` spreads connections
        channels = [
            grpc.insecure_channel(
                conf["target"],
                options=[
                    ("grpc.max_send_message_length", 64 * 1024 * 1024),
                    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
            for _ in range(conf.get("channels", 1))
        ]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=15)
        calls = [c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in channels]
        result = ClientResult(
            client=conf["client"], bytes_per_span=sum(len(t.body) for t in templates) / (len(templates) * conf["spans"])
        )
        pipe.send(("ready", os.getpid()))
        t_start, t0, t1 = pipe.recv()
    except Exception as exc:  # report instead of hanging the parent
        pipe.send(("error", repr(exc)))
        return

    inflight = threading.Semaphore(conf["inflight"])
    lock = threading.Lock()

    def done(fut, sent_at: float, spans: int, billable: int) -> None:
        now = time.time()
        code = fut.code()
        name = code.name if code is not None else "UNKNOWN"
        with lock:
            if t0 <= now < t1:
                result.codes[name] += 1
                if name == "OK":
                    result.ok_requests += 1
                    result.ok_spans += spans
                    result.ok_billable += billable
                    result.latencies.append(now - sent_at)
        inflight.release()

    while time.time() < t_start:
        time.sleep(0.005)
    sent = 0
    while True:
        inflight.acquire()
        if time.time() >= t1:
            inflight.release()
            break
        body, spans, billable = factory.next()
        sent_at = time.time()
        fut = calls[sent % len(calls)].future(body, timeout=conf.get("timeout", 30.0))
        sent += 1
        result.sent_requests += 1
        fut.add_done_callback(lambda f, s=sent_at, n=spans, b=billable: done(f, s, n, b))
    for _ in range(conf["inflight"]):  # drain
        inflight.acquire(timeout=conf.get("timeout", 30.0))
    for channel in channels:
        channel.close()
    pipe.send(("result", result))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
