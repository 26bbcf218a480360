#!/usr/bin/env bash
# Set up, then run every check: lint, format, the whole test suite, the instrumentation and receiver tests
# at the lowest dependency versions pyproject.toml admits, then the receiver's tests again on the pure-Python
# metering path (real PostgreSQL from the pgserver wheel, real gRPC servers, the official OpenTelemetry
# exporter, real promtool and Prometheus). Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
./scripts/ensure-prometheus.sh   # promtool + Prometheus for the alert tests (Debian package; installs as root)
.venv/bin/ruff check .
.venv/bin/ruff format --check --quiet .
.venv/bin/pytest "$@"
# The instrumentation and receiver at the lowest dependency versions pyproject.toml admits (its floors).
./scripts/test-lowest.sh
# The pure-Python metering path (the reference, and what a machine without Rust runs), end to end once more.
echo "again with SPANMETER_NATIVE=0 (pure-Python metering): the receiver's end-to-end tests"
SPANMETER_NATIVE=0 exec .venv/bin/pytest -q -p no:cacheprovider tests/test_receiver.py tests/test_fuzz.py \
  tests/test_hostile.py tests/test_limits.py tests/test_write_errors.py tests/test_metering_mode.py \
  tests/test_overload.py tests/test_auth.py tests/test_conflicts.py
