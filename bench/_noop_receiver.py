"""Figure (1): a do-nothing OTLP/gRPC receiver. It decodes each request and answers an empty response.

    python bench/_noop_receiver.py --port 0 --workers 16

Same gRPC server settings as ``spanmeter serve`` (sync server, thread pool of 16, generic handler that
receives raw bytes); the handler is ``ExportTraceServiceRequest.FromString(body)`` and nothing else, so the
figure is the protocol ceiling: gRPC + HTTP/2 + protobuf decode in one Python process.
Prints ``listening otlp=127.0.0.1:PORT protobuf=<backend>`` once serving; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc
from _profiler import TIMERS, Profiler, control_from_stdin
from google.protobuf.internal import api_implementation
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_from_string = ExportTraceServiceRequest.FromString


def noop_export(body: bytes, context) -> bytes:
    _from_string(body)
    return b""  # an empty ExportTraceServiceResponse


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--no-instrument", action="store_true")
    args = parser.parse_args()
    control_from_stdin(Profiler())
    export = noop_export if args.no_instrument else TIMERS.wrap("handler: decode (FromString)", noop_export)
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)})
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="otlp"),
        handlers=[handler],
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    print(f"listening otlp={args.host}:{port} protobuf={api_implementation.Type()}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(3600):
        pass
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
