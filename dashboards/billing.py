"""The usage and billing dashboard (uid ``spanmeter-billing``), from the ledger in PostgreSQL only.

Per-account figures never go into Prometheus labels, so every panel here is SQL on the PostgreSQL
datasource ``$ledger``, which logs in as the SELECT-only role ``spanmeter_grafana`` (migration
``0004_operations``). It reads the rollups, never ``usage_events``: the role cannot read the raw ledger
(the top jobs table goes through one narrow function, below).

Panels (``$account`` filters all but the reconciliation runs):

- usage per meter and per (span) plan over time, from ``usage_rollups_hourly_live`` (folded rollups +
  pending deltas, migration ``0005_rollup_deltas``) in hourly buckets;
- top 10 accounts per meter in the time range (hourly buckets that start in the range);
- month to date, from ``account_month_to_date`` (rewritten by ``spanmeter serve`` every minute): each
  account's draft invoice so far and its linear projection for the current UTC month, totals per
  currency, and how old the figures are;
- subscriptions in force now; finalized invoices (finalized in the range) and their lines per meter;
  usage corrections that occurred in the range; ``spanmeter reconcile`` runs that ran in the range;
- the top jobs per account and meter in the range, each trace id a link to ``$trace_viewer`` (a text variable:
  the trace viewer's URL, the trace id appended), read through ``spanmeter_top_jobs`` (migration 0017: the
  one SECURITY DEFINER door to raw rows, job and trace ids only, at most 93 days).

Quantities are ``numeric`` in the ledger and money always sits next to its ``Currency`` column (amounts
in different currencies are never added up). ``$account`` is multi-select: ``SELECT DISTINCT account_id
FROM subscriptions``; its All value is the literal ``'*'``, which :data:`ACCOUNT_FILTER` reads as every
account (including accounts with usage but no subscription, and on an empty ledger, where a list of all
options would be empty and ``IN ()`` invalid).
"""

from __future__ import annotations

from . import builder as b

__all__ = ["ACCOUNT_ALL", "ACCOUNT_FILTER", "account_filter", "billing"]

ACCOUNT_ALL = "'*'"


def account_filter(column: str = "account_id") -> str:
    """SQL: ``column`` is one of the selected accounts, or All is selected."""
    return f"({ACCOUNT_ALL} IN ($account) OR {column} IN ($account))"


ACCOUNT_FILTER = account_filter()
THIS_MONTH = "period_start = date_trunc('month', now(), 'UTC')"
MONEY = ("Invoice so far", "Projected total", "Total", "Amount")
TIMES = ("Computed at", "Since", "Until", "Finalized at", "Ran at", "Occurred at", "Recorded at")


def _table_overrides() -> list[dict]:
    return [b.override("byName", name, decimals=2) for name in MONEY] + [
        b.override("byName", name, unit="dateTimeAsIso") for name in TIMES
    ]


def _usage_series(label_sql: str) -> str:
    return f"""
SELECT $__timeGroupAlias(bucket_start, '1h'), {label_sql} AS metric, sum(quantity) AS quantity
FROM usage_rollups_hourly_live
WHERE $__timeFilter(bucket_start) AND {ACCOUNT_FILTER}
GROUP BY 1, 2
ORDER BY 1
"""


SECONDS = [b.override("byRegexp", ".*_seconds", unit="s")]


def _usage_row() -> tuple:
    return b.row(
        "Usage",
        b.timeseries(
            "Usage per meter (hourly)",
            "Committed usage per meter and hour (worker and GPU seconds, tokens, API requests), from the hourly "
            "rollups (folded + pending). A meter dropping to 0 for accounts that are active: check the pipeline dashboard "
            "(rejects, unattributed spans) before invoicing.",
            [b.sql(_usage_series("meter_code"))],
            unit="short",
            stacked=True,
            bars=True,
            overrides=SECONDS,
        ),
        b.timeseries(
            "Usage per plan (hourly)",
            "The same usage split by the plan code the spans carried ('(no plan)' when they carried none). "
            "Usage under '(no plan)' or a plan the account is not subscribed to shows as a plan mismatch on "
            "the invoice: fix the producer's baggage or the subscription.",
            [b.sql(_usage_series("coalesce(nullif(plan_code, ''), '(no plan)') || ' ' || meter_code"))],
            unit="short",
            stacked=True,
            bars=True,
            overrides=SECONDS,
        ),
        b.table(
            "Top accounts per meter",
            "The 10 largest accounts per meter over the time range (hourly buckets starting in it). An "
            "account far above its usual share: check for a runaway job or a producer replaying old spans "
            "before the invoice goes out.",
            [
                b.sql(
                    f"""
SELECT meter_code AS "Meter", account_id AS "Account", quantity AS "Quantity", events AS "Events"
FROM (
    SELECT meter_code, account_id, sum(quantity) AS quantity, sum(events) AS events,
           row_number() OVER (PARTITION BY meter_code ORDER BY sum(quantity) DESC, account_id) AS rank
    FROM usage_rollups_hourly_live
    WHERE $__timeFilter(bucket_start) AND {ACCOUNT_FILTER}
    GROUP BY meter_code, account_id
) ranked
WHERE rank <= 10
ORDER BY meter_code, rank
""",
                    table=True,
                )
            ],
            height=10,
        ),
    )


def _month_to_date_row() -> tuple:
    return b.row(
        "Month to date (current UTC month)",
        b.table(
            "Month-to-date bill and projection per account",
            "Each account's draft invoice so far this month and the linear projection to the month's end "
            "(an estimate), in the account's currency; beside it, what that usage costs you at the price books' "
            "cost entries and the margin (invoice so far minus cost; empty when no book entry has a cost), and "
            "the (model, meter) pairs no price book prices (not zero: `spanmeter prices unpriced`; the invoice "
            "cannot be finalized). A projection far above the usual bill: warn the customer or check the usage "
            "above. Empty: `spanmeter serve` has not refreshed yet, or no account has a subscription this month.",
            [
                b.sql(
                    f"""
SELECT account_id AS "Account", plan_code AS "Plan", pricing_version AS "Pricing version",
       currency AS "Currency", invoice_so_far AS "Invoice so far", projected_total AS "Projected total",
       cost_so_far AS "Provider cost so far", invoice_so_far - cost_so_far AS "Margin so far",
       unpriced_items AS "Unpriced models", computed_at AS "Computed at"
FROM account_month_to_date
WHERE {THIS_MONTH} AND {ACCOUNT_FILTER}
ORDER BY projected_total DESC, account_id
""",
                    table=True,
                )
            ],
            width=16,
            height=10,
            overrides=_table_overrides(),
        ),
        b.table(
            "Month to date per currency",
            "Sum of the month-to-date drafts, projections, provider costs and margins per currency (never "
            "across currencies: spanmeter has no FX table and never converts).",
            [
                b.sql(
                    f"""
SELECT currency AS "Currency", count(*) AS "Accounts", sum(invoice_so_far) AS "Invoice so far",
       sum(projected_total) AS "Projected total", sum(cost_so_far) AS "Provider cost so far",
       sum(invoice_so_far - cost_so_far) AS "Margin so far (accounts with a cost)"
FROM account_month_to_date
WHERE {THIS_MONTH} AND {ACCOUNT_FILTER}
GROUP BY currency
ORDER BY currency
""",
                    table=True,
                )
            ],
            width=8,
            height=6,
            overrides=_table_overrides(),
        ),
        b.stat(
            "Month-to-date figures age",
            "Seconds since `spanmeter serve` last rewrote `account_month_to_date` (every 60 s by default). "
            "Above 15 minutes: its billing refresh fails; see *Billing metrics refresh errors* on the pipeline "
            "dashboard and the serve logs. No value: never computed this month.",
            [
                b.sql(
                    f"SELECT extract(epoch FROM now() - max(computed_at)) AS age FROM account_month_to_date "
                    f"WHERE {THIS_MONTH}",
                    table=True,
                )
            ],
            unit="s",
            steps=b.thresholds(("green", None), ("orange", 300), ("red", 900)),
            width=8,
        ),
    )


def _invoices_row() -> tuple:
    return b.row(
        "Subscriptions and invoices",
        b.table(
            "Subscriptions in force now",
            "The subscription each account is on now (latest start not after now, not ended). An active "
            "account missing here has usage that no invoice rates: add its subscription with "
            "`spanmeter subscription set --account …`.",
            [
                b.sql(
                    f"""
SELECT account_id AS "Account", plan_code AS "Plan", pricing_version AS "Pricing version",
       currency AS "Currency", valid_from AS "Since", valid_to AS "Until"
FROM (
    SELECT DISTINCT ON (account_id) account_id, plan_code, pricing_version, currency, valid_from, valid_to
    FROM subscriptions
    WHERE valid_from <= now() AND {ACCOUNT_FILTER}
    ORDER BY account_id, valid_from DESC, subscription_id DESC
) latest
WHERE valid_to IS NULL OR valid_to > now()
ORDER BY account_id
""",
                    table=True,
                )
            ],
            width=12,
            height=9,
            overrides=_table_overrides(),
        ),
        b.table(
            "Finalized invoices",
            "Invoices finalized in the time range, as issued (immutable). A total that looks wrong: compare with "
            "`spanmeter invoice --account ID --period YYYY-MM`, then correct with `spanmeter ledger adjust`; the "
            "correction lands on the next open invoice, never on this one.",
            [
                b.sql(
                    f"""
SELECT invoice_number AS "Invoice", account_id AS "Account",
       to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM') AS "Period", pricing_version AS "Pricing version",
       currency AS "Currency", total AS "Total", finalized_at AS "Finalized at", finalized_by AS "Finalized by"
FROM invoices
WHERE $__timeFilter(finalized_at) AND {ACCOUNT_FILTER}
ORDER BY finalized_at DESC, invoice_number
""",
                    table=True,
                )
            ],
            width=12,
            height=9,
            overrides=_table_overrides(),
        ),
        b.table(
            "Invoiced per meter",
            "Lines of the invoices finalized in the range, summed per kind, meter and currency. Late usage "
            "and corrections appear as their own kinds; a large `adjustment` amount deserves a look at the "
            "corrections below.",
            [
                b.sql(
                    f"""
SELECT l.kind AS "Kind", coalesce(l.meter_code, '') AS "Meter", l.currency AS "Currency",
       sum(l.quantity) AS "Quantity", sum(l.amount) AS "Amount", count(DISTINCT l.invoice_number) AS "Invoices"
FROM invoice_lines l
JOIN invoices i ON i.invoice_number = l.invoice_number
WHERE $__timeFilter(i.finalized_at) AND {account_filter("i.account_id")}
GROUP BY l.kind, l.meter_code, l.currency
ORDER BY l.currency, sum(l.amount) DESC
""",
                    table=True,
                )
            ],
            width=12,
            height=8,
            overrides=_table_overrides(),
        ),
        b.table(
            "Usage corrections",
            "Corrections (`spanmeter ledger adjust`) whose usage occurred in the range; append-only, signed "
            "(negative takes usage away). Each needs a reason and a reference; one without: ask who made it.",
            [
                b.sql(
                    f"""
SELECT occurred_at AS "Occurred at", account_id AS "Account", meter_code AS "Meter", quantity AS "Quantity",
       reason AS "Reason", coalesce(reference, '') AS "Reference", created_by AS "By", created_at AS "Recorded at"
FROM usage_adjustments
WHERE $__timeFilter(occurred_at) AND {ACCOUNT_FILTER}
ORDER BY occurred_at DESC, idempotency_key
""",
                    table=True,
                )
            ],
            width=12,
            height=8,
            overrides=_table_overrides(),
        ),
    )


TRACE_VIEWER_DEFAULT = "http://localhost:16686/trace/"


def _jobs_row() -> tuple:
    return b.row(
        "Jobs and their traces",
        b.table(
            "Top jobs per account and meter (links to their traces)",
            "The jobs that used the most of each meter in the time range, per selected account (All: the 5 "
            "accounts with the most rows), each with its rows, quantity, first and last time and one trace id, a link to the trace "
            "viewer of `$trace_viewer` (the trace id is appended; Jaeger: `http://jaeger:16686/trace/`). "
            "`spanmeter invoice explain` shows the same per invoice line. Read through `spanmeter_top_jobs` "
            "(migration 0017): raw rows, bounded by account and time, at most 93 days (narrow the range if "
            "refused), job and trace ids only.",
            [
                b.sql(
                    """
SELECT account_id AS "Account", meter_code AS "Meter", job_id AS "Job", rows AS "Rows", quantity AS "Quantity",
       first_at AS "First", last_at AS "Last", trace_id AS "Trace"
FROM spanmeter_top_jobs(ARRAY[$account]::text[], $__timeFrom(), $__timeTo(), 10)
ORDER BY account_id, meter_code, quantity DESC, job_id
""",
                    table=True,
                )
            ],
            height=10,
            overrides=[
                *_table_overrides(),
                b.override("byName", "First", unit="dateTimeAsIso"),
                b.override("byName", "Last", unit="dateTimeAsIso"),
                b.override(
                    "byName",
                    "Trace",
                    links=[{"title": "Open the trace", "url": "${trace_viewer}${__value.raw}", "targetBlank": True}],
                ),
            ],
        ),
    )


def _reconciliation_row() -> tuple:
    return b.row(
        "Reconciliation",
        b.table(
            "Reconciliation runs",
            "`spanmeter reconcile --period YYYY-MM` runs in the range (all accounts). Delta not 0: rollup differences → "
            "`spanmeter rollups rebuild`; invoice differences → late usage or a correction to bill; unrated "
            "usage → an account without a subscription. The run's JSON details are in `reconciliation_runs`.",
            [
                b.sql(
                    """
SELECT run_id AS "Run", to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM') AS "Period", ran_at AS "Ran at",
       delta AS "Delta", (details->>'accounts_checked')::int AS "Accounts",
       (details->>'invoices_checked')::int AS "Invoices",
       jsonb_array_length(details->'rollup_differences') AS "Rollup differences",
       jsonb_array_length(details->'invoice_differences') AS "Invoice differences",
       jsonb_array_length(details->'unrated_usage') AS "Unrated usage"
FROM reconciliation_runs
WHERE $__timeFilter(ran_at)
ORDER BY run_id DESC
""",
                    table=True,
                )
            ],
            height=8,
            overrides=[
                *_table_overrides(),
                b.override(
                    "byName",
                    "Delta",
                    custom__cellOptions={"type": "color-background"},
                    thresholds=b.thresholds(("green", None), ("red", 0.000001)),
                ),
            ],
        ),
    )


def billing(uid: str, tags: list[str]) -> dict:
    """The dashboard JSON model."""
    return b.dashboard(
        uid=uid,
        title="spanmeter / Usage and billing",
        description="Usage per meter and plan, top accounts, month-to-date bills and projections, invoices, "
        "corrections and reconciliation, from the ledger (PostgreSQL, SELECT-only role).",
        tags=tags,
        refresh="5m",
        time_from="now-30d",
        variables=[
            b.postgres_datasource_variable(),
            b.query_variable(
                "account",
                "Account",
                b.LEDGER,
                "SELECT DISTINCT account_id FROM subscriptions",
                multi=True,
                include_all=True,
                all_value=ACCOUNT_ALL,
            ),
            b.textbox_variable(
                "trace_viewer",
                "Trace viewer URL",
                TRACE_VIEWER_DEFAULT,
                "A trace id is appended to it for the links of the top jobs table (Jaeger: "
                "http://jaeger:16686/trace/; set it as SPANMETER_TRACE_URL_TEMPLATE without {trace_id})",
            ),
        ],
        rows=[_usage_row(), _month_to_date_row(), _invoices_row(), _jobs_row(), _reconciliation_row()],
    )
