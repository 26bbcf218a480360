#!/usr/bin/env bash
# Set up, then run every check: lint, format, mypy, the unit tier then the integration tier (together the whole
# suite), the instrumentation and receiver tests at the lowest dependency versions pyproject.toml admits, then
# the receiver's tests again on the pure-Python metering path (real PostgreSQL from the pgserver wheel, real
# gRPC servers, the official OpenTelemetry exporter, real promtool and Prometheus). Extra arguments replace
# the two tiers with one pytest run of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/ensure-prometheus.sh   # promtool + Prometheus for the alert tests (Debian package; installs as root)
./scripts/ensure-chromium.sh     # Chromium for the billing page test (Debian package; installs as root)
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
echo "mypy (strict on spanmeter.billing.rating and spanmeter.collector.processors)"
./scripts/typecheck.sh
if [ "$#" -eq 0 ]; then
  echo "unit tier: no PostgreSQL, no subprocess, no server (pytest -m unit)"
  .venv/bin/pytest -q -m unit
  echo "integration tier: real PostgreSQL, servers, subprocesses (pytest -m integration)"
  .venv/bin/pytest -m integration -n 3 --dist loadfile   # a file per worker: its module fixtures stay shared
else
  .venv/bin/pytest "$@"
fi
# The instrumentation and receiver at the lowest dependency versions pyproject.toml admits (its floors).
./scripts/test-lowest.sh
# The pure-Python metering path (the reference, and what a machine without Rust runs), end to end once more.
echo "again with SPANMETER_NATIVE=0 (pure-Python metering): the receiver's end-to-end tests"
SPANMETER_NATIVE=0 exec .venv/bin/pytest -q -p no:cacheprovider -n 3 --dist loadfile tests/test_receiver.py tests/test_fuzz.py \
  tests/test_hostile.py tests/test_limits.py tests/test_write_errors.py tests/test_metering_mode.py \
  tests/test_overload.py tests/test_auth.py tests/test_conflicts.py
