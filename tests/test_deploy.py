"""The deployment files agree with the code: compose's spanmeter environment is a valid configuration,
Prometheus scrapes the real metrics port, the Collector forwards to spanmeter with a codec grpcio decodes
and a durable, fsync'd queue. (No Docker engine here: the stack is validated, not run.)"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
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
    assert config.database_url == "postgresql://spanmeter_writer:spanmeter-writer@postgres:5432/spanmeter"
    assert (config.otlp_host, config.otlp_port, config.metrics_bind_host) == ("0.0.0.0", 4317, "0.0.0.0")
    published = {with_defaults(p).split("#")[0].strip().rsplit(":", 1)[-1] for p in service["ports"]}
    assert {str(config.otlp_port), str(config.metrics_port)} <= published
    documented = set(re.findall(r"`(SPANMETER_[A-Z_]+)`", (ROOT / "README.md").read_text()))
    assert set(env) <= documented


def test_prometheus_scrapes_the_spanmeter_metrics_port():
    """Every replica of the compose service is a target of its own (DNS discovery of the service name, A
    records, the metrics port), not one name that would land on one replica per scrape."""
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = [job for job in prometheus["scrape_configs"] if job["job_name"] == "spanmeter"]
    assert "static_configs" not in job
    port = with_defaults(compose()["services"]["spanmeter"]["environment"]["SPANMETER_METRICS_PORT"])
    assert job["dns_sd_configs"] == [
        {"names": ["spanmeter"], "type": "A", "port": int(port), "refresh_interval": "15s"}
    ]


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


# ---------------------------------------------------------------------------------------------- grafana
# (imports kept local: this section is appended to a file others edit)


def _bind_mounts(service: dict) -> dict[str, str]:
    """Container path → host path of a service's bind mounts."""
    return {v.split(":")[1]: v.split(":")[0] for v in service["volumes"] if v.startswith("./")}


def test_grafana_mounts_the_generated_dashboards_where_the_provider_reads_them():
    mounts = _bind_mounts(compose()["services"]["grafana"])
    provisioning = ROOT / "dashboards" / "provisioning"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "spanmeter.yaml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == "./dashboards/json"
    assert mounts["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./dashboards/provisioning/dashboards"
    assert all((ROOT / host).is_dir() for host in mounts.values())
    assert list((ROOT / "dashboards" / "json").glob("*.json")), "spanmeter dashboards render, then commit"


def test_grafana_gets_every_setting_its_datasources_expand_and_the_role_password_not_the_owners():
    import json

    services = compose()["services"]
    grafana, role = services["grafana"]["environment"], services["ledger-roles"]["environment"]
    datasources = yaml.safe_load((ROOT / "dashboards" / "provisioning" / "datasources" / "spanmeter.yaml").read_text())
    expanded = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", json.dumps(datasources)))
    assert expanded and expanded <= set(grafana)
    assert "POSTGRES_PASSWORD" not in grafana and "POSTGRES_USER" not in grafana  # Grafana never holds the owner
    assert role["GRAFANA_DB_PASSWORD"] == grafana["GRAFANA_DB_PASSWORD"]  # what ledger-roles sets is used
    assert (role["PGHOST"], with_defaults(role["PGDATABASE"])) == (
        grafana["POSTGRES_HOST"].split(":")[0],
        with_defaults(grafana["POSTGRES_DB"]),
    )
    # the roles exist once the owner migrated; spanmeter and grafana start after their passwords are set
    assert services["ledger-migrate"]["command"] == ["db", "upgrade"]
    assert services["ledger-roles"]["depends_on"]["ledger-migrate"]["condition"] == "service_completed_successfully"
    for name in ("spanmeter", "grafana"):
        assert services[name]["depends_on"]["ledger-roles"]["condition"] == "service_completed_successfully"


def test_spanmeter_writes_as_the_writer_role_with_the_password_ledger_roles_sets():
    from psycopg.conninfo import conninfo_to_dict

    services = compose()["services"]
    url = conninfo_to_dict(with_defaults(services["spanmeter"]["environment"]["SPANMETER_DATABASE_URL"]))
    owner = conninfo_to_dict(with_defaults(services["ledger-migrate"]["environment"]["SPANMETER_DATABASE_URL"]))
    assert url["user"] == "spanmeter_writer" and owner["user"] != "spanmeter_writer"
    assert url["password"] == with_defaults(services["ledger-roles"]["environment"]["WRITER_DB_PASSWORD"])
    assert "SPANMETER_ALLOW_OWNER" not in services["spanmeter"]["environment"]


def test_ledger_roles_sets_exactly_the_configured_passwords_whatever_they_contain(fresh_db):
    import hashlib
    import os
    import shutil
    import subprocess

    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from spanmeter.billing.ledger import migrate
    from spanmeter.billing.ledger.database import resolve_database

    assert shutil.which("psql"), "psql (the PostgreSQL client) is needed to run ledger-roles' command"
    migrate.upgrade(resolve_database(fresh_db, data_dir=None))  # creates the roles, as ledger-migrate does
    service = compose()["services"]["ledger-roles"]
    assert service["entrypoint"] == ["sh", "-c"]
    [command] = service["command"]
    params = conninfo_to_dict(fresh_db)
    password = "it's a $ecret; DROP ROLE spanmeter_grafana; --"
    env = {
        **os.environ,
        "PGHOST": str(params["host"]),
        "PGPORT": str(params.get("port") or 5432),
        "PGUSER": str(params["user"]),
        "PGDATABASE": str(params["dbname"]),
        "GRAFANA_DB_PASSWORD": password,
        "WRITER_DB_PASSWORD": password[::-1],
        "PGOPTIONS": "-c password_encryption=md5",  # md5 hashes are checkable here; SCRAM ones are salted
    }
    done = subprocess.run(["sh", "-c", command.replace("$$", "$")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(fresh_db) as conn:
        stored = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('spanmeter_grafana', 'spanmeter_writer')"
            ).fetchall()
        )
    assert stored == {
        "spanmeter_grafana": "md5" + hashlib.md5((password + "spanmeter_grafana").encode()).hexdigest(),
        "spanmeter_writer": "md5" + hashlib.md5((password[::-1] + "spanmeter_writer").encode()).hexdigest(),
    }


def test_prometheus_loads_the_generated_rule_files():
    """The compose mount and the rule_files glob together pick up exactly the files in alerts/rules/."""
    import fnmatch

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    mounts = [v.split(":") for v in compose()["services"]["prometheus"]["volumes"]]
    host, container = next((h, c) for h, c, *_ in mounts if h.startswith("./alerts"))
    loaded = []
    for pattern in prometheus["rule_files"]:
        assert pattern.startswith(container + "/")
        folder = ROOT / host / Path(pattern).parent.relative_to(container)
        loaded += [p.name for p in folder.iterdir() if fnmatch.fnmatch(p.name, Path(pattern).name)]
    assert sorted(loaded) == ["spanmeter-alerts.rules.yaml", "spanmeter-slos.rules.yaml"]
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert "spanmeter" in jobs  # the job the rules select on


# --- the image's install context and the compose file's schema ----------------------------------------------


def _dockerignored(patterns: list[str], rel: str) -> bool:
    """Whether ``rel`` (a path in the build context) is excluded by .dockerignore ``patterns`` (a matching
    directory excludes everything below it; ``**/`` matches at any depth)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(
                fnmatch.fnmatchcase("/".join(parts[i:j]), tail)
                for i in range(len(parts))
                for j in range(i + 1, len(parts) + 1)
            ):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def _stage(dockerfile: str, name: str) -> list[str]:
    """The instructions of the stage ``FROM … AS name`` (continuation lines joined)."""
    lines = dockerfile.replace("\\\n", " ").splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"FROM\s+\S+\s+AS\s+{name}\s*$", line, re.I))
    stage = []
    for line in lines[start + 1 :]:
        if line.upper().startswith("FROM "):
            break
        if line.strip() and not line.lstrip().startswith("#"):
            stage.append(line.strip())
    return stage


def _build_context(destination: Path, stage: str) -> Path:
    """What ``docker build .`` sends, as the stage's plain COPY instructions place it in its WORKDIR."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = 0
    for instruction in _stage((ROOT / "Dockerfile").read_text(), stage):
        words = instruction.split()
        if words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        *sources, target = words[1:]
        for source in sources:
            # this Dockerfile copies each source to the same relative place (or into ./): keep it that way
            assert target in ("./", source), f"COPY {source} {target}: the test reproduces same-path copies only"
            for match in sorted(ROOT.glob(source.rstrip("/"))):
                files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
                for path in files:
                    rel = path.relative_to(ROOT).as_posix()
                    if not _dockerignored(patterns, rel):
                        (destination / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, destination / rel)
                        copied += 1
    assert copied, f"the {stage} stage copies nothing"
    return destination


@pytest.mark.integration  # a subprocess or a real server
def test_the_image_install_context_installs_and_runs(tmp_path):
    """`pip install .` in exactly what the Dockerfile's build stage copies (after .dockerignore): it used to
    fail (`package directory 'demo' does not exist`), so `docker compose up --build` could not build."""
    context = _build_context(tmp_path / "src", "build")
    venv = tmp_path / "venv"
    uv = Path(sys.executable).with_name("uv")
    subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    installed = subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(context)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    version = subprocess.run([str(venv / "bin" / "spanmeter"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("spanmeter "), version.stderr
    # what the image serves: alerts, dashboards and the demo's modules are inside it
    check = "import spanmeter.alerts, spanmeter.dashboards, spanmeter.demo.workload; print('ok')"
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert imported.stdout == "ok\n", imported.stderr  # (from tmp_path: the checkout's folders must not shadow it)
    # the native stage gets the whole Rust crate (its build is proven by scripts/bootstrap.sh with the same files)
    native = _build_context(tmp_path / "native", "native")
    assert {"native/Cargo.toml", "native/Cargo.lock", "native/pyproject.toml"} <= {
        p.relative_to(native).as_posix() for p in native.rglob("*") if p.is_file()
    }
    assert not any("target" in p.parts for p in native.rglob("*"))
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE 4317 4318 9464$", dockerfile, re.M)


def test_the_compose_file_is_valid_against_the_compose_specification():
    """docker-compose.yml against the Compose Specification's JSON schema (vendored, tests/data/README.md),
    not only as YAML."""
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    broken = compose()
    broken["services"]["spanmeter"]["depends_on"] = {"ledger-roles": {"condition": "when_ready"}}
    assert list(validator.iter_errors(broken)), "the schema must catch a condition compose does not know"


# --- the gateway tier: the Collector's loadbalancing exporter in front of N replicas --------------------------
# No Collector binary can be had here: the gateway files are held to the loadbalancing exporter's documented
# configuration (opentelemetry-collector-contrib exporter/loadbalancingexporter: config.go, config.schema.yaml,
# factory.go, README) and to the compose file that runs them. (imports kept local: others edit this file)

GATEWAYS = ("otelcol-gateway.yaml", "otelcol-gateway-static.yaml")
# Config's fields (mapstructure names): TimeoutSettings (squashed: `timeout`), BackOffConfig (`retry_on_failure`),
# QueueSettings (`sending_queue`), Protocol, Resolver, RoutingKey, RoutingAttributes.
LOADBALANCING_KEYS = {
    "protocol",
    "resolver",
    "routing_key",
    "routing_attributes",
    "sending_queue",
    "retry_on_failure",
    "timeout",
}
ROUTING_KEYS = {"service", "traceID", "resource", "metric", "streamID", "attributes"}
RESOLVER_KEYS = {"static": {"hostnames"}, "dns": {"hostname", "port", "interval", "timeout"}}
# exporterhelper's QueueBatchConfig (`sending_queue`) and its BatchConfig (`sending_queue.batch`), v0.152
QUEUE_KEYS = {
    "enabled",
    "wait_for_result",
    "block_on_overflow",
    "sizer",
    "queue_size",
    "num_consumers",
    "storage",
    "batch",
}
BATCH_KEYS = {"flush_timeout", "min_size", "max_size", "sizer", "partition"}
RESOLVERS = {"static", "dns", "k8s", "aws_cloud_map"}


def _gateway(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / name).read_text())


def _go_seconds(duration: str) -> float:
    """A Go duration ("30s", "1m30s", "500ms", "0s") in seconds."""
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a Go duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _component_type(name: str) -> str:
    return name.split("/", 1)[0]


def _loadbalancing(gateway: dict) -> dict:
    [name] = gateway["service"]["pipelines"]["traces"]["exporters"]
    assert _component_type(name) in ("loadbalancing", "load_balancing"), name
    return gateway["exporters"][name]


def test_every_gateway_component_is_declared_and_every_declared_one_used():
    for name in GATEWAYS:
        gateway = _gateway(name)
        service = gateway["service"]
        for pipeline in service["pipelines"].values():
            for kind in ("receivers", "processors", "exporters"):
                for component in pipeline.get(kind, []):
                    assert component in gateway[kind], f"{name}: {kind[:-1]} {component} is not declared"
        assert set(service["extensions"]) == set(gateway["extensions"]), name
        for kind in ("receivers", "processors", "exporters"):
            used = {c for p in service["pipelines"].values() for c in p.get(kind, [])}
            assert set(gateway.get(kind) or {}) == used, f"{name}: declared {kind} not in any pipeline"


def test_the_gateway_routes_by_trace_id_over_a_persistent_queue_in_front_of_the_routing():
    from spanmeter.collector.config import load_config

    write_timeout = load_config({}).ledger_write_timeout_seconds
    for name in GATEWAYS:
        gateway = _gateway(name)
        assert set(gateway["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}, name
        lb = _loadbalancing(gateway)
        assert set(lb) <= LOADBALANCING_KEYS, f"{name}: unknown keys {set(lb) - LOADBALANCING_KEYS}"
        assert lb["routing_key"] == "traceID" and lb["routing_key"] in ROUTING_KEYS
        # the per-replica sub-exporters: an OTLP exporter template; the resolver sets the endpoint
        assert set(lb["protocol"]) == {"otlp"}
        otlp = lb["protocol"]["otlp"]
        assert "endpoint" not in otlp, f"{name}: the resolver sets each sub-exporter's endpoint"
        assert otlp["compression"] == "gzip"  # grpcio (spanmeter) decodes gzip and none only
        assert otlp["headers"]["authorization"] == "Bearer ${env:SPANMETER_PRODUCER_TOKEN}"
        # every sub-exporter gets this same template, storage included: one file_storage client for all of
        # them (contrib #16826, #45716). No queue there, so nothing is acknowledged from memory either.
        assert otlp["sending_queue"] == {"enabled": False}, name
        assert otlp["retry_on_failure"]["enabled"] is True
        assert _go_seconds(otlp["retry_on_failure"]["max_elapsed_time"]) > 0  # then the failure goes up
        # ack after commit: an attempt outlives spanmeter's own deadline, which answers UNAVAILABLE first
        assert _go_seconds(otlp["timeout"]) > write_timeout
        assert _go_seconds(lb["timeout"]) == 0 or _go_seconds(lb["timeout"]) >= _go_seconds(otlp["timeout"])
        # the persistent queue is the exporter's own (top-level sending_queue, contrib #36094)
        queue = lb["sending_queue"]
        assert queue["enabled"] is True and queue["block_on_overflow"] is True
        storage = queue["storage"]
        assert _component_type(storage) == "file_storage" and storage in gateway["service"]["extensions"]
        assert gateway["extensions"][storage]["fsync"] is True
        assert set(queue) <= QUEUE_KEYS, f"{name}: unknown queue keys {set(queue) - QUEUE_KEYS}"
        assert "wait_for_result" not in queue  # refused with `storage` (exporterhelper's Validate)
        assert queue["num_consumers"] > 0 and queue["queue_size"] > 0
        assert lb["retry_on_failure"]["enabled"] is True
        assert _go_seconds(lb["retry_on_failure"]["max_elapsed_time"]) == 0  # never give up
        # exactly one resolver, with the fields that resolver has
        [resolver] = lb["resolver"]
        assert resolver in RESOLVERS
        assert set(lb["resolver"][resolver]) <= RESOLVER_KEYS[resolver], name


def test_the_gateway_merges_app_batches_before_the_routing_into_requests_spanmeter_takes_whole():
    """Each replica gets about 1/N of a merged batch per request, so its group commits do not shrink to 1/N of
    an app batch (deploy/README.md, "Batching before the routing"); one replica alone may get a whole batch,
    which must fit one request."""
    max_spans = load_config({}).max_spans_per_request
    replicas = compose()["services"]["spanmeter"]["deploy"]["replicas"]
    for name in GATEWAYS:
        queue = _loadbalancing(_gateway(name))["sending_queue"]
        batch = queue["batch"]
        assert set(batch) <= BATCH_KEYS, f"{name}: unknown batch keys {set(batch) - BATCH_KEYS}"
        # the queue counts app requests (our choice: its size is an outage budget in app batches); batching
        # accepts only `items` or `bytes` and would inherit `requests` if left out, so it is written out, and
        # in spans: the unit spanmeter's per-request cap counts
        assert queue["sizer"] == "requests" and batch["sizer"] == "items", name
        assert _go_seconds(batch["flush_timeout"]) > 0  # must be non-zero
        assert 0 < batch["min_size"] <= batch["max_size"] <= max_spans, name
        # merging is the point: every replica gets at least one SDK batch's worth (512 spans) per request
        assert batch["min_size"] >= 512 * replicas, name
        # even when every batch in flight goes to one replica, it fits that replica's in-flight budget (past
        # it the replica answers UNAVAILABLE and the gateway only retries)
        assert queue["num_consumers"] * batch["max_size"] <= load_config({}).max_inflight_spans, name


def test_the_static_and_dns_gateways_differ_only_in_their_resolver_and_both_reach_every_replica():
    services = compose()["services"]
    replicas = services["spanmeter"]["deploy"]["replicas"]
    otlp_port = with_defaults(services["spanmeter"]["environment"]["SPANMETER_OTLP_ENDPOINT"]).rsplit(":", 1)[1]
    dns, static = (_gateway(name) for name in GATEWAYS)
    assert _loadbalancing(dns).pop("resolver") == {
        "dns": {"hostname": "spanmeter", "port": otlp_port, "interval": "5s", "timeout": "1s"}
    }
    # the compose container names (<project>-<service>-<n>) of every replica
    hostnames = _loadbalancing(static).pop("resolver")["static"]["hostnames"]
    project = compose()["name"]
    assert hostnames == [f"{project}-spanmeter-{n}:{otlp_port}" for n in range(1, replicas + 1)]
    assert dns == static


def test_compose_runs_three_replicas_behind_the_gateway():
    services = compose()["services"]
    spanmeter = services["spanmeter"]
    assert spanmeter["deploy"]["replicas"] == 3
    assert "container_name" not in spanmeter  # a fixed name allows one container only
    for mapping in spanmeter["ports"]:  # a fixed host port would clash: a range with a port per replica
        host = with_defaults(mapping).split("#")[0].strip().rsplit(":", 1)[0].rsplit(":", 1)[-1]
        first, _, last = host.partition("-")
        assert last and int(last) - int(first) + 1 >= spanmeter["deploy"]["replicas"], mapping
    collector = services["otel-collector"]
    [config_path] = [arg.split("=", 1)[1] for arg in collector["command"] if arg.startswith("--config=")]
    assert _bind_mounts(collector)[config_path] == "./deploy/otelcol-gateway.yaml"
    gateway = _gateway("otelcol-gateway.yaml")
    expanded = set(re.findall(r"\$\{env:([A-Z0-9_]+)\}", (ROOT / "deploy" / "otelcol-gateway.yaml").read_text()))
    assert expanded and expanded <= set(collector["environment"])
    # the persistent queue's directory is a named volume: it outlives the container
    directory = gateway["extensions"][_loadbalancing(gateway)["sending_queue"]["storage"]]["directory"]
    named = {v.split(":")[1]: v.split(":")[0] for v in collector["volumes"] if not v.startswith("./")}
    assert named[directory] in compose()["volumes"]


@pytest.mark.integration  # a subprocess or a real server
def test_prometheus_config_with_dns_discovery_passes_promtool():
    from support import require_tool

    promtool = require_tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
