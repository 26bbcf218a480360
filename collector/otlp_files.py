"""Reading OTLP trace files, as the OpenTelemetry Collector's file exporter writes them.

``read_trace_file(path)`` yields one ``ExportTraceServiceRequest`` per message in the file:

- **OTLP JSON** (``format: json``): one ``TracesData`` JSON object per line (JSON Lines). Trace and span
  ids are hex strings, as the OTLP JSON encoding says (not protobuf JSON's base64).
- **OTLP protobuf** (``format: proto``): each serialized ``TracesData`` preceded by its length as a 4-byte
  big-endian unsigned integer.
- Either of them gzip-compressed as a whole (``.gz``; detected by its magic bytes, not its name).

``TracesData`` and ``ExportTraceServiceRequest`` share their wire format (field 1: ``resource_spans``), so
each message is parsed as a request and metered exactly like a live Export.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .otlp import UnparseableRequest, decode_request

__all__ = ["OtlpFileError", "detect_format", "read_trace_file"]

_GZIP_MAGIC = b"\x1f\x8b"
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class OtlpFileError(ValueError):
    pass


class _Counted(io.RawIOBase):
    """A binary file that counts the bytes read from it into ``offset[0]``."""

    def __init__(self, raw: BinaryIO, offset: list[int]) -> None:
        self._raw, self._offset = raw, offset

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self._offset[0] += n or 0
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open(path: Path, offset: list[int] | None = None) -> BinaryIO:
    raw = path.open("rb")
    if offset is not None:
        magic = raw.read(2)
        raw.seek(0)
        counted = io.BufferedReader(_Counted(raw, offset))
        if magic == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=counted)  # type: ignore[return-value]
        return counted  # type: ignore[return-value]
    if raw.read(2) == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    raw.seek(0)
    return raw


def detect_format(stream: BinaryIO) -> str:
    """``json`` when the first non-blank byte opens a JSON object, else ``proto``."""
    head = stream.peek(64)[:64] if hasattr(stream, "peek") else b""
    return "json" if head.lstrip()[:1] == b"{" else "proto"


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise OtlpFileError(f"{key} {value!r} is not hex") from None
            else:
                value = _hex_ids_to_base64(value)
            out[key] = value
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(item) for item in node]
    return node


def parse_json_message(line: str) -> ExportTraceServiceRequest:
    try:
        document = json.loads(line)
    except json.JSONDecodeError as exc:
        raise OtlpFileError(f"not JSON: {exc}") from None
    except ValueError as exc:  # e.g. an integer longer than Python's int parsing limit
        raise OtlpFileError(f"not OTLP JSON: {exc}") from None
    except RecursionError:
        raise OtlpFileError("not OTLP JSON: nested too deeply") from None
    if not isinstance(document, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(document), "a number"
        )
        raise OtlpFileError(f"not OTLP JSON traces: the top level is {kind}, not an object")
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(_hex_ids_to_base64(document), request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise OtlpFileError(f"not OTLP JSON traces: {exc}") from None
    return request


def _proto_messages(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        header = stream.read(4)
        if not header:
            return
        if len(header) < 4:
            raise OtlpFileError("truncated length prefix at the end of the file")
        (size,) = struct.unpack(">I", header)
        body = stream.read(size)
        if len(body) < size:
            raise OtlpFileError(f"truncated message: expected {size} bytes, found {len(body)}")
        yield body


def read_trace_file(
    path: Path, file_format: str = "auto", offset: list[int] | None = None
) -> Iterator[tuple[int, ExportTraceServiceRequest]]:
    """Yield ``(message_number, request)``; raise OtlpFileError naming the message that is bad. ``offset``,
    when given, holds in ``offset[0]`` how many bytes of the file (as stored, compressed or not) are read."""
    with _open(Path(path), offset) as stream:
        buffered = io.BufferedReader(stream) if not hasattr(stream, "peek") else stream
        kind = detect_format(buffered) if file_format == "auto" else file_format
        if kind == "json":
            text = io.TextIOWrapper(buffered, encoding="utf-8")
            for number, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, parse_json_message(line)
                except OtlpFileError as exc:
                    raise OtlpFileError(f"{path}: line {number}: {exc}") from None
        elif kind == "proto":
            for number, body in enumerate(_proto_messages(buffered), start=1):
                try:
                    yield number, decode_request(body).request  # invalid UTF-8 repaired as live
                except UnparseableRequest as exc:
                    raise OtlpFileError(f"{path}: message {number}: {exc}") from None
        else:
            raise OtlpFileError(f"unknown format {file_format!r}: use auto, json or proto")
