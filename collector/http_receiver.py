"""The OTLP/HTTP trace receiver: ``POST /v1/traces``, the second door to the same receiver core.

One receiver core (:class:`~spanmeter.collector.receiver.TraceReceiver`), two doors: this one and gRPC's
``TraceService/Export``. Both hand the core the request as OTLP protobuf bytes and get back the same
answer (an ``ExportTraceServiceResponse``, or a :class:`~spanmeter.collector.receiver.Refusal`): the same
bounds, producers, processors, ledger path and acknowledgement after COMMIT. The HTTP server is uvicorn
(HTTP/1.1, TLS and mTLS from the same files as gRPC); this module parses no HTTP itself.

What the door adds, following the OTLP/HTTP specification:

- ``Content-Type``: ``application/x-protobuf`` or ``application/json`` (OTLP JSON: hex trace and span
  ids, enums as integers or names, lowerCamelCase keys; the decoder ``spanmeter ingest`` uses). The
  answer, and an error's ``google.rpc.Status``, come back in the request's content type. Anything else is
  415.
- ``Content-Encoding``: ``gzip`` or none (else 415). The size limit (``SPANMETER_MAX_RECEIVE_MESSAGE_BYTES``)
  applies to the body as received and again to the decompressed body, decompressed with a cap, so a small
  gzip bomb costs at most the limit: 413.
- Status codes: 200 (also with ``partial_success`` when spans were rejected); 400 for a body that is not
  OTLP (kept in ``rejected_requests``, like gRPC's INVALID_ARGUMENT); 401 without valid producer
  credentials (``Authorization: Bearer …``); 413 over the size or span limit; 429 at capacity and 503 when
  the ledger cannot commit now, both with ``Retry-After``; 404 and 405 for other paths and methods.
- CORS is off unless ``SPANMETER_OTLP_HTTP_CORS_ORIGINS`` lists origins (browser SDKs): then a preflight
  from a listed origin is answered and responses carry ``Access-Control-Allow-Origin``.

Producers are identified by bearer token on this door. A client certificate is checked by the TLS
handshake (``SPANMETER_TLS_CLIENT_CA_FILE``), but uvicorn does not hand the certificate's common name to
the application, so a producer known only by its certificate's name must use gRPC or a token here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import zlib
from concurrent import futures
from typing import Any

from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .config import CollectorConfig
from .http_server import ThreadedServer
from .otlp_files import OtlpFileError, parse_json_message
from .receiver import Call, Refusal, TraceReceiver, status_of

__all__ = ["TRACES_PATH", "HttpReceiver"]

log = logging.getLogger(__name__)
TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_HTTP_STATUS = {  # gRPC code of the core's refusal -> HTTP status (OTLP/HTTP)
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 413,
    "UNAVAILABLE": 503,
}


class HttpReceiver:
    """An ASGI application around a :class:`TraceReceiver`, and the uvicorn server that runs it in a thread.

    ``start()`` binds (with ``SO_REUSEPORT`` when ``reuse_port``: the receiver processes of
    ``serve --processes N`` share the port) and returns the bound port; ``shutdown()`` stops accepting and
    lets requests in flight finish (they wait for their commit)."""

    def __init__(self, receiver: TraceReceiver, config: CollectorConfig) -> None:
        self._receiver = receiver
        self._config = config
        self._limit = config.max_receive_message_bytes
        self._cors = frozenset(origin.lower() for origin in config.otlp_http_cors_origins)
        # requests past the door's first checks at once: beyond it, 429 before the body is read
        self._slots = threading.BoundedSemaphore(config.max_inflight_requests)
        self._json_slots = threading.BoundedSemaphore(2)
        # like the gRPC server: a few threads beyond the in-flight bound, so calls over it are refused quickly
        self._pool = futures.ThreadPoolExecutor(
            max_workers=config.max_inflight_requests + 4, thread_name_prefix="otlp-http"
        )
        self._server: ThreadedServer | None = None

    # --- the server -------------------------------------------------------------------------------------

    def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        config = self._config
        options: dict[str, Any] = {}
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            options = {"ssl_certfile": str(config.tls_cert_file), "ssl_keyfile": str(config.tls_key_file)}
            if config.tls_client_ca_file is not None:
                options |= {"ssl_ca_certs": str(config.tls_client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self._server = ThreadedServer(
            self,
            "OTLP/HTTP",
            "SPANMETER_OTLP_HTTP_ENDPOINT, --otlp-http-endpoint; none turns the HTTP door off",
            graceful_seconds=config.ledger_write_timeout_seconds + 1,
            **options,
        )
        return self._server.start(host, port, reuse_port)

    def shutdown(self, grace_seconds: float) -> None:
        if self._server is not None:
            self._server.shutdown(grace_seconds)
            self._server = None
        self._pool.shutdown(wait=True, cancel_futures=False)

    # --- the application --------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._serve(scope, receive, send)
        except Exception:  # a fault of ours is retryable (503), never a 500 an exporter would drop
            log.exception("unexpected error handling an OTLP/HTTP request")
            self._receiver.count_internal_error()
            status = _status("UNAVAILABLE", "internal error; retry")
            accept = dict(scope.get("headers", ())).get(b"content-type", b"").decode("latin-1").lower()
            kind = JSON if accept.startswith(JSON) else PROTOBUF
            await _answer(send, 503, kind, _encode(status, kind), [(b"retry-after", b"1")])

    async def _serve(self, scope: dict, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        origin = headers.get("origin")
        cors: list[tuple[bytes, bytes]] = []
        if origin is not None and ("*" in self._cors or origin.lower().rstrip("/") in self._cors):
            cors = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", b"retry-after"),
                (b"vary", b"origin"),
            ]
        method, path = scope["method"], scope["path"]
        if path != TRACES_PATH:
            await _plain(send, 404, f"not found: OTLP/HTTP traces are POSTed to {TRACES_PATH}\n", cors)
            return
        if method == "OPTIONS" and cors:  # a browser's CORS preflight from a configured origin
            allow = [
                (b"access-control-allow-methods", b"POST"),
                (b"access-control-allow-headers", b"content-type, content-encoding, authorization"),
                (b"access-control-max-age", b"600"),
            ]
            await _plain(send, 204, "", cors + allow)
            return
        if method != "POST":
            await _plain(send, 405, f"use POST on {TRACES_PATH}\n", [*cors, (b"allow", b"POST")])
            return
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type not in (PROTOBUF, JSON):
            status = _status("INVALID_ARGUMENT", f"Content-Type must be {PROTOBUF} or {JSON}, not {content_type!r}")
            await _answer(send, 415, PROTOBUF, status.SerializeToString(), cors)
            return
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity", ""):
            status = _status("INVALID_ARGUMENT", f"Content-Encoding {encoding!r} is not supported: use gzip or none")
            await _answer(send, 415, content_type, _encode(status, content_type), cors)
            return
        peer = _peer(scope)
        metadata = tuple(headers.items())
        call = Call(peer_of=lambda: peer, metadata_of=lambda: metadata, common_names_of=tuple)
        try:
            # who first, as on gRPC: nothing from an unknown sender is read, decoded or kept
            producer = self._receiver.authenticate(call)
            # a slot before the body is read: bodies, inflating and JSON decoding are bounded like gRPC's calls
            if not self._slots.acquire(blocking=False):
                raise self._receiver.refuse_busy()
            try:
                response = await self._export(receive, content_type, encoding, call, producer)
            finally:
                self._slots.release()
        except Refusal as refusal:
            status_code = refusal.http_status or _HTTP_STATUS.get(refusal.code.name, 503)
            extra = cors
            if refusal.retry_delay_seconds is not None:
                extra = [*cors, (b"retry-after", str(max(1, round(refusal.retry_delay_seconds))).encode())]
            await _answer(send, status_code, content_type, _encode(status_of(refusal), content_type), extra)
            return
        if response is None:  # the client went away mid-upload: nothing was processed, nobody to answer
            return
        if content_type == JSON:
            response = _response_json(response)
        await _answer(send, 200, content_type, response, cors)

    async def _export(self, receive: Any, content_type: str, encoding: str, call: Call, producer: Any) -> bytes | None:
        raw = await self._read(receive)
        if raw is _DISCONNECTED:
            return None
        if raw is None:
            raise self._receiver.refuse_oversized(call, producer=producer)
        assert isinstance(raw, bytes)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._handle, raw, content_type, encoding, call, producer)

    def _handle(self, raw: bytes, content_type: str, encoding: str, call: Call, producer: Any) -> bytes:
        """In a pool thread: inflate, decode JSON, hand the protobuf bytes to the core."""
        body: bytes | None = raw
        if encoding == "gzip":
            try:
                body = _decompressed(raw, self._limit)
            except _BadGzip as exc:
                raise self._receiver.refuse_unparseable(raw, str(exc), call, producer) from None
            if body is None:
                raise self._receiver.refuse_oversized(call, producer=producer)
        assert body is not None
        if content_type == JSON:
            with self._json_slots:  # decoding JSON builds ~10x the body in Python objects: a few at a time
                body = self._from_json(body, call, producer)
        return self._receiver.handle(body, call)

    async def _read(self, receive: Any) -> bytes | object | None:
        """The body as received; None when it is over the limit (the rest is read and discarded);
        ``_DISCONNECTED`` when the client went away before the end of the body."""
        parts: list[bytes] = []
        size = 0
        over = False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                over = True
                parts.clear()
            elif not over:
                parts.append(chunk)
            if not message.get("more_body", False):
                break
        return None if over else b"".join(parts)

    def _from_json(self, body: bytes, call: Call, producer: Any) -> bytes:
        """OTLP JSON -> OTLP protobuf bytes; a body that is not OTLP JSON is kept and refused (400)."""
        try:
            return parse_json_message(body.decode("utf-8")).SerializeToString()
        except (OtlpFileError, UnicodeDecodeError) as exc:
            message = str(exc) if isinstance(exc, OtlpFileError) else f"not UTF-8 JSON: {exc}"
            raise self._receiver.refuse_unparseable(body, message, call, producer) from None


_DISCONNECTED = object()


class _BadGzip(Exception):
    pass


def _decompressed(raw: bytes, limit: int) -> bytes | None:
    """gzip-decompress every member of ``raw`` (RFC 1952 allows several, concatenated), at most ``limit``
    bytes in all; None when it decompresses to more."""
    out = bytearray()
    rest = raw
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                return None
            out += inflater.flush()
        except zlib.error as exc:
            raise _BadGzip(f"the body is not valid gzip: {exc}") from None
        if len(out) > limit:
            return None
        if not inflater.eof:
            raise _BadGzip("the gzip body is truncated")
        rest = inflater.unused_data
    return bytes(out)


def _peer(scope: dict) -> str:
    """The peer as gRPC writes it: ``ipv4:1.2.3.4:5678`` or ``ipv6:[::1]:5678``."""
    client = scope.get("client")
    if not client:
        return "unknown"
    host, port = client[0], client[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _status(code_name: str, message: str) -> status_pb2.Status:
    from grpc import StatusCode

    return status_pb2.Status(code=StatusCode[code_name].value[0], message=message)


def _encode(status: status_pb2.Status, content_type: str) -> bytes:
    if content_type == JSON:
        return json.dumps(json_format.MessageToDict(status)).encode()
    return status.SerializeToString()


def _response_json(response: bytes) -> bytes:
    message = ExportTraceServiceResponse.FromString(response)
    return json.dumps(json_format.MessageToDict(message)).encode()


async def _answer(send: Any, status: int, content_type: str, body: bytes, extra: list) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Any, status: int, text: str, extra: list) -> None:
    await _answer(send, status, "text/plain; charset=utf-8", text.encode(), extra)
