# spanmeter: OTLP/gRPC and OTLP/HTTP receiver that meters spans into the Postgres usage ledger.
#
#   docker build -t spanmeter .
#   docker run --rm -p 4317:4317 -p 4318:4318 -p 9464:9464 \
#       -e SPANMETER_DATABASE_URL=postgresql://user:password@db-host:5432/spanmeter spanmeter
#
# Listening on 0.0.0.0 needs producer authentication (SPANMETER_AUTH_FILE, or mTLS) or an explicit
# SPANMETER_INSECURE_LISTEN=true behind a private network: unauthenticated, anyone could bill anyone.
# Without SPANMETER_DATABASE_URL the process falls back to the embedded PostgreSQL under
# SPANMETER_DATA_DIR (a volume you must mount); docker-compose.yml uses a real postgres service instead.

# ---- native stage: the compiled metering core (native/, Rust + PyO3, abi3 for CPython >= 3.11) as a wheel ----
FROM rust:1-slim-bookworm AS native
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir "maturin>=1.5,<2"
WORKDIR /src
COPY native/ native/
RUN /opt/build/bin/maturin build --release --manifest-path native/Cargo.toml --out /wheels

# ---- build stage: install the project (runtime dependencies only) and the native core into a virtualenv ----
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Exactly the package folders pyproject.toml lists (tests/test_deploy.py builds this same context with pip).
# README.md (the long description) is optional: the glob lets COPY succeed in a checkout without it.
COPY pyproject.toml README.md* ./
COPY spanmeter/ spanmeter/
COPY collector/ collector/
COPY billing/ billing/
COPY instrumentation/ instrumentation/
COPY demo/ demo/
COPY alerts/ alerts/
COPY dashboards/ dashboards/
COPY api/ api/
COPY --from=native /wheels/ /wheels/
RUN pip install ".[api]" /wheels/*.whl && spanmeter --version \
 && python -c "import spanmeter_native, spanmeter.api.app"

# ---- runtime stage ----
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPANMETER_OTLP_ENDPOINT=0.0.0.0:4317 \
    SPANMETER_OTLP_HTTP_ENDPOINT=0.0.0.0:4318 \
    SPANMETER_METRICS_HOST=0.0.0.0 \
    SPANMETER_METRICS_PORT=9464 \
    SPANMETER_DATA_DIR=/var/lib/spanmeter

RUN groupadd --system --gid 10001 spanmeter \
 && useradd --system --uid 10001 --gid spanmeter --home-dir /var/lib/spanmeter --shell /usr/sbin/nologin spanmeter \
 && install -d -o spanmeter -g spanmeter -m 0750 /var/lib/spanmeter

COPY --from=build /opt/venv /opt/venv

USER spanmeter:spanmeter
WORKDIR /var/lib/spanmeter

# 4317: OTLP/gRPC (TraceService/Export); 4318: OTLP/HTTP (POST /v1/traces); 9464: /metrics, /healthz, /readyz
EXPOSE 4317 4318 9464

# Liveness only (/healthz); /readyz also checks the database and schema. slim has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SPANMETER_METRICS_PORT', '9464'), timeout=4)"]

# SIGTERM stops new Export calls and commits in-flight ones before exit: give it time (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["spanmeter"]
CMD ["serve", "--otlp-endpoint", "0.0.0.0:4317"]
