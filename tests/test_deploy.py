"""The deployment files agree with the code: compose's spanmeter environment is a valid configuration,
Prometheus scrapes the real metrics port, the Collector forwards to spanmeter with a codec grpcio decodes
and a durable, fsync'd queue. (No Docker engine here: the stack is validated, not run.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from spanmeter.collector.config import listen_problem, load_config

ROOT = Path(__file__).resolve().parent.parent
_DEFAULT = re.compile(r"\$\{([A-Z0-9_]+):-([^}]*)\}")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def with_defaults(value: str) -> str:
    return _DEFAULT.sub(lambda m: m.group(2), str(value))


def test_compose_spanmeter_environment_is_a_valid_configuration():
    service = compose()["services"]["spanmeter"]
    env = {k: with_defaults(v) for k, v in service["environment"].items()}
    config = load_config(env)  # raises ConfigError naming any bad or unknown-format setting
    assert listen_problem(config) is None  # `spanmeter serve` would start with this environment
    assert config.database_url == "postgresql://spanmeter:spanmeter@postgres:5432/spanmeter"
    assert (config.otlp_host, config.otlp_port, config.metrics_bind_host) == ("0.0.0.0", 4317, "0.0.0.0")
    published = {with_defaults(p).split("#")[0].strip().rsplit(":", 1)[-1] for p in service["ports"]}
    assert {str(config.otlp_port), str(config.metrics_port)} <= published
    documented = set(re.findall(r"`(SPANMETER_[A-Z_]+)`", (ROOT / "README.md").read_text()))
    assert set(env) <= documented


def test_prometheus_scrapes_the_spanmeter_metrics_port():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [
        t
        for job in prometheus["scrape_configs"]
        if job["job_name"] == "spanmeter"
        for sc in job["static_configs"]
        for t in sc["targets"]
    ]
    port = with_defaults(compose()["services"]["spanmeter"]["environment"]["SPANMETER_METRICS_PORT"])
    assert targets == [f"spanmeter:{port}"]


def test_collector_forwards_with_gzip_and_a_durable_queue():
    otelcol = yaml.safe_load((ROOT / "deploy" / "otelcol.yaml").read_text())
    exporters = otelcol["service"]["pipelines"]["traces"]["exporters"]
    assert len(exporters) == 1
    exporter = otelcol["exporters"][exporters[0]]
    assert exporter["endpoint"] == "spanmeter:4317"
    assert exporter["compression"] in ("gzip", "none")
    storage = exporter["sending_queue"]["storage"]
    assert storage in otelcol["service"]["extensions"]
    assert otelcol["extensions"][storage]["fsync"] is True


def test_the_sidecar_takes_loopback_otlp_and_forwards_durably_with_a_producer_token():
    sidecar = yaml.safe_load((ROOT / "deploy" / "otelcol-sidecar.yaml").read_text())
    assert sidecar["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].startswith("127.0.0.1:")
    [name] = sidecar["service"]["pipelines"]["traces"]["exporters"]
    exporter = sidecar["exporters"][name]
    assert exporter["compression"] in ("gzip", "none")
    assert exporter["headers"]["authorization"].startswith("Bearer ${env:")
    assert exporter["retry_on_failure"]["max_elapsed_time"] in ("0s", 0)
    assert exporter["sending_queue"]["block_on_overflow"] is True
    storage = exporter["sending_queue"]["storage"]
    assert storage in sidecar["service"]["extensions"]
    assert sidecar["extensions"][storage]["fsync"] is True
