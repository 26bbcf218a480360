"""The ``spanmeter`` command line.

    spanmeter serve [--otlp-endpoint HOST:PORT] [--metrics-port N] [--database-url URL] [--data-dir DIR]
    spanmeter demo [--documents N] [--broker URL]      (the main job: a metered Django + Celery pipeline)
    spanmeter db upgrade | url | stop
    spanmeter usage --account ID [--from DATE] [--to DATE] [--format table|json|csv] [--read-database-url URL]
    spanmeter dead-letter list | show ID | replay --reason R | resolve ID --decision D --why TEXT
    spanmeter subscription | rollups | ledger adjust | invoice | reconcile | export   (see spanmeter.commands.billing)
    spanmeter prices import | check | show | diff | unpriced                      (see spanmeter.commands.prices)
    spanmeter api [--listen HOST:PORT] | api token new|revoke|list | entitlements set|show|list  (spanmeter.commands.api)
    spanmeter webhooks add|list|remove|deliveries|deliver                       (see spanmeter.commands.webhooks)

Every command reads the same ``SPANMETER_*`` variables (see :mod:`spanmeter.collector.config`); flags win.
Bad configuration exits with status 2 and one message naming every bad setting. ``usage``, invoice drafts
and ``export`` read the replica of ``--read-database-url`` when one is configured; everything else reads
and writes the primary (see :mod:`spanmeter.billing.ledger.replica`).

The tree is assembled here from :mod:`spanmeter.commands` (one module per group); every leaf names its
handler (``set_defaults(handler=…)``), and :func:`spanmeter.commands._shared.run` applies one error policy
and exit-code scheme to all of them.
"""

from __future__ import annotations

import argparse

from spanmeter import __version__
from spanmeter.commands import _shared, api, billing, db, ops, prices, serve, usage, webhooks

__all__ = ["main"]

_GROUPS = (serve, db, usage, billing, prices, api, ops, webhooks)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spanmeter", description="Usage metering from OpenTelemetry spans.")
    parser.add_argument("--version", action="version", version=f"spanmeter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return _shared.run(args.handler, args)
