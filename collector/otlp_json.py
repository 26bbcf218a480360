"""OTLP protobuf → OTLP JSON (hex ids, as the OTLP JSON encoding writes them), for people to read."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

__all__ = ["resource_spans_to_json"]

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: base64.b64decode(v).hex() if k in _ID_KEYS else _hex_ids(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids(item) for item in node]
    return node


def resource_spans_to_json(payload: bytes) -> dict[str, Any]:
    return _hex_ids(json_format.MessageToDict(ResourceSpans.FromString(payload)))
