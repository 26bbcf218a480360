"""Producer authentication end to end: only authenticated producers, within their allow-lists, create
usage; tokens rotate without a restart; mTLS identities; no authentication means loopback only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from decimal import Decimal

import grpc
import pytest
from certs import CertificateAuthority
from opentelemetry.sdk.trace.export import SpanExportResult

from spanmeter.collector.auth import hash_token
from support import SPANMETER, Collector, SpanFactory, exporter, ledger, raw_export, request_bytes, totals, wait_until

MS = 1_000_000
TOKEN_A, TOKEN_B, TOKEN_OPS = "token-alpha-1", "token-beta-2", "token-ops-3"


def producers_file(path, *, docs_tokens, ops_tokens=(TOKEN_OPS,)) -> None:
    quoted = lambda tokens: ", ".join(f'"{hash_token(t)}"' for t in tokens)  # noqa: E731
    path.write_text(f"""
[[producer]]
name = "docs-workers"
token_sha256 = [{quoted(docs_tokens)}]
services = ["docs-worker"]
meters = ["worker_seconds", "gpu_seconds"]
tls_common_names = ["docs-workers.internal"]

[[producer]]
name = "ops"
token_sha256 = [{quoted(ops_tokens)}]
services = ["*"]
meters = ["*"]
""")


def worker_spans(account: str, service: str = "docs-worker", n: int = 3) -> list:
    f = SpanFactory({"service.name": service})
    return [f.span("run", {"account_id": account, "celery.action": "run"}, 200 * MS) for _ in range(n)]


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def authed(tmp_path, fresh_db):
    path = tmp_path / "producers.toml"
    producers_file(path, docs_tokens=[TOKEN_A])
    collector = Collector(fresh_db, env={"SPANMETER_AUTH_FILE": str(path)}).start()
    yield collector, path, fresh_db
    collector.kill()


def test_unauthenticated_and_wrong_producers_cannot_create_usage(authed):
    collector, _, db = authed
    assert "producers from" in "\n".join(collector.output)
    # no credentials, a wrong token: UNAUTHENTICATED, nothing stored, counted
    assert exporter(collector.endpoint).export(worker_spans("acct-x")) == SpanExportResult.FAILURE
    assert (
        exporter(collector.endpoint, headers=bearer("guess")).export(worker_spans("acct-x")) == SpanExportResult.FAILURE
    )
    probe = raw_export(collector.endpoint, request_bytes(worker_spans("acct-x")))
    assert probe.code == grpc.StatusCode.UNAUTHENTICATED
    assert collector.metrics()['spanmeter_export_requests_total{grpc_code="UNAUTHENTICATED"}'] >= 3
    assert ledger(db, "SELECT count(*) FROM usage_events") == [(0,)]
    assert ledger(db, "SELECT count(*) FROM rejected_spans") == [(0,)]

    # right token, wrong service or wrong meter: the spans are rejected unauthorized_producer and kept
    docs = exporter(collector.endpoint, headers=bearer(TOKEN_A))
    assert docs.export(worker_spans("acct-x", service="billing-api")) == SpanExportResult.SUCCESS
    llm = SpanFactory({"service.name": "docs-worker"}).span(
        "chat", {"account_id": "acct-x", "gen_ai.usage.input_tokens": 10}, MS
    )
    assert docs.export([llm]) == SpanExportResult.SUCCESS
    assert totals(db, "acct-x") == {}
    assert ledger(db, "SELECT reason, count(*) FROM rejected_spans GROUP BY 1") == [("unauthorized_producer", 4)]
    assert collector.metrics()['spanmeter_spans_rejected_total{reason="unauthorized_producer"}'] == 4

    # within its allow-list it bills; a client's baggage header never attributes anything
    assert docs.export(worker_spans("acct-ok")) == SpanExportResult.SUCCESS
    assert totals(db, "acct-ok") == {"worker_seconds": Decimal("0.6")}
    orphan = SpanFactory({"service.name": "docs-worker"}).span("run", {"celery.action": "run"}, MS)
    headers = (*bearer(TOKEN_A), ("baggage", "account_id=acct-forged"))
    assert exporter(collector.endpoint, headers=headers).export([orphan]) == SpanExportResult.SUCCESS
    assert totals(db, "acct-forged") == {}
    assert ledger(db, "SELECT count(*) FROM rejected_spans WHERE reason = 'unattributed'") == [(1,)]


def test_token_rotation_without_restart(authed):
    collector, path, db = authed

    def export_code(account: str, token: str) -> grpc.StatusCode:
        return raw_export(collector.endpoint, request_bytes(worker_spans(account)), metadata=bearer(token)).code

    def failed_reloads() -> float:
        return collector.metrics()['spanmeter_auth_reloads_total{outcome="failed"}']

    assert exporter(collector.endpoint, headers=bearer(TOKEN_A)).export(worker_spans("r1")) == SpanExportResult.SUCCESS
    # overlap: both tokens valid (reloaded on SIGHUP)
    producers_file(path, docs_tokens=[TOKEN_A, TOKEN_B])
    collector.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: export_code("r2", TOKEN_B) == grpc.StatusCode.OK, 10, what="token B accepted")
    assert exporter(collector.endpoint, headers=bearer(TOKEN_A)).export(worker_spans("r3")) == SpanExportResult.SUCCESS
    # the old token retired: picked up from the file change alone, no signal
    producers_file(path, docs_tokens=[TOKEN_B])
    wait_until(lambda: export_code("r4", TOKEN_A) == grpc.StatusCode.UNAUTHENTICATED, 15, 0.2, "token A retired")
    assert exporter(collector.endpoint, headers=bearer(TOKEN_B)).export(worker_spans("r5")) == SpanExportResult.SUCCESS
    # a broken file is refused; the producers in force stay
    path.write_text("[[producer]]\nname = ")
    collector.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: failed_reloads() >= 1, 10, what="a refused reload")
    assert exporter(collector.endpoint, headers=bearer(TOKEN_B)).export(worker_spans("r6")) == SpanExportResult.SUCCESS
    # valid TOML of the wrong shape, then SIGHUP: refused too; the process and the watcher carry on
    path.write_text('producer = ["x"]\n')
    collector.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: failed_reloads() >= 2, 10, what="a second refused reload")
    assert collector.proc.poll() is None
    producers_file(path, docs_tokens=[TOKEN_A])  # and a good file is picked up again by the watcher
    wait_until(lambda: export_code("r7", TOKEN_A) == grpc.StatusCode.OK, 15, 0.2, "token A accepted again")
    # r4 probes billed while token A was still in force, then were refused
    assert {acct for (acct,) in ledger(db, "SELECT DISTINCT account_id FROM usage_events")} == {
        "r1",
        "r2",
        "r3",
        "r4",
        "r5",
        "r6",
        "r7",
    }


def test_mtls_client_certificates_identify_producers(tmp_path, fresh_db):
    ca = CertificateAuthority(tmp_path)
    server_cert, server_key = ca.issue("localhost", server=True)
    client_cert, client_key = ca.issue("docs-workers.internal")
    stranger_cert, stranger_key = ca.issue("stranger.internal")
    path = tmp_path / "producers.toml"
    producers_file(path, docs_tokens=[TOKEN_A])
    collector = Collector(
        fresh_db,
        otlp_endpoint="localhost:0",
        env={
            "SPANMETER_AUTH_FILE": str(path),
            "SPANMETER_TLS_CERT_FILE": str(server_cert),
            "SPANMETER_TLS_KEY_FILE": str(server_key),
            "SPANMETER_TLS_CLIENT_CA_FILE": str(ca.ca_file),
        },
    ).start()
    try:
        endpoint = collector.endpoint.replace("localhost", "localhost")

        def tls_exporter(cert, key):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            credentials = grpc.ssl_channel_credentials(
                ca.ca_file.read_bytes(), key.read_bytes() if key else None, cert.read_bytes() if cert else None
            )
            return OTLPSpanExporter(endpoint=f"https://{endpoint}", credentials=credentials, timeout=10)

        assert tls_exporter(client_cert, client_key).export(worker_spans("acct-tls")) == SpanExportResult.SUCCESS
        assert totals(fresh_db, "acct-tls") == {"worker_seconds": Decimal("0.6")}
        # a certificate from the CA whose name is no producer's: UNAUTHENTICATED; no certificate: no handshake
        assert tls_exporter(stranger_cert, stranger_key).export(worker_spans("acct-s")) == SpanExportResult.FAILURE
        assert collector.metrics()['spanmeter_export_requests_total{grpc_code="UNAUTHENTICATED"}'] >= 1
        assert tls_exporter(None, None).export(worker_spans("acct-n")) == SpanExportResult.FAILURE
        assert ledger(fresh_db, "SELECT DISTINCT account_id FROM usage_events") == [("acct-tls",)]
    finally:
        collector.kill()


def test_without_authentication_only_loopback_unless_insecure_listen(fresh_db):
    env = {**os.environ, "SPANMETER_METRICS_PORT": "0"}
    refused = subprocess.run(
        [SPANMETER, "serve", "--database-url", fresh_db, "--otlp-endpoint", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0:0 without authentication" in refused.stderr
    assert "--insecure-listen" in refused.stderr
    allowed = Collector(fresh_db, otlp_endpoint="0.0.0.0:0", env={"SPANMETER_INSECURE_LISTEN": "true"}).start()
    try:
        port = allowed.endpoint.rsplit(":", 1)[1]
        assert exporter(f"127.0.0.1:{port}").export(worker_spans("acct-open")) == SpanExportResult.SUCCESS
    finally:
        allowed.kill()


def test_a_certificate_name_given_to_two_producers_is_refused(tmp_path):
    from spanmeter.collector.auth import AuthConfigError, load_producers

    path = tmp_path / "producers.toml"
    entry = '[[producer]]\nname = "{}"\nservices = ["*"]\nmeters = ["*"]\ntls_common_names = ["shared.internal"]\n'
    path.write_text(entry.format("a") + entry.format("b"))
    with pytest.raises(AuthConfigError, match=re.escape("'shared.internal' is also given to a")):
        load_producers(path)


def test_a_producer_bills_only_the_accounts_it_is_allowed(tmp_path, fresh_db):
    """Producer A, allowed only svc-a, set account_id=acct-b and it was billed to acct-b: now its accounts
    list (ids and prefixes) binds it, from a span attribute and from a resource attribute alike."""
    path = tmp_path / "producers.toml"
    path.write_text(f"""
[[producer]]
name = "tenant-a"
token_sha256 = ["{hash_token(TOKEN_A)}"]
services = ["svc-a"]
meters = ["*"]
accounts = ["acct-a", "team-a-*"]

[[producer]]
name = "tenant-b"
token_sha256 = ["{hash_token(TOKEN_B)}"]
services = ["svc-b"]
meters = ["*"]
accounts = ["acct-b"]

[[producer]]
name = "platform"
token_sha256 = ["{hash_token(TOKEN_OPS)}"]
services = ["*"]
meters = ["*"]
""")
    collector = Collector(fresh_db, env={"SPANMETER_AUTH_FILE": str(path)}).start()
    try:
        output = "\n".join(collector.output)
        assert "(platform) may bill any account" in output and "(tenant-a) may bill" not in output
        a = exporter(collector.endpoint, headers=bearer(TOKEN_A))
        result = raw_export(
            collector.endpoint, request_bytes(worker_spans("acct-b", "svc-a")), metadata=bearer(TOKEN_A)
        )
        assert result.code == grpc.StatusCode.OK
        assert result.response.partial_success.rejected_spans == 3
        assert "producer 'tenant-a' may not bill this account" in result.response.partial_success.error_message
        from_resource = SpanFactory({"service.name": "svc-a", "account_id": "acct-b"})
        assert a.export([from_resource.span("run", {"celery.action": "run"}, 200 * MS)]) == SpanExportResult.SUCCESS
        assert totals(fresh_db, "acct-b") == {}
        assert ledger(fresh_db, "SELECT reason, account_id, count(*) FROM rejected_spans GROUP BY 1, 2") == [
            ("unauthorized_producer", "acct-b", 4)
        ]
        # its own accounts, exact and by prefix, bill; so does B for acct-b, and the platform for anyone
        assert a.export(worker_spans("acct-a", "svc-a")) == SpanExportResult.SUCCESS
        assert a.export(worker_spans("team-a-7", "svc-a")) == SpanExportResult.SUCCESS
        b = exporter(collector.endpoint, headers=bearer(TOKEN_B))
        assert b.export(worker_spans("acct-b", "svc-b")) == SpanExportResult.SUCCESS
        ops = exporter(collector.endpoint, headers=bearer(TOKEN_OPS))
        assert ops.export(worker_spans("acct-z", "anything")) == SpanExportResult.SUCCESS
        for account in ("acct-a", "team-a-7", "acct-b", "acct-z"):
            assert totals(fresh_db, account) == {"worker_seconds": Decimal("0.6")}
        assert collector.metrics()['spanmeter_spans_rejected_total{reason="unauthorized_producer"}'] == 4
        assert ledger(fresh_db, "SELECT DISTINCT producer FROM rejected_spans") == [("tenant-a",)]
    finally:
        collector.kill()
    replay_authorization_is_checked_again(tmp_path, fresh_db, path)


def replay_authorization_is_checked_again(tmp_path, db, path):
    """Dead-letter replay of those spans re-checks tenant-a against the producers file as it is now: refused
    while tenant-a may not bill acct-b, billed once it may; an operator override needs --why and is recorded."""

    def replay(*args, auth_file=path, check=True):
        env = {k: v for k, v in os.environ.items() if k != "SPANMETER_AUTH_FILE"}
        if auth_file:
            env["SPANMETER_AUTH_FILE"] = str(auth_file)
        done = subprocess.run(
            [SPANMETER, "dead-letter", "replay", "--database-url", db, "--by", "ops-jane", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert (done.returncode == 0) == check, done.stdout + done.stderr
        return done

    refused = replay("--reason", "unauthorized_producer").stdout
    assert "0 billed" in refused and "rejected again: unauthorized_producer x4" in refused
    # without the producers file nothing can be checked: left pending, and the output says what to do
    unchecked = replay("--reason", "unauthorized_producer", auth_file=None).stdout
    assert "0 billed" in unchecked and "tenant-a x4" in unchecked and "--override-authorization" in unchecked
    assert totals(db, "acct-b") == {"worker_seconds": Decimal("0.6")}  # only tenant-b's own spans
    no_why = replay("--reason", "unauthorized_producer", "--override-authorization", check=False)
    assert no_why.returncode == 2 and "--why is required with --override-authorization" in no_why.stderr
    assert "Traceback" not in no_why.stderr

    one = ledger(db, "SELECT rejection_key::text FROM rejected_spans ORDER BY rejection_key LIMIT 1")[0][0]
    forced = replay("--id", one, "--override-authorization", "--why", "contract amendment OPS-77").stdout
    assert "1 billed" in forced
    # tenant-a's entry now allows acct-b: the rest pass the check as the file says now, without an override
    path.write_text(path.read_text().replace('accounts = ["acct-a", "team-a-*"]', 'accounts = ["acct-a", "acct-b"]'))
    assert "3 billed" in replay("--reason", "unauthorized_producer").stdout
    assert totals(db, "acct-b") == {"worker_seconds": Decimal("1.4")}  # 0.6 + 4 x 0.2, each once
    assert ledger(
        db,
        "SELECT authorization_check, replayed_by, reason, count(*) FROM dead_letter_replays GROUP BY 1, 2, 3 ORDER BY 1",
    ) == [
        ("override", "ops-jane", "contract amendment OPS-77", 1),
        ("producer_checked", "ops-jane", "", 3),
    ]
    assert "0 billed" in replay("--reason", "unauthorized_producer").stdout  # nothing left, nothing twice
    shown = subprocess.run(
        [SPANMETER, "dead-letter", "show", one, "--database-url", db], capture_output=True, text=True, timeout=60
    )
    document = json.loads(shown.stdout)
    assert document["producer"] == "tenant-a"
    assert (document["replay"]["authorization"], document["replay"]["why"]) == ("override", "contract amendment OPS-77")
