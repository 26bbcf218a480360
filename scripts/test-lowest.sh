#!/usr/bin/env bash
# The instrumentation and receiver tests again with every direct dependency at the lowest version
# pyproject.toml admits (uv --resolution lowest-direct), in .venv-lowest: the floors are what this proves.
# The main run (scripts/test.sh) has the newest releases. Pure-Python metering here (SPANMETER_NATIVE=0): the
# native core does not depend on these versions; the Python reference and the instrumentation do.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/uv ] || { echo "uv is missing from .venv: run ./scripts/bootstrap.sh" >&2; exit 2; }
.venv/bin/uv venv --quiet --allow-existing --python .venv/bin/python .venv-lowest
VIRTUAL_ENV=$PWD/.venv-lowest .venv/bin/uv pip install --quiet --resolution lowest-direct -e ".[test]"
.venv-lowest/bin/python - <<'PY'
import importlib.metadata as m
names = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-instrumentation-django",
         "protobuf", "grpcio", "Django", "celery", "psycopg", "SQLAlchemy", "prometheus-client")
print("lowest admitted versions: " + ", ".join(f"{n} {m.version(n)}" for n in names))
PY
SPANMETER_NATIVE=0 PATH="$PWD/.venv-lowest/bin:$PATH" .venv-lowest/bin/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile \
  tests/test_instrumentation.py tests/test_autoinstrument.py tests/test_receiver.py tests/test_auth.py \
  tests/test_limits.py tests/test_hostile.py tests/test_otlp_http.py tests/test_entitlements.py "$@"
