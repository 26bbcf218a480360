"""``python -m spanmeter.dashboards [--check] [--out DIR]``: write the dashboards' JSON (default: the
package's ``json/`` folder, which Grafana provisioning reads), or with ``--check`` list the differences and
exit 1 when the committed files are stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .render import JSON_DIR, differences, write_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spanmeter.dashboards", description="Write or check the spanmeter Grafana dashboards."
    )
    parser.add_argument("--out", type=Path, default=JSON_DIR, help=f"folder for the JSON (default: {JSON_DIR})")
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on differences")
    args = parser.parse_args(argv)
    if args.check:
        found = differences(args.out)
        for line in found:
            print(line)
        if found:
            print("regenerate with: spanmeter dashboards render (or python -m spanmeter.dashboards)", file=sys.stderr)
            return 1
        print(f"dashboards in {args.out} match the code")
        return 0
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
