"""Request SLIs from the same spans: entry spans of the instrumented services become
``spanmeter_service_requests_total`` / ``spanmeter_service_request_duration_seconds`` with bounded labels,
counted once the Export call succeeded, never labelled with an account."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

from spanmeter.collector.metrics import SeriesCap
from support import SECOND, SpanFactory, exporter


def _web_and_worker_spans() -> list:
    web = SpanFactory({"service.name": "docpipe-web"})
    worker = SpanFactory({"service.name": "docpipe-worker"})
    route = {"http.request.method": "POST", "http.route": "api/documents/<int:pk>/", "account_id": "acme"}
    return [
        web.span("POST api/documents/<int:pk>/", route, 200_000_000, kind=SpanKind.SERVER),
        web.span("POST api/documents/<int:pk>/", route, 700_000_000, kind=SpanKind.SERVER),
        web.span("POST api/documents/<int:pk>/", route, 3 * SECOND, kind=SpanKind.SERVER, error=True),
        web.span("GET", {"http.request.method": "GET"}, 10_000_000, kind=SpanKind.SERVER),  # no route: a 404
        worker.span(
            "run/docpipe.extract",
            {"celery.action": "run", "celery.task_name": "docpipe.extract", "account_id": "acme"},
            1_500_000_000,
            kind=SpanKind.CONSUMER,
            error=True,
        ),
        worker.span("db.query", {"db.system": "postgresql"}, 5_000_000, kind=SpanKind.CLIENT),  # not an entry
        worker.span("render", {}, 5_000_000),  # internal: not an entry
    ]


def test_entry_spans_become_request_slis_by_service_operation_and_outcome(collector):
    before = collector.metrics()
    assert exporter(collector.endpoint).export(_web_and_worker_spans()) == SpanExportResult.SUCCESS
    after = collector.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    def requests(operation: str, outcome: str, service: str) -> float:
        return delta(
            f'spanmeter_service_requests_total{{operation="{operation}",outcome="{outcome}",service="{service}"}}'
        )

    assert requests("POST api/documents/<int:pk>/", "ok", "docpipe-web") == 2
    assert requests("POST api/documents/<int:pk>/", "error", "docpipe-web") == 1
    assert requests("GET", "ok", "docpipe-web") == 1  # no route template: the span name
    # the error series exists from a pair's first request, so rate() will see its first error
    assert after['spanmeter_service_requests_total{operation="GET",outcome="error",service="docpipe-web"}'] == 0
    assert requests("docpipe.extract", "error", "docpipe-worker") == 1  # a Celery task run that raised
    post = 'operation="POST api/documents/<int:pk>/",service="docpipe-web"'
    # durations: 0.2 s and 0.7 s and 3 s; the 0.5 s bucket holds one, the 1 s bucket two, +Inf three
    assert delta(f'spanmeter_service_request_duration_seconds_bucket{{le="0.5",{post}}}') == 1
    assert delta(f'spanmeter_service_request_duration_seconds_bucket{{le="1.0",{post}}}') == 2
    assert delta(f"spanmeter_service_request_duration_seconds_count{{{post}}}") == 3
    assert abs(delta(f"spanmeter_service_request_duration_seconds_sum{{{post}}}") - 3.9) < 1e-9
    # only entry spans; and no series carries an account
    sli = [k for k in after if k.startswith("spanmeter_service_requests_total")]
    assert sum(delta(k) for k in sli) == 5
    assert not [k for k in after if "account_id" in k and not k.startswith("spanmeter_account_quota")]


def test_label_values_are_capped_with_a_documented_overflow_value():
    cap = SeriesCap(max_pairs=20)  # at most 20 pairs, at most 2 services
    assert [cap("web", f"GET /item/{i}") for i in range(21)][-2:] == [("web", "GET /item/19"), ("web", "_overflow")]
    assert cap("worker", "task") == ("worker", "_overflow")  # the pair cap is reached: a new pair overflows
    assert cap("web", "GET /item/3") == ("web", "GET /item/3")  # known pairs keep their names
    assert cap("third-service", "x") == ("_overflow", "_overflow")  # beyond a tenth of the cap in services
