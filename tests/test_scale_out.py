"""Three `spanmeter serve` receivers on one ledger behind routing by trace id, one SIGKILLed mid-stream and
restarted on its port: every span is acknowledged in the end and the ledger holds each billable span exactly
once.

No Collector binary can be had here, so the test is the gateway of deploy/otelcol-gateway-static.yaml: app
batches are split by trace id over the Collector's consistent hash ring (bench/_trace_routing.py), each part
goes to its replica gzip-compressed and is retried in place until that replica answers OK (the static
resolver: a replica's traces wait for it), and a batch counts as acknowledged once every part of it is."""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from support import Collector, ledger, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _trace_routing import HashRing, split_request

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ACCOUNT = "acct-scale-out"
RECEIVERS = 3
BATCHES = 240  # app batches arriving at the gateway
TRACES_PER_BATCH = 16
SPANS_PER_TRACE = 4
CONSUMERS = 4  # the gateway's sending_queue.num_consumers
PACE_SECONDS = 0.04  # between one consumer's batches: the stream lasts long enough to be cut in the middle
MS = 1_000_000


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _batches(batches: int = BATCHES) -> tuple[list[bytes], dict[tuple[str, str], Decimal]]:
    """App batches of billable Celery runs (random trace ids) and the worker_seconds each span must bill:
    its duration rounded up to 100 ms."""
    end = time.time_ns() - 60 * 10**9
    expected: dict[tuple[str, str], Decimal] = {}
    bodies = []
    for b in range(batches):
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add(resource=Resource(attributes=[_kv("service.name", "scale-out-worker")]))
        ss = rs.scope_spans.add(scope=InstrumentationScope(name="opentelemetry.instrumentation.celery"))
        for _ in range(TRACES_PER_BATCH):
            trace_id = os.urandom(16)
            for _ in range(SPANS_PER_TRACE):
                span_id = os.urandom(8)
                duration = (len(expected) % 97 + 1) * 37 * MS
                ss.spans.append(
                    Span(
                        trace_id=trace_id,
                        span_id=span_id,
                        name="run/tasks.render",
                        kind=Span.SpanKind.SPAN_KIND_CONSUMER,
                        start_time_unix_nano=end - duration,
                        end_time_unix_nano=end,
                        attributes=[
                            _kv("celery.action", "run"),
                            _kv("celery.task_name", "tasks.render"),
                            _kv("account_id", ACCOUNT),
                            _kv("job_id", f"job-{b}"),
                        ],
                    )
                )
                tenths = (Decimal(duration) / Decimal(10**8)).to_integral_value(ROUND_CEILING)
                expected[(trace_id.hex(), span_id.hex())] = tenths / 10
        bodies.append(request.SerializeToString())
    return bodies, expected


class Gateway:
    """``CONSUMERS`` threads taking app batches from a queue: split by trace id, each part retried in place
    until its replica answers OK; what every attempt was answered is recorded per endpoint."""

    def __init__(self, ring: HashRing, batches: list[bytes]) -> None:
        self.ring = ring
        self.pending: queue.Queue[bytes] = queue.Queue()
        for body in batches:
            self.pending.put(body)
        self.lock = threading.Lock()
        self.acknowledged_batches = 0
        self.acknowledged_spans = 0
        self.routed_spans = dict.fromkeys(ring.endpoints, 0)
        self.answers: list[tuple[float, str, grpc.StatusCode]] = []  # (when, endpoint, code)
        self.threads = [threading.Thread(target=self._consume, daemon=True) for _ in range(CONSUMERS)]

    def start(self) -> Gateway:
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "the gateway did not deliver every batch in time"

    def _consume(self) -> None:
        channels = {e: grpc.insecure_channel(e, compression=grpc.Compression.Gzip) for e in self.ring.endpoints}
        calls = {
            e: c.unary_unary(EXPORT, request_serializer=None, response_deserializer=None) for e, c in channels.items()
        }
        try:
            while True:
                try:
                    body = self.pending.get_nowait()
                except queue.Empty:
                    return
                spans = 0
                for endpoint, part in split_request(body, self.ring).items():
                    spans += self._deliver(calls[endpoint], endpoint, part)
                with self.lock:
                    self.acknowledged_batches += 1
                    self.acknowledged_spans += spans
                time.sleep(PACE_SECONDS)
        finally:
            for channel in channels.values():
                channel.close()

    def _deliver(self, call, endpoint: str, part: bytes) -> int:
        request = ExportTraceServiceRequest.FromString(part)
        spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        backoff = 0.1
        while True:
            try:
                call(part, timeout=30)  # the gateway's per-attempt timeout, above spanmeter's write timeout
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
            with self.lock:
                self.answers.append((time.monotonic(), endpoint, code))
                if code == grpc.StatusCode.OK:
                    self.routed_spans[endpoint] += spans
            if code == grpc.StatusCode.OK:
                return spans
            time.sleep(backoff)
            backoff = min(1.0, backoff * 2)


def test_the_ring_routes_as_the_collectors_loadbalancing_exporter():
    """The split is the exporter's own: its ring and lookups, from consistent_hashing_test.go's expectations."""
    ring = HashRing(["endpoint-1", "endpoint-2"], positions_per_endpoint=5)
    assert ring.items == [
        (1401, "endpoint-1"),
        (4175, "endpoint-1"),
        (10240, "endpoint-2"),
        (14133, "endpoint-1"),
        (15002, "endpoint-2"),
        (17836, "endpoint-1"),
        (21263, "endpoint-2"),
        (21667, "endpoint-1"),
        (26806, "endpoint-2"),
        (27020, "endpoint-2"),
    ]
    duplicate = HashRing(["endpoint-1", "endpoint-1"], positions_per_endpoint=5)  # no position twice
    assert duplicate.items == [item for item in ring.items if item[1] == "endpoint-1"]
    ring = HashRing(["endpoint-1", "endpoint-2"])
    assert len(ring.items) == 200
    for trace_id, endpoint in [
        (bytes([1, 2, 0, 0]), "endpoint-1"),
        (bytes([128, 128, 0, 0]), "endpoint-2"),
        (b"ad-service-7", "endpoint-1"),
        (b"get-recommendations-1", "endpoint-2"),
    ]:
        assert ring.endpoint_for(trace_id) == endpoint, trace_id
    # a split keeps every span once, with its resource and scope, and each trace whole on its endpoint
    bodies, expected = _batches(batches=2)
    ring = HashRing(["a:4317", "b:4317", "c:4317"])
    seen = []
    for endpoint, part in split_request(bodies[0], ring).items():
        [rs] = ExportTraceServiceRequest.FromString(part).resource_spans
        assert rs.resource.attributes[0].value.string_value == "scale-out-worker"
        [ss] = rs.scope_spans
        assert ss.scope.name == "opentelemetry.instrumentation.celery"
        assert {ring.endpoint_for(span.trace_id) for span in ss.spans} == {endpoint}
        seen += [(span.trace_id.hex(), span.span_id.hex()) for span in ss.spans]
    assert sorted(seen) == sorted(list(expected)[: TRACES_PER_BATCH * SPANS_PER_TRACE])


def _start_all(receivers: list[Collector]) -> None:
    errors: list[BaseException] = []

    def start(receiver: Collector) -> None:
        try:
            receiver.start()
        except BaseException as exc:  # reported below, with the receiver's output
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in receivers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def test_three_receivers_on_one_ledger_a_sigkill_mid_stream_and_the_ledger_is_exact(fresh_db):
    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database

    migrate.upgrade(resolve_database(fresh_db, Path(".")))  # once, before three receivers start together
    env = {"SPANMETER_LEDGER_WRITE_TIMEOUT_SECONDS": "3", "SPANMETER_LOG_LEVEL": "WARNING"}
    receivers = [Collector(fresh_db, env=env) for _ in range(RECEIVERS)]
    restarted: Collector | None = None
    try:
        _start_all(receivers)  # each on its own OTLP port and its own metrics port
        endpoints = [r.endpoint for r in receivers]
        assert len({r.metrics_address for r in receivers}) == RECEIVERS
        bodies, expected = _batches()
        gateway = Gateway(HashRing(endpoints), bodies).start()

        wait_until(lambda: gateway.acknowledged_batches >= BATCHES // 3, timeout=60, what="a third of the stream")
        victim = receivers[1]
        killed_at, acknowledged_at_kill = time.monotonic(), gateway.acknowledged_batches
        victim.proc.kill()  # SIGKILL, mid-stream: whatever it had in flight is cut off
        victim.proc.wait(10)
        time.sleep(1.0)
        restarted = Collector(fresh_db, env=env, otlp_endpoint=victim.endpoint).start()  # the same port
        gateway.join(timeout=120)

        codes = {}
        for _, endpoint, code in gateway.answers:
            codes[(endpoint, code.name)] = codes.get((endpoint, code.name), 0) + 1
        print(f"\nrouted spans {gateway.routed_spans}; killed after {acknowledged_at_kill}/{BATCHES} batches; {codes}")
        # the kill landed mid-stream, was felt by the gateway, and the restarted receiver took traffic again
        assert acknowledged_at_kill < BATCHES
        refused = [a for a in gateway.answers if a[1] == victim.endpoint and a[2] != grpc.StatusCode.OK]
        assert refused and all(when >= killed_at for when, _, _ in refused), refused[:5]
        assert any(
            a[0] > refused[-1][0] and a[2] == grpc.StatusCode.OK for a in gateway.answers if a[1] == victim.endpoint
        )
        # every span acknowledged in the end, each replica had its share of the traces
        assert gateway.acknowledged_batches == BATCHES
        assert gateway.acknowledged_spans == len(expected) == BATCHES * TRACES_PER_BATCH * SPANS_PER_TRACE
        assert all(spans > 0 for spans in gateway.routed_spans.values()), gateway.routed_spans

        # the ledger: one row per billable span, none missing, none twice, every quantity as metered
        rows = ledger(
            fresh_db, "SELECT trace_id, span_id, quantity FROM usage_events WHERE account_id = %s", (ACCOUNT,)
        )
        stored = {(trace_id, span_id): quantity for trace_id, span_id, quantity in rows}
        assert len(rows) == len(stored) == len(expected)
        assert stored == expected
        assert sum(stored.values()) == sum(expected.values())
        assert ledger(fresh_db, "SELECT count(*) FROM rejected_spans") == [(0,)]

        # each replica reports its own metrics: the two that ran throughout received at least their share
        # (more only if an attempt timed out and was sent again)
        for receiver in (receivers[0], receivers[2]):
            received = receiver.metrics()["spanmeter_spans_received_total"]
            assert received >= gateway.routed_spans[receiver.endpoint] > 0
        assert restarted.metrics()["spanmeter_spans_received_total"] > 0
    finally:
        for receiver in [*receivers, *([restarted] if restarted else [])]:
            receiver.kill()
