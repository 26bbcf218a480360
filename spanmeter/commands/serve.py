"""``spanmeter serve`` (the receiver), ``spanmeter demo`` (the main job) and ``spanmeter auth`` (producer tokens)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from spanmeter import __version__

from ._shared import DATABASE, CommandError, config_from

__all__ = ["register"]


def register(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="run the OTLP/gRPC and OTLP/HTTP receiver that writes the usage ledger", parents=[DATABASE]
    )
    serve.add_argument("--otlp-endpoint", help="HOST:PORT for OTLP/gRPC (default 127.0.0.1:4317)")
    serve.add_argument(
        "--otlp-http-endpoint",
        help="HOST:PORT for OTLP/HTTP, POST /v1/traces (default 127.0.0.1:4318; none: off); "
        "env SPANMETER_OTLP_HTTP_ENDPOINT",
    )
    serve.add_argument("--metrics-port", type=str, help="port for /metrics, /healthz, /readyz (default 9464)")
    serve.add_argument(
        "--processes",
        type=str,
        help="receiver processes sharing the OTLP port, one per core (default 1; env SPANMETER_PROCESSES)",
    )
    serve.add_argument(
        "--insecure-listen",
        action="store_true",
        default=None,
        help="allow a non-loopback address without producer authentication (behind a private network only)",
    )
    serve.add_argument(
        "--allow-owner",
        action="store_true",
        default=None,
        help="serve with a superuser or the ledger tables' owner (it could disable the append-only triggers); "
        "env SPANMETER_ALLOW_OWNER",
    )
    serve.add_argument(
        "--read-database-url",
        help="the ledger's read replica, to export its lag as spanmeter_read_replica_* (serve itself reads the "
        "primary); env SPANMETER_READ_DATABASE_URL",
    )

    serve.set_defaults(handler=_serve)

    demo = sub.add_parser(
        "demo", help="the main job: a Django + Celery pipeline metered end to end (about a minute)", parents=[DATABASE]
    )
    demo.add_argument("--documents", type=int, default=5, help="documents per account (default 5)")
    demo.add_argument(
        "--broker", help="Celery broker URL (default: kombu's SQLAlchemy transport on the ledger's PostgreSQL)"
    )

    demo.set_defaults(handler=_demo)

    auth = sub.add_parser("auth", help="producer tokens for SPANMETER_AUTH_FILE")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    auth_sub.add_parser("new-token", help="print a new random token and the sha256 line for the producers file")
    auth_sub.add_parser("hash-token", help="read a token on standard input, print its sha256 for the producers file")

    auth.set_defaults(handler=_auth)


def _serve(args: argparse.Namespace) -> int:
    from spanmeter.collector.auth import AuthConfigError
    from spanmeter.collector.config import listen_problem
    from spanmeter.collector.schema import PrivilegedCredential
    from spanmeter.collector.server import CollectorServer
    from spanmeter.logs import configure_logging

    config = config_from(
        args,
        otlp_endpoint=args.otlp_endpoint,
        otlp_http_endpoint=args.otlp_http_endpoint,
        metrics_port=args.metrics_port,
        insecure_listen=args.insecure_listen,
        allow_owner=args.allow_owner,
        processes=args.processes,
    )
    problem = listen_problem(config)
    if problem:
        raise CommandError(problem)
    configure_logging(config.log_level, config.log_format)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if config.processes > 1:
        from spanmeter.collector.supervisor import Supervisor

        server = Supervisor(config)
    else:
        server = CollectorServer(config)

    def reload_producers(*_: object) -> None:
        try:
            server.reload_auth()
        except Exception:  # a signal handler must never take the process down
            logging.getLogger("spanmeter").exception("reloading the producers file failed")

    signal.signal(signal.SIGHUP, reload_producers)
    try:
        addresses = server.start()
    except PrivilegedCredential as exc:
        print(f"spanmeter: {exc}", file=sys.stderr)
        server.shutdown(0)
        return 2
    except (OSError, AuthConfigError) as exc:  # a port in use, an unusable data directory, a bad producers file
        print(f"spanmeter: {exc}", file=sys.stderr)
        server.shutdown(0)
        return 2
    print(f"spanmeter {__version__} serving", flush=True)
    print(f"  OTLP/gRPC  {addresses.otlp}  (TraceService/Export, compression gzip or none)", flush=True)
    if addresses.otlp_http:
        print(
            f"  OTLP/HTTP  http{'s' if config.tls_cert_file else ''}://{addresses.otlp_http}/v1/traces"
            "  (protobuf or JSON, gzip or none)",
            flush=True,
        )
    if addresses.metrics:
        print(f"  metrics    http://{addresses.metrics}/metrics  (/healthz, /readyz)", flush=True)
    print(f"  ledger     {addresses.database}", flush=True)
    if config.read_database_url:
        from spanmeter.billing.ledger.replica import replica_database

        replica = replica_database(config.read_database_url).description
        print(f"  replica    {replica}: lag as spanmeter_read_replica_* (serve reads the primary)", flush=True)
    print(f"  security   {addresses.security}", flush=True)
    from spanmeter.collector.processors.native import metering_mode

    if metering_mode() == "native":
        print("  metering   native (the compiled Rust core; Python for what it hands back)", flush=True)
    else:
        print(
            "  metering   python (no compiled core: install a Rust toolchain and rerun ./scripts/bootstrap.sh,"
            " or SPANMETER_NATIVE=0 is set)",
            flush=True,
        )
    print(
        f"listening otlp={addresses.otlp} metrics={addresses.metrics or '-'} otlp_http={addresses.otlp_http or '-'}",
        flush=True,
    )
    while not stop.wait(3600):
        pass
    print("spanmeter: stopping: no new requests; committing in-flight ones", flush=True)
    server.shutdown()
    print("spanmeter: stopped", flush=True)
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from spanmeter.demo.runner import DemoOptions, run_demo
    except ImportError as exc:
        raise CommandError(f"the demo needs Django and Celery: pip install 'spanmeter[demo]' ({exc})") from exc
    if not 1 <= args.documents <= 200:
        raise CommandError("--documents must be between 1 and 200")
    config = config_from(args)
    options = DemoOptions(
        data_dir=config.data_dir,
        database_url=config.database_url,
        broker_url=args.broker,
        documents_per_account=args.documents,
    )
    return run_demo(options)


def _auth(args: argparse.Namespace) -> int:
    import secrets

    from spanmeter.collector.auth import hash_token

    if args.auth_command == "new-token":
        token = secrets.token_urlsafe(32)
        print(f"token (give it to the producer; it is not stored anywhere): {token}")
        print(f'token_sha256 = ["{hash_token(token)}"]')
        return 0
    token = sys.stdin.readline().strip()
    if not token:
        raise CommandError('no token on standard input: echo "$TOKEN" | spanmeter auth hash-token')
    print(hash_token(token))
    return 0
