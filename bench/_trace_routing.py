"""Routing by trace id as the Collector's ``loadbalancing`` exporter does it, for load generators without one.

No Collector binary can be had here, so the 3-receiver test and bench/receivers_bench.py split their load the
way the gateway of deploy/otelcol-gateway.yaml would: a consistent hash ring (opentelemetry-collector-contrib
``exporter/loadbalancingexporter/consistent_hashing.go``) with 100 positions per endpoint on 36,000, each at
``crc32(endpoint ‖ byte(i)) mod 36000`` (a taken position is skipped), and a trace at ``crc32(trace_id) mod
36000`` goes to the endpoint at the next position clockwise. A request is split per trace and the traces of one
endpoint travel together, resource and scope kept, as the exporter's ``ConsumeTraces`` does.

    ring = HashRing(["127.0.0.1:4317", "127.0.0.1:4327", "127.0.0.1:4337"])
    for endpoint, body in split_request(request_bytes, ring).items():
        ...  # one Export call per endpoint
"""

from __future__ import annotations

import bisect
import zlib

__all__ = ["MAX_POSITIONS", "POSITIONS_PER_ENDPOINT", "HashRing", "split_request"]

MAX_POSITIONS = 36_000  # "360 degrees with two decimal places"
POSITIONS_PER_ENDPOINT = 100  # the exporter's defaultWeight


class HashRing:
    """The exporter's ring over ``endpoints`` (host:port strings, as its resolvers report them)."""

    def __init__(self, endpoints: list[str], positions_per_endpoint: int = POSITIONS_PER_ENDPOINT) -> None:
        if not endpoints:
            raise ValueError("a ring needs at least one endpoint")
        taken: dict[int, str] = {}
        for endpoint in endpoints:
            for i in range(positions_per_endpoint):
                position = zlib.crc32(endpoint.encode() + bytes([i])) % MAX_POSITIONS
                taken.setdefault(position, endpoint)
        self.endpoints = list(endpoints)
        self._positions = sorted(taken)
        self._owners = [taken[p] for p in self._positions]

    @property
    def items(self) -> list[tuple[int, str]]:
        """(position, endpoint), in ring order."""
        return list(zip(self._positions, self._owners, strict=True))

    def endpoint_for(self, trace_id: bytes) -> str:
        """The endpoint at the first ring position at or after the trace's (wrapping past the last)."""
        position = zlib.crc32(trace_id) % MAX_POSITIONS
        index = bisect.bisect_left(self._positions, position)
        return self._owners[index % len(self._owners)]


def split_request(body: bytes, ring: HashRing) -> dict[str, bytes]:
    """``body`` (an ExportTraceServiceRequest) as one request per endpoint, each span with its resource and
    scope; endpoints that get no span are absent."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest.FromString(body)
    parts: dict[str, ExportTraceServiceRequest] = {}
    resources: dict[tuple[str, int], object] = {}  # (endpoint, resource index) -> its ResourceSpans there
    scopes: dict[tuple[str, int, int], object] = {}  # (endpoint, resource index, scope index) -> ScopeSpans
    for r, resource_spans in enumerate(request.resource_spans):
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for span in scope_spans.spans:
                endpoint = ring.endpoint_for(span.trace_id)
                target = scopes.get((endpoint, r, s))
                if target is None:
                    rs = resources.get((endpoint, r))
                    if rs is None:
                        part = parts.setdefault(endpoint, ExportTraceServiceRequest())
                        rs = resources[(endpoint, r)] = part.resource_spans.add(
                            resource=resource_spans.resource, schema_url=resource_spans.schema_url
                        )
                    target = scopes[(endpoint, r, s)] = rs.scope_spans.add(
                        scope=scope_spans.scope, schema_url=scope_spans.schema_url
                    )
                target.spans.append(span)
    return {endpoint: part.SerializeToString() for endpoint, part in parts.items()}
