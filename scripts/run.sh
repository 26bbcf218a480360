#!/usr/bin/env bash
# The main job: set up, then run `spanmeter demo`: the embedded PostgreSQL, the collector, a Django web
# server and a Celery worker instrumented with one import, a workload for three accounts, and the usage
# the ledger recorded. About a minute; every process it starts is stopped at the end.
# Extra arguments go to `spanmeter demo` (e.g. --documents 10, --broker redis://127.0.0.1:6379/0).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/spanmeter demo "$@"
