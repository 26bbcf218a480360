#!/usr/bin/env bash
# Set up, then run every check: lint, format, and the whole test suite (real PostgreSQL from the
# pgserver wheel, real gRPC servers, the official OpenTelemetry exporter,
# real promtool and Prometheus). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/ensure-prometheus.sh   # promtool + Prometheus for the alert tests (Debian package; installs as root)
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
exec .venv/bin/pytest "$@"
