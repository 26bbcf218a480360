"""``spanmeter api`` against a ledger the demo workload filled: every figure equals the CLI's, tokens are
scoped, the committed OpenAPI document is what is served, schemathesis finds no 5xx and no schema violation,
and the billing page renders in a real Chromium for its account only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from conftest import create_database

from support import free_port, start_api

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = ("acme", "globex", "initech")
CLI = [sys.executable, "-m", "spanmeter"]


def _cli(database: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args, "--database-url", database], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _cli_json(database: str, *args: str):
    return json.loads(_cli(database, *args).stdout)


@dataclass
class Api:
    url: str
    database: str
    tokens: dict[str, str]  # account (or "operator") -> token
    proc: subprocess.Popen

    def get(self, path: str, token: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def demo_db(postgres_admin, tmp_path_factory) -> str:
    """A ledger filled by the demo workload (three accounts on their subscriptions)."""
    database = create_database(postgres_admin)
    data_dir = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([*CLI, "demo", "--documents", "1", "--database-url", database, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return database


def _token(database: str, *scope: str) -> str:
    return _cli(database, "api", "token", "new", *scope).stdout.strip()


@pytest.fixture(scope="module")
def api(demo_db) -> Api:
    tokens = {account: _token(demo_db, "--account", account) for account in ACCOUNTS}
    tokens["operator"] = _token(demo_db, "--operator")
    port = free_port()
    proc = start_api(demo_db, port)
    url = f"http://127.0.0.1:{port}"
    yield Api(url, demo_db, tokens, proc)
    proc.terminate()
    proc.wait(10)


def test_the_committed_openapi_document_is_what_the_app_serves_and_is_3_1():
    from spanmeter.api import openapi_document

    committed = json.loads((ROOT / "api" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document())), "run: spanmeter api openapi > api/openapi.json"
    assert committed["openapi"].startswith("3.1")
    paths = set(committed["paths"])
    for endpoint in ("month-to-date", "usage", "drivers", "invoices", "invoices/{number}", "entitlements"):
        assert f"/v1/accounts/{{account_id}}/{endpoint}" in paths
    assert committed["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # bad parameters are answered 400 with one message (documented), never FastAPI's 422
    for item in committed["paths"].values():
        for operation in item.values():
            assert "422" not in operation["responses"] and "400" in operation["responses"]


def test_the_served_openapi_document_equals_the_committed_one(api):
    with urllib.request.urlopen(api.url + "/openapi.json", timeout=10) as response:
        served = json.loads(response.read())
    assert served == json.loads((ROOT / "api" / "openapi.json").read_text())


def _mtd_cli(database: str, account: str) -> dict:
    return _cli_json(database, "usage", "--account", account, "--format", "json")["month_to_date"]


def test_month_to_date_equals_the_cli(api):
    for account in ACCOUNTS:
        before = _mtd_cli(api.database, account)
        status, doc = api.get(f"/v1/accounts/{account}/month-to-date", api.tokens[account])
        after = _mtd_cli(api.database, account)
        assert status == 200, doc
        assert doc["account_id"] == account
        for key in ("period", "plan_code", "pricing_version", "currency"):
            assert doc[key] == before[key] == after[key]
        assert doc["invoice_so_far"] == {"amount": before["invoice_so_far"], "currency": before["currency"]}
        # the projection is linear in time: the API's, taken between the two CLI reads, lies between them
        projected = Decimal(doc["projected_total"]["amount"])
        low, high = sorted((Decimal(before["projected_total"]), Decimal(after["projected_total"])))
        assert low <= projected <= high
        quotas = {q["metric"]: q for q in before["quotas"] if q["metric"] != "commitment"}
        meters = {m["meter"]: m for m in doc["meters"]}
        for metric, quota in quotas.items():
            used, included = Decimal(quota["used"]), Decimal(quota["included"])
            m = meters[metric]
            assert (Decimal(m["quantity"]), Decimal(m["included"])) == (used, included)
            assert Decimal(m["remaining"]) == max(included - used, 0)
            assert Decimal(m["overage"]) == max(used - included, 0)
        for metric, quantity in before["usage"].items():
            assert Decimal(meters[metric]["quantity"]) == Decimal(quantity)


def test_usage_series_add_up_to_the_cli_totals_hourly_and_daily(api):
    for account in ACCOUNTS:
        cli = _cli_json(api.database, "usage", "--account", account, "--format", "json")
        want = {m["meter_code"]: Decimal(m["quantity"]) for m in cli["meters"]}
        assert want, cli
        for granularity in ("hour", "day"):
            status, doc = api.get(f"/v1/accounts/{account}/usage?granularity={granularity}", api.tokens["operator"])
            assert status == 200, doc
            assert (doc["from"], doc["to"]) == (cli["from"], cli["to"])
            got = {s["meter"]: sum(Decimal(p["quantity"]) for p in s["points"]) for s in doc["series"]}
            assert got == want
            events = {s["meter"]: sum(p["events"] for p in s["points"]) for s in doc["series"]}
            assert events == {m["meter_code"]: m["events"] for m in cli["meters"]}
    status, doc = api.get("/v1/accounts/acme/usage?granularity=day&from=2026-12-01T05:00:00Z", api.tokens["acme"])
    assert status == 400 and "whole UTC day" in doc["detail"]


def test_drivers_equal_the_cli_and_add_up_to_the_bill(api):
    period = _mtd_cli(api.database, "acme")["period"]
    for account in ACCOUNTS:
        for by in ("job", "model", "service", "task"):
            status, doc = api.get(f"/v1/accounts/{account}/drivers?period={period}&by={by}&limit=100",
                                  api.tokens[account])  # fmt: skip
            assert status == 200, doc
            cli = _cli_json(api.database, "invoice", "drivers", "--account", account, "--period", period,
                            "--group", by, "--top", "100", "--format", "json")  # fmt: skip
            assert {k: v for k, v in doc.items() if k != "as_of"} == cli
            # every usage charge goes to some driver: the drivers and the fees add up to the bill, to the cent
            attributed = sum(Decimal(d["amount"]["amount"]) for d in doc["drivers"])
            total = Decimal(doc["total"]["amount"])
            assert abs(attributed + Decimal(doc["unattributed"]["amount"]) - total) <= Decimal("0.01") * len(
                doc["drivers"]
            )
            assert all(d["amount"]["currency"] == doc["total"]["currency"] for d in doc["drivers"])
        _, by_model = api.get(f"/v1/accounts/{account}/drivers?period={period}&by=model", api.tokens[account])
        assert "gpt-4o" in {d["key"] for d in by_model["drivers"]}  # the demo's vision model drives the token bill


def test_invoices_and_their_explanations_equal_the_cli(api):
    period = _mtd_cli(api.database, "acme")["period"]
    for account in ACCOUNTS:
        status, listing = api.get(f"/v1/accounts/{account}/invoices", api.tokens[account])
        assert status == 200, listing
        cli = _cli_json(api.database, "invoice", "--account", account, "--period", period, "--format", "json")
        first = listing["invoices"][0]
        assert first == {"invoice_number": cli["invoice_number"], "period": period, "status": "draft",
                         "total": {"amount": cli["total"], "currency": cli["currency"]}}  # fmt: skip
        status, detail = api.get(f"/v1/accounts/{account}/invoices/{first['invoice_number']}", api.tokens[account])
        assert status == 200, detail
        assert detail["invoice"] == cli
        explained = _cli_json(api.database, "invoice", "explain", "--account", account, "--period", period,
                              "--format", "json")  # fmt: skip
        assert detail["explanation"] == explained["lines"]
        status, _ = api.get(f"/v1/accounts/{account}/invoices/INV-2099-01-0001", api.tokens[account])
        assert status == 404


def test_bad_parameters_get_400_naming_them_never_a_server_error(api):
    token = api.tokens["acme"]
    cases = {
        "/v1/accounts/acme/usage?granularity=week": "granularity='week'",
        "/v1/accounts/acme/drivers?period=0000-01": "period='0000-01'",
        "/v1/accounts/acme/drivers?period=2026-12&by=color": "by='color'",
        "/v1/accounts/acme/drivers?limit=0": "limit='0'",
        "/v1/accounts/acme/invoices?limit=1000": "limit='1000'",
        "/v1/accounts/acme/usage?from=0001-01-01T00:00:00%2B01:00": "from=",
        "/v1/accounts/acme/usage?from=2026-12-01T00:00:00": "time zone",
        "/v1/accounts/acme/usage?granularity=hour&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z": "at most 2000",
        "/v1/accounts/" + "a" * 200 + "/month-to-date": "account_id=the value given",
        "/v1/accounts/acme/invoices?cursor="
        + __import__("base64").urlsafe_b64encode(b"before:0000-01").decode(): "cursor",
    }
    for path, named in cases.items():
        status, doc = api.get(path, token)
        assert status == 400, (path, status, doc)
        assert named in doc["detail"], (path, doc)
    assert api.get("/v1/accounts/acme/invoices/DRAFT-0000-01-acme", token)[0] == 404
    assert api.get("/v1/accounts/acme/invoices/DRAFT-2026-12-globex", token)[0] == 404  # another account's draft


def test_invoice_pages_follow_the_cursor_to_the_end(api):
    with psycopg.connect(api.database) as conn:  # a subscription from four months back: four more drafts
        conn.execute(
            "INSERT INTO subscriptions (account_id, plan_code, pricing_version, currency, valid_from, created_by)"
            " SELECT 'initech', plan_code, pricing_version, currency, date_trunc('month', now() - interval '4 months',"
            " 'UTC'), 'test' FROM subscriptions WHERE account_id = 'initech' ORDER BY subscription_id LIMIT 1"
        )
    seen, cursor = [], None
    while True:
        status, page = api.get("/v1/accounts/initech/invoices?limit=2" + (f"&cursor={cursor}" if cursor else ""),
                               api.tokens["initech"])  # fmt: skip
        assert status == 200, page
        seen += [item["period"] for item in page["invoices"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True) and len(set(seen)) == 5
    status, doc = api.get("/v1/accounts/initech/invoices?cursor=not-a-cursor", api.tokens["initech"])
    assert status == 400 and "cursor" in doc["detail"]
    # a past month finalized: listed as INV-…, and read back as stored, with its explanation, like the CLI's
    past = seen[2]
    _cli(api.database, "invoice", "--account", "initech", "--period", past, "--finalize", "--by", "test")
    _, page = api.get("/v1/accounts/initech/invoices?limit=6", api.tokens["initech"])
    [item] = [i for i in page["invoices"] if i["period"] == past]
    assert item["status"] == "finalized" and item["invoice_number"].startswith(f"INV-{past}-")
    status, detail = api.get(f"/v1/accounts/initech/invoices/{item['invoice_number']}", api.tokens["initech"])
    assert status == 200, detail
    cli = _cli_json(api.database, "invoice", "--account", "initech", "--period", past, "--format", "json")
    assert detail["invoice"] == cli and cli["status"] == "finalized"
    explained = _cli_json(
        api.database, "invoice", "explain", "--account", "initech", "--period", past, "--format", "json"
    )
    assert detail["explanation"] == explained["lines"]
    status, drivers = api.get(f"/v1/accounts/initech/drivers?period={past}&by=job", api.tokens["initech"])
    assert status == 200 and drivers["status"] == "finalized" and drivers["invoice_number"] == item["invoice_number"]


def test_entitlements_equal_the_cli_and_a_hard_limit_refuses(api):
    status, doc = api.get("/v1/accounts/globex/entitlements", api.tokens["globex"])
    assert status == 200, doc
    worker = next(e for e in doc["entitlements"] if e["meter"] == "worker_seconds")
    assert worker["allowed"] and worker["kind"] == "soft"
    used = Decimal(worker["used"])
    assert used > 0
    _cli(api.database, "entitlements", "set", "--plan", doc["plan_code"], "--metric", "worker_seconds",
         "--hard-limit", str(used / 2), "--max-concurrency", "2", "--fail", "closed")  # fmt: skip
    status, doc = api.get("/v1/accounts/globex/entitlements", api.tokens["globex"])
    worker = next(e for e in doc["entitlements"] if e["meter"] == "worker_seconds")
    assert worker == {"meter": "worker_seconds", "unit": "s", "used": worker["used"], "included": worker["included"],
                      "limit": format(used / 2, "f"), "kind": "hard", "remaining": "0", "allowed": False,
                      "max_concurrency": 2, "fail_policy": "closed"}  # fmt: skip
    cli = _cli_json(api.database, "entitlements", "show", "--account", "globex", "--format", "json")
    assert {k: v for k, v in cli.items() if k != "as_of"} == {k: v for k, v in doc.items() if k != "as_of"}
    bad = _cli(api.database, "entitlements", "set", "--plan", "growth", "--metric", "tokenz", check=False)
    assert bad.returncode == 2 and "--metric 'tokenz'" in bad.stderr and "Traceback" not in bad.stderr


def test_tokens_are_scoped_hashed_and_revocable(api):
    missing = "/v1/accounts/acme/month-to-date"
    status, doc = api.get(missing)
    assert status == 401 and "Bearer" in doc["detail"]
    assert api.get(missing, "spm_" + "x" * 43)[0] == 401
    assert api.get(missing, "not even a token")[0] == 401
    # an account token learns nothing about other accounts: the same 404 as for an account that does not exist
    other = api.get("/v1/accounts/globex/month-to-date", api.tokens["acme"])
    nobody = api.get("/v1/accounts/nobody-at-all/month-to-date", api.tokens["operator"])
    assert other == nobody and other[0] == 404
    for path in ("usage", "drivers", "invoices", "invoices/DRAFT-2026-12-globex", "entitlements"):
        assert api.get(f"/v1/accounts/globex/{path}", api.tokens["acme"]) == (404, nobody[1])
    assert api.get("/v1/accounts/globex/month-to-date", api.tokens["operator"])[0] == 200
    # only the SHA-256 is stored
    with psycopg.connect(api.database) as conn:
        stored = conn.execute("SELECT * FROM api_tokens").fetchall()
    assert len(stored) >= 4 and not any(api.tokens["acme"] in str(row) for row in stored)
    listing = _cli(api.database, "api", "token", "list").stdout
    assert "operator" in listing and not any(t in listing for t in api.tokens.values())
    # revoked: refused (a token never seen by the API, so no cache stands in the way)
    fresh = _token(api.database, "--account", "acme")
    token_id = _cli(api.database, "api", "token", "list", "--account", "acme").stdout.splitlines()[-1].split()[0]
    _cli(api.database, "api", "token", "revoke", token_id)
    assert api.get(missing, fresh)[0] == 401
    unknown = _cli(api.database, "api", "token", "revoke", "tok_000000000000", check=False)
    assert unknown.returncode == 2 and "no token" in unknown.stderr


def test_a_listen_address_off_loopback_needs_tls_or_insecure_listen(demo_db):
    proc = subprocess.run([*CLI, "api", "--listen", "0.0.0.0:18765", "--database-url", demo_db],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--tls-cert" in proc.stderr and "--insecure-listen" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*CLI, "api", "--listen", "nonsense", "--database-url", demo_db],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "HOST:PORT" in proc.stderr


def test_schemathesis_finds_no_server_error_and_no_schema_violation(api, tmp_path):
    st = Path(sys.executable).parent / "st"
    assert st.exists(), "schemathesis is a test dependency: ./scripts/bootstrap.sh installs it"
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\naccount_id = "acme"\n')
    checks = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
    for extra in ([], ["--config-file", str(config)]):  # any account ids, then the one with data
        command = [str(st), *extra, "run", str(ROOT / "api" / "openapi.json"), "--url", api.url,
                   "-H", f"Authorization: Bearer {api.tokens['acme']}", "-c", checks, "-n", "30", "--seed", "7",
                   "--generation-database", "none", "-w", "1"]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "NO_COLOR": "1"})  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout and "failed" not in proc.stdout.split("SUMMARY")[-1]


def test_the_billing_page_renders_in_chromium_for_its_account_only(api):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("Chromium is needed: sudo apt-get install -y chromium (./scripts/test.sh installs it as root)",
                    pytrace=False)  # fmt: skip
    from playwright.sync_api import sync_playwright

    _, mtd = api.get("/v1/accounts/acme/month-to-date", api.tokens["acme"])
    _, usage = api.get("/v1/accounts/acme/usage", api.tokens["acme"])
    _, globex = api.get("/v1/accounts/globex/month-to-date", api.tokens["globex"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(api.url + "/accounts/acme")
        assert page.url.startswith(api.url + "/login")  # no session yet: the sign-in form
        page.fill("input[name=token]", "spm_" + "y" * 43)
        page.click("button[type=submit]")
        assert "not valid" in page.text_content("body")
        page.fill("input[name=token]", api.tokens["acme"])
        page.click("button[type=submit]")
        page.wait_for_url(api.url + "/accounts/acme")
        assert page.text_content("#account") == "acme"
        so_far = f"{Decimal(mtd['invoice_so_far']['amount']):,.2f} EUR"
        assert so_far in page.text_content("#invoice-so-far")
        assert f"{Decimal(mtd['projected_total']['amount']):,.2f} EUR" in page.text_content("#projected")
        charts = page.locator("#chart svg")
        assert sorted(charts.nth(i).get_attribute("data-meter") for i in range(charts.count())) == sorted(
            s["meter"] for s in usage["series"]
        )
        today = mtd["as_of"][:10]
        for i in range(charts.count()):  # today's bar is drawn (the demo's usage is today's)
            bar = charts.nth(i).locator("rect", has=page.locator(f"title:text-matches('^{today}:')"))
            assert float(bar.get_attribute("height")) > 0
        for m in mtd["meters"]:
            assert page.text_content(f"#meters tr[data-meter={m['meter']}] td:nth-child(2)") == m["quantity"]
        assert page.locator("#drivers tr").count() >= 2 and page.locator("#invoices tr").count() >= 2
        assert "globex" not in page.content() and globex["account_id"] == "globex"
        [cookie] = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0
        assert api.tokens["acme"] not in cookie["value"] and cookie["value"].startswith("tok_")
        assert page.evaluate("document.scripts.length") == 0  # works without JavaScript: there is none
        # the acme session cannot open globex's page
        response = page.goto(api.url + "/accounts/globex")
        assert response is not None and response.status == 404
        assert "globex" not in page.text_content("h1") and "Not found" in page.text_content("h1")
        assert "script-src" not in (response.headers.get("content-security-policy") or "x")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page.click("text=Sign in")
        # another site cannot post a token to sign a browser in (login CSRF), nor sign it out
        for path in ("/login", "/logout"):
            response = page.request.post(api.url + path, form={"token": api.tokens["acme"]},
                                         headers={"Origin": "https://evil.example"}, max_redirects=0)  # fmt: skip
            assert response.status == 403, path
        browser.close()
