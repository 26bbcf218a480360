"""``spanmeter alerts`` and ``spanmeter dashboards``: render the operations kit, or check it is current.

::

    spanmeter alerts render                      # rewrite alerts/rules/*.yaml from alerts/slos.yaml + catalog
    spanmeter alerts render --check              # exit 1 listing what differs (CI, pre-commit)
    spanmeter alerts render --out /etc/prometheus/rules --runbook-base-url https://wiki/runbooks \\
        --grafana-url https://grafana.example.com --job spanmeter-prod
    spanmeter alerts render --spec my-slos.yaml --out rules/   # your own services' SLOs
    spanmeter dashboards render [--check] [--out DIR]

Rendering into the package folders is what a contributor does after changing a spec; ``--out`` with link
options is what a deployment does to point runbook and dashboard links at its own wiki and Grafana.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ._shared import CommandError

__all__ = ["register"]


def register(sub: Any) -> None:
    alerts = sub.add_parser("alerts", help="Prometheus rules: SLO recording rules, burn-rate and pipeline alerts")
    asub = alerts.add_subparsers(dest="alerts_command", required=True)
    render = asub.add_parser("render", help="write the rule files (default: the committed alerts/rules/)")
    render.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed files differ")
    render.add_argument("--out", type=Path, help="directory to write into (default: alerts/rules in the package)")
    render.add_argument("--spec", type=Path, help="SLO spec file (default: alerts/slos.yaml)")
    render.add_argument(
        "--profile",
        choices=("production", "test"),
        default="production",
        help="production windows, or short ones for the promtool tests (default production)",
    )
    render.add_argument("--runbook-base-url", help="runbook_url = <this>/<AlertName>.md")
    render.add_argument("--grafana-url", help="dashboard_url = <this>/d/<uid>")
    render.add_argument("--job", help="the Prometheus job that scrapes spanmeter serve (default: spanmeter)")
    dashboards = sub.add_parser("dashboards", help="Grafana dashboards generated from spanmeter.dashboards")
    dsub = dashboards.add_subparsers(dest="dashboards_command", required=True)
    drender = dsub.add_parser("render", help="write the dashboard JSON (default: the committed dashboards/json/)")
    drender.add_argument("--check", action="store_true", help="write nothing; exit 1 if the committed files differ")
    drender.add_argument("--out", type=Path, help="directory to write into")
    render.set_defaults(handler=_alerts)
    drender.set_defaults(handler=_dashboards)


def _alerts(args: argparse.Namespace) -> int:
    from spanmeter.alerts import render
    from spanmeter.alerts.slo import SLOSpecError

    spec = args.spec or render.SPEC
    profile = render.with_links(
        render.PROFILES[args.profile],
        runbook_base_url=args.runbook_base_url,
        grafana_url=args.grafana_url,
        job=args.job,
    )
    try:
        if args.check:
            found = render.differences(args.out or render.RULES_DIR, spec, profile)
            return _report(found, "spanmeter alerts render")
        for path in render.write_all(args.out or _checkout_dir(render.RULES_DIR), profile, spec):
            print(f"wrote {path}")
    except SLOSpecError as exc:
        raise CommandError(f"{spec}: {exc}") from None
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    try:
        from spanmeter.dashboards import render as dashboards
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "grafana_foundation_sdk":
            raise
        raise CommandError(
            "rendering dashboards needs the Grafana Foundation SDK (the dashboards extra): "
            "pip install 'spanmeter[dashboards]'"
        ) from exc

    directory = args.out or dashboards.JSON_DIR
    if args.check:
        return _report(dashboards.differences(directory), "spanmeter dashboards render")
    directory = args.out or _checkout_dir(directory)
    for path in dashboards.write_all(directory):
        print(f"wrote {path}")
    return 0


def _checkout_dir(directory: Path) -> Path:
    """The package's own folder, only in a source checkout: an installed package is not written into."""
    if not (directory.parent.parent / "pyproject.toml").exists():
        raise CommandError(f"{directory} is inside an installed package: pass --out DIR")
    return directory


def _report(found: list[str], command: str) -> int:
    if not found:
        print("up to date")
        return 0
    for line in found:
        print(line, file=sys.stderr)
    print(f"regenerate with `{command}` and commit the result", file=sys.stderr)
    return 1
