#!/usr/bin/env bash
# The main job: set up, then run the spanmeter collector on the embedded PostgreSQL (./.spanmeter/).
# Extra arguments go to `spanmeter serve` (e.g. --otlp-endpoint 127.0.0.1:4317 --metrics-port 9464).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cat <<'HINT'
spanmeter: starting the collector on the embedded PostgreSQL (Ctrl-C stops it; data stays in ./.spanmeter).
In another terminal, send it spans and read the ledger:
    .venv/bin/python examples/send_spans.py
    .venv/bin/spanmeter usage --account acme
HINT
exec .venv/bin/spanmeter serve "$@"
