"""``spanmeter api``'s app and server with the clock pinned (the bench's ledger is a past month): the same
:func:`spanmeter.api.app.create_app` and :func:`spanmeter.api.server.run` that ``spanmeter api`` runs.

    python bench/_api_server.py --database-url URL --listen 127.0.0.1:8080 --now 2026-10-30T18:00:00Z
"""

from __future__ import annotations

import argparse
from datetime import datetime

from spanmeter.api import server
from spanmeter.api.app import create_app
from spanmeter.api.reads import Reads


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--now", required=True)
    args = p.parse_args()
    now = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
    reads = Reads(args.database_url, args.database_url)
    reads.open()
    host, port = server.parse_listen(args.listen)
    try:
        server.run(create_app(reads, clock=lambda: now), server.ServerSettings(host, port))
    finally:
        reads.close()


if __name__ == "__main__":
    main()
