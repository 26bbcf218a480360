"""OTLP wire helpers: decoding Export requests and building gRPC error statuses.

``decode_request(body)`` parses an ``ExportTraceServiceRequest``. The protobuf runtime refuses a whole
message when one string field holds invalid UTF-8; OTLP producers written in other languages do send that
now and then, and one bad attribute must not lose a batch. So on a parse failure the body is parsed again
with a lenient twin of the OTLP schema in which every ``string`` is ``bytes``; each such field is decoded
with U+FFFD replacing invalid sequences, and the result is re-encoded and parsed strictly. Only bodies that
are not OTLP at all raise :class:`UnparseableRequest`.

``abort(context, code, message, retry_delay_seconds)`` ends an RPC with a ``google.rpc.Status``. A retry
delay is sent twice, as OTLP clients disagree on where to read it: inside the status details
(``grpc-status-details-bin``, read by the Go exporter and the Collector) and as the
``google.rpc.retryinfo-bin`` trailer (read by the Python exporter).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["DecodedRequest", "UnparseableRequest", "abort", "count_spans", "decode_request"]

SERVICE_NAME = "opentelemetry.proto.collector.trace.v1.TraceService"
_FieldType = descriptor_pb2.FieldDescriptorProto


class UnparseableRequest(ValueError):
    pass


DecodedRequest = collections.namedtuple("DecodedRequest", "request replaced_strings")


def _lenient_request_class() -> type[Message]:
    """ExportTraceServiceRequest in a private pool where every string field is bytes."""
    pool = descriptor_pool.DescriptorPool()
    seen: set[str] = set()

    def add(file_descriptor: Any) -> None:
        if file_descriptor.name in seen:
            return
        for dependency in file_descriptor.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        for message in proto.message_type:
            _stringless(message)
        pool.Add(proto)
        seen.add(file_descriptor.name)

    add(trace_service_pb2.DESCRIPTOR)
    descriptor = pool.FindMessageTypeByName(ExportTraceServiceRequest.DESCRIPTOR.full_name)
    return message_factory.GetMessageClass(descriptor)


def _stringless(message: descriptor_pb2.DescriptorProto) -> None:
    for f in message.field:
        if f.type == _FieldType.TYPE_STRING:
            f.type = _FieldType.TYPE_BYTES
    for nested in message.nested_type:
        _stringless(nested)


_LenientRequest = _lenient_request_class()


def _string_fields(descriptor: Any) -> frozenset[str]:
    original = ExportTraceServiceRequest.DESCRIPTOR.file.pool.FindMessageTypeByName(descriptor.full_name)
    return frozenset(f.name for f in original.fields if f.type == f.TYPE_STRING)


def _repeated(field: Any) -> bool:
    """Whether a field is repeated, at every protobuf version pyproject admits (``is_repeated`` is new in
    protobuf 6; ``label`` is what 5.x has, deprecated later)."""
    is_repeated = getattr(field, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else field.label == field.LABEL_REPEATED


def _repair(message: Message, cache: dict[str, frozenset[str]]) -> int:
    """Replace invalid UTF-8 in former string fields; return how many values changed."""
    changed = 0
    name = message.DESCRIPTOR.full_name
    if name not in cache:
        cache[name] = _string_fields(message.DESCRIPTOR)
    strings = cache[name]
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            if _repeated(field):
                for item in value:
                    changed += _repair(item, cache)
            else:
                changed += _repair(value, cache)
        elif field.name in strings:
            if _repeated(field):
                for index, item in enumerate(value):
                    fixed = item.decode("utf-8", "replace").encode("utf-8")
                    if fixed != item:
                        value[index] = fixed
                        changed += 1
            else:
                fixed = value.decode("utf-8", "replace").encode("utf-8")
                if fixed != value:
                    setattr(message, field.name, fixed)
                    changed += 1
    return changed


def decode_request(body: bytes) -> DecodedRequest:
    try:
        return DecodedRequest(ExportTraceServiceRequest.FromString(body), 0)
    except DecodeError:
        pass
    try:
        lenient = _LenientRequest.FromString(body)
    except DecodeError as exc:
        raise UnparseableRequest(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    replaced = _repair(lenient, {})
    try:
        return DecodedRequest(ExportTraceServiceRequest.FromString(lenient.SerializeToString()), replaced)
    except DecodeError as exc:  # pragma: no cover - the repaired message is valid by construction
        raise UnparseableRequest(f"not an OTLP ExportTraceServiceRequest: {exc}") from None


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A varint as upb reads it (at most 10 bytes; a 10th byte above 1 is refused, as the native core does)."""
    value = 0
    for i in range(10):
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        if i == 9 and byte > 1:
            raise ValueError("overlong varint")
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos
    raise ValueError("varint longer than 10 bytes")


def _varint32(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A tag or a length: at most 5 bytes and 32 bits."""
    value, after = _varint(buf, pos, end)
    if after - pos > 5 or value > 0xFFFFFFFF:
        raise ValueError("tag or length beyond 32 bits / 5 bytes")
    return value, after


def _count_fields(buf: bytes, start: int, end: int, number: int, inner: Callable[[int, int], int]) -> int:
    """Sum ``inner(start, end)`` over the length-delimited fields ``number`` of the message in buf[start:end],
    skipping every other field by its wire type."""
    total, pos = 0, start
    while pos < end:
        tag, pos = _varint32(buf, pos, end)
        wire_type = tag & 7
        if tag >> 3 == 0:
            raise ValueError("field number 0")
        if wire_type == 2:
            length, pos = _varint32(buf, pos, end)
            if pos + length > end:
                raise ValueError("length beyond the message")
            if tag >> 3 == number:
                total += inner(pos, pos + length)
            pos += length
        elif wire_type == 0:
            _, pos = _varint(buf, pos, end)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
            if pos > end:
                raise ValueError("fixed-width field beyond the message")
        else:
            raise ValueError("group or invalid wire type")
    return total


def count_spans(body: bytes) -> int | None:
    """The spans in an Export request from its framing alone (the tags and lengths of its three outer
    levels), or None when the framing is not well formed (a full decode then decides). The pure-Python twin
    of the native core's counter (``spanmeter_native.count_spans``; the differential tests hold them equal):
    a loop per span, so the receiver uses it only on bodies big enough to exceed the span limit."""

    def scope(start: int, end: int) -> int:
        return _count_fields(body, start, end, 2, lambda s, e: 1)

    def resource(start: int, end: int) -> int:
        return _count_fields(body, start, end, 2, scope)

    try:
        return _count_fields(body, 0, len(body), 1, resource)
    except ValueError:
        return None


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def status_details(
    code: grpc.StatusCode, message: str, retry_delay_seconds: float | None = None, bad_request: bool = False
) -> tuple[status_pb2.Status, list[tuple[str, bytes]]]:
    """The ``google.rpc.Status`` of a refusal (with RetryInfo and BadRequest details) and the gRPC trailing
    metadata that carries it."""
    status = status_pb2.Status(code=code.value[0], message=message)
    metadata: list[tuple[str, bytes]] = []
    if retry_delay_seconds is not None:
        seconds = int(retry_delay_seconds)
        delay = Duration(seconds=seconds, nanos=int((retry_delay_seconds - seconds) * 1e9))
        retry_info = error_details_pb2.RetryInfo(retry_delay=delay)
        status.details.add().Pack(retry_info)
        metadata.append(("google.rpc.retryinfo-bin", retry_info.SerializeToString()))
    if bad_request:
        violation = error_details_pb2.BadRequest.FieldViolation(field="request", description=message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    metadata.append(("grpc-status-details-bin", status.SerializeToString()))
    return status, metadata


def abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    retry_delay_seconds: float | None = None,
    bad_request: bool = False,
) -> NoReturn:
    _, metadata = status_details(code, message, retry_delay_seconds, bad_request)
    context.abort_with_status(_Status(code, message, tuple(metadata)))
    raise AssertionError("unreachable")  # abort_with_status raises
