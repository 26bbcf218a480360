"""The one-import set-up in real processes: spans flushed on SIGTERM and on worker-process shutdown, an
application's own TracerProvider reused; and, each in a fresh interpreter (it changes process-wide
OpenTelemetry state), instrument/uninstrument symmetry, propagation, configuration and drop counting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spanmeter.demo import workload
from spanmeter.demo.stack import DemoStack, sqla_broker_url
from support import ledger, wait_until

pytestmark = pytest.mark.integration  # every test runs an instrumented application in a subprocess

APPS = Path(__file__).parent / "apps"


def _python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none", **env},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rows(stack: DemoStack, job: str) -> list[tuple]:
    return ledger(
        stack.database_conninfo,
        "SELECT meter_code, metadata->>'service.name' FROM usage_events WHERE job_id = %s ORDER BY 1",
        (job,),
    )


@pytest.mark.slow
def test_sigterm_and_worker_shutdown_flush_what_the_batch_queue_still_holds(postgres_admin, tmp_path):
    from conftest import create_database

    database = create_database(postgres_admin)
    # a 10-minute batch delay: spans leave the processes only when they are flushed
    stack = DemoStack(
        database, sqla_broker_url(database), tmp_path, extra_env={"OTEL_BSP_SCHEDULE_DELAY": "600000"}
    ).start()
    try:
        job = stack.submit(workload.Submission("acme", "starter", workload.Document("flush", 2, 2)))
        wait_until(
            lambda: any("docpipe.classify_document" in line and "succeeded" in line for line in stack.worker.lines),
            timeout=60,
            what="the pipeline to finish",
        )
        assert _rows(stack, job) == []  # nothing exported yet
        assert stack.web.stop() is not None and stack.worker.stop() is not None
        wait_until(lambda: len(_rows(stack, job)) == 7, timeout=30, what="the flushed rows")
        meters = [meter for meter, _ in _rows(stack, job)]
        assert meters == sorted(
            ["api_requests", "gpu_seconds", "input_tokens", "output_tokens", *["worker_seconds"] * 3]
        )
    finally:
        stack.stop()


@pytest.mark.slow
def test_an_existing_tracer_provider_is_reused_not_replaced(postgres_admin, tmp_path):
    from conftest import create_database

    database = create_database(postgres_admin)
    env = {
        "DJANGO_SETTINGS_MODULE": "preexisting_settings",
        "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
    }
    stack = DemoStack(database, sqla_broker_url(database), tmp_path, extra_env=env).start()
    try:
        job = stack.submit(workload.Submission("globex", "growth", workload.Document("reuse", 1, 1)))
        wait_until(lambda: len(_rows(stack, job)) == 7, timeout=60, what="the job's rows")
        services = dict(_rows(stack, job))
        assert services["api_requests"] == "app-owned-provider"  # the application's provider and resource
        assert services["worker_seconds"] == "docpipe-worker"
    finally:
        stack.stop()


def test_instrument_is_idempotent_and_uninstrument_undoes_it():
    result = _python(
        """
        import json
        from opentelemetry import propagate, trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from spanmeter.instrumentation import bootstrap

        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        original_sampler, original_propagator = provider.sampler, propagate.get_global_textmap()
        before = len(provider._active_span_processor._span_processors)
        memory = InMemorySpanExporter()
        first = bootstrap.instrument(exporter=memory, schedule_delay_millis=50)
        second = bootstrap.instrument(exporter=InMemorySpanExporter())
        import spanmeter.instrumentation.auto  # the one import, a third time
        during = len(provider._active_span_processor._span_processors)
        sampler_during = provider.sampler.get_description().split("{")[:2]
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        celery_during = CeleryInstrumentor().is_instrumented_by_opentelemetry
        with trace.get_tracer("t").start_as_current_span("work", attributes={"spanmeter.work_unit": True}):
            pass
        bootstrap.uninstrument()
        bootstrap.uninstrument()
        print(json.dumps({
            "same": first is second,
            "added": during - before,
            "after": len(provider._active_span_processor._span_processors) - before,
            "sampler_during": sampler_during,
            "sampler_restored": provider.sampler is original_sampler,
            "propagator_restored": propagate.get_global_textmap() is original_propagator,
            "provider_kept": trace.get_tracer_provider() is provider,
            "celery_during": celery_during,
            "celery_after": CeleryInstrumentor().is_instrumented_by_opentelemetry,
            "exported": [s.name for s in memory.get_finished_spans()],
        }))
        """
    )
    assert result == {
        "same": True,
        "added": 1,
        "after": 0,
        "sampler_during": ["BillingSafeSampler", "ParentBased"],  # the app's sampler, wrapped
        "sampler_restored": True,
        "propagator_restored": True,
        "provider_kept": True,
        "celery_during": True,
        "celery_after": False,
        "exported": ["work"],
    }


def test_a_new_provider_comes_from_the_standard_variables():
    result = _python(
        """
        import json
        from opentelemetry import trace
        import spanmeter.instrumentation.auto
        provider = trace.get_tracer_provider()
        print(json.dumps({
            "resource": {k: v for k, v in provider.resource.attributes.items()
                         if not k.startswith("telemetry.") and k != "service.instance.id"},
            "sampler": provider.sampler.get_description(),
        }))
        """,
        OTEL_SERVICE_NAME="billing-api",
        OTEL_RESOURCE_ATTRIBUTES="service.version=7.1,team=payments",
        SPANMETER_SERVICE_VERSION="ignored-because-otel-wins",
        SPANMETER_ENVIRONMENT="staging",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.1",
    )
    assert result["resource"] == {
        "service.name": "billing-api",
        "service.version": "7.1",
        "team": "payments",
        "deployment.environment.name": "staging",
    }
    assert result["sampler"] == "BillingSafeSampler{TraceIdRatioBased{0.1}}"


def test_sdk_disabled_means_nothing_is_set_up_and_bad_settings_are_all_named():
    result = _python(
        """
        import json
        from opentelemetry import trace
        from spanmeter.instrumentation import bootstrap
        from spanmeter.instrumentation.config import InstrumentationConfigError, load_instrumentation_config
        state = bootstrap.instrument()
        try:
            load_instrumentation_config({"SPANMETER_TRUSTED_HEADERS": "maybe", "SPANMETER_FLUSH_TIMEOUT_MILLIS": "-1",
                                         "SPANMETER_ATTRIBUTION_RESOLVER": "no_colon"})
            problems = []
        except InstrumentationConfigError as exc:
            problems = [p.split("=")[0] for p in exc.problems]
        print(json.dumps({"state": state is None, "provider": type(trace.get_tracer_provider()).__name__,
                          "problems": problems}))
        """,
        OTEL_SDK_DISABLED="true",
    )
    assert result == {
        "state": True,
        "provider": "ProxyTracerProvider",
        "problems": ["SPANMETER_ATTRIBUTION_RESOLVER", "SPANMETER_FLUSH_TIMEOUT_MILLIS", "SPANMETER_TRUSTED_HEADERS"],
    }


def test_reserved_baggage_is_stripped_from_http_but_kept_from_celery_messages():
    result = _python(
        """
        import json
        from opentelemetry import baggage, propagate
        from opentelemetry.instrumentation.celery import celery_getter
        import spanmeter.instrumentation.auto

        class Request:  # what the Celery getter reads: message headers as attributes
            baggage = "account_id=acme,job_id=j-1,plan_code=growth,spanmeter.synthetic=true,tenant.region=eu"
        http = {"baggage": Request.baggage}
        print(json.dumps({
            "http": dict(baggage.get_all(propagate.extract(http))),
            "celery": dict(baggage.get_all(propagate.extract(Request(), getter=celery_getter))),
        }))
        """
    )
    assert result["http"] == {"tenant.region": "eu"}
    assert result["celery"] == {
        "account_id": "acme",
        "job_id": "j-1",
        "plan_code": "growth",
        "spanmeter.synthetic": "true",
        "tenant.region": "eu",
    }


def test_a_full_queue_and_a_failing_exporter_are_counted_as_drops():
    result = _python(
        """
        import json, threading
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
        from spanmeter.instrumentation import metrics
        from spanmeter.instrumentation.exporting import ProcessLocalExporter
        from spanmeter.instrumentation.processors import SpanmeterSpanProcessor

        release = threading.Event()
        class Stuck(SpanExporter):
            def export(self, spans):
                release.wait(10)
                return SpanExportResult.FAILURE
            def shutdown(self):
                pass
        processor = SpanmeterSpanProcessor(ProcessLocalExporter(Stuck), max_queue_size=4, max_export_batch_size=2,
                                           schedule_delay_millis=10)
        provider = TracerProvider()
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("t")
        for i in range(20):
            tracer.start_span("work", attributes={"spanmeter.work_unit": True}).end()
        release.set()
        processor.force_flush()
        counts = metrics.snapshot()
        print(json.dumps(counts))
        """
    )
    assert result["exported"] == 0
    assert result["queue_full"] > 0
    assert result["queue_full"] + result["export_failed"] == 20  # every span: lost and counted, never silently


def test_the_exporter_is_rebuilt_in_a_forked_child():
    result = _python(
        """
        import json, os
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
        from spanmeter.instrumentation.exporting import ProcessLocalExporter

        built = []
        class Recorder(SpanExporter):
            def __init__(self):
                built.append(os.getpid())
            def export(self, spans):
                return SpanExportResult.SUCCESS
            def shutdown(self):
                pass
        exporter = ProcessLocalExporter(Recorder)
        exporter.export([])
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            exporter.export([])
            os.write(write, json.dumps(built).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        child_built = json.loads(os.read(read, 1000))
        print(json.dumps({"parent": built, "child": child_built, "child_pid": pid}))
        """
    )
    assert len(result["parent"]) == 1
    assert result["child"] == [result["parent"][0], result["child_pid"]]


DJANGO_APP = """
import json, sys, types
from django.conf import settings

app = types.ModuleType("resolvers")
def broken(request):
    raise RuntimeError("resolver bug")
def by_api_key(request):
    from spanmeter.instrumentation.django import Attribution
    key = request.headers.get("X-Api-Key")
    return Attribution(account_id="key-" + key, job_id="supplied-job") if key else None
app.broken, app.by_api_key = broken, by_api_key
sys.modules["resolvers"] = app

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from spanmeter.instrumentation import bootstrap
memory = InMemorySpanExporter()
bootstrap.instrument(exporter=memory, schedule_delay_millis=10)

from django.http import JsonResponse
from django.urls import path
from opentelemetry import baggage

def view(request):
    attribution = getattr(request, "spanmeter", None)
    return JsonResponse({"baggage": dict(baggage.get_all()),
                         "job_id": attribution.job_id if attribution else None})

urls = types.ModuleType("urls")
urls.urlpatterns = [path("v", view)]
sys.modules["urls"] = urls
settings.configure(
    ROOT_URLCONF="urls", ALLOWED_HOSTS=["*"], SECRET_KEY="t", DEBUG=False,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware"],
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    **({"SPANMETER_ATTRIBUTION_RESOLVER": RESOLVER} if RESOLVER else {}),
)
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from django.test import Client

user = User.objects.create_user("carol", password="pw")
client = Client()
out = {}
out["anonymous"] = client.get("/v", HTTP_BAGGAGE="account_id=mallory").json()
out["gateway"] = client.get("/v", HTTP_X_SPANMETER_ACCOUNT_ID="acme", HTTP_X_SPANMETER_PLAN_CODE="growth").json()
client.force_login(user)
out["user"] = client.get("/v").json()
out["api_key"] = Client().get("/v", HTTP_X_API_KEY="k1").json()
from django.conf import settings as s
out["middleware"] = list(s.MIDDLEWARE)
bootstrap.current().flush()
out["server_spans"] = sorted(
    (span.attributes.get("account_id") or "-", span.attributes.get("http.route") or span.name)
    for span in memory.get_finished_spans()
)
print(json.dumps(out))
"""


def _django(resolver: str | None, **env: str) -> dict:
    return _python(f"RESOLVER = {resolver!r}\n" + DJANGO_APP, **env)


def test_the_middleware_sits_after_authentication_and_attributes_the_authenticated_user():
    result = _django(None)
    assert result["middleware"] == [
        "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "spanmeter.instrumentation.django.SpanmeterMiddleware",
    ]
    assert result["anonymous"] == {"baggage": {}, "job_id": None}  # the client's baggage was stripped
    assert result["gateway"] == {"baggage": {}, "job_id": None}  # headers are not trusted by default
    user = result["user"]
    assert user["baggage"]["account_id"] == "carol" and user["baggage"]["job_id"] == user["job_id"]
    assert len(user["job_id"]) == 32  # a new UUID per request
    assert [account for account, _ in result["server_spans"]].count("carol") == 1


def test_trusted_gateway_headers_and_a_custom_resolver():
    trusted = _django(None, SPANMETER_TRUSTED_HEADERS="true")
    assert trusted["gateway"]["baggage"] == {
        "account_id": "acme",
        "job_id": trusted["gateway"]["job_id"],
        "plan_code": "growth",
    }
    custom = _django("resolvers:by_api_key")
    assert custom["api_key"] == {
        "baggage": {"account_id": "key-k1", "job_id": "supplied-job"},
        "job_id": "supplied-job",
    }
    assert custom["user"] == {"baggage": {}, "job_id": None}  # the custom resolver decides alone


def test_a_failing_resolver_never_fails_the_request():
    result = _django("resolvers:broken")
    assert result["anonymous"] == {"baggage": {}, "job_id": None}
    assert result["user"] == {"baggage": {}, "job_id": None}


def test_celery_is_instrumented_when_the_application_imports_it_and_never_loaded_before():
    result = _python(
        """
        import json, sys
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from spanmeter.instrumentation import bootstrap

        bootstrap.instrument(exporter=InMemorySpanExporter())
        loaded_before = "celery" in sys.modules  # a Django-only service pays nothing for Celery
        from celery import Celery  # the application's Celery module, imported later

        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        instrumented = CeleryInstrumentor().is_instrumented_by_opentelemetry
        bootstrap.uninstrument()
        print(json.dumps({
            "loaded_before": loaded_before,
            "instrumented_on_import": instrumented,
            "after_uninstrument": CeleryInstrumentor().is_instrumented_by_opentelemetry,
        }))
        """
    )
    assert result == {"loaded_before": False, "instrumented_on_import": True, "after_uninstrument": False}


def test_uninstrumenting_before_celery_is_imported_leaves_it_alone():
    result = _python(
        """
        import json
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from spanmeter.instrumentation import bootstrap

        bootstrap.instrument(exporter=InMemorySpanExporter())
        bootstrap.uninstrument()
        import celery
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        print(json.dumps({"instrumented": CeleryInstrumentor().is_instrumented_by_opentelemetry}))
        """
    )
    assert result == {"instrumented": False}


def test_at_an_sdk_layout_it_does_not_know_the_import_degrades_and_counts_never_raises():
    """An SDK whose batch queue spanmeter cannot reach: sampled spans are still exported, a billable span the
    sampler dropped is counted (not silently lost), one warning, spanmeter_sdk_degraded{hook="batch_queue"}."""
    out = _python(
        """
        import json, logging
        logging.basicConfig(level=logging.WARNING)
        import spanmeter.instrumentation.processors as processors
        processors._layout_of = lambda processor: "unknown"  # as if the SDK's internals had moved
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from spanmeter.instrumentation import bootstrap, metrics
        memory = InMemorySpanExporter()
        state = bootstrap.instrument(exporter=memory)
        from opentelemetry import trace
        from spanmeter.instrumentation.helpers import attribution, gpu_section
        tracer = trace.get_tracer("t")
        with attribution(account_id="acct-x", job_id="j", plan_code="p"):
            with tracer.start_as_current_span("sampled request"):
                with gpu_section(count=1, model="t4"):
                    pass
        trace.get_tracer_provider().force_flush()
        exported = sorted(s.name for s in memory.get_finished_spans())
        print(json.dumps({"exported": exported, "layout": state.processors[0].layout,
                          "degraded": metrics.DEGRADED.labels("batch_queue")._value.get(),
                          "dropped": metrics.SPANS_DROPPED.labels("unsupported_sdk")._value.get()}))
        """,
        OTEL_TRACES_SAMPLER="always_on",
    )
    assert out["layout"] == "unknown" and out["degraded"] == 1
    assert out["exported"] == ["gpu.section", "sampled request"] and out["dropped"] == 0

    unsampled = _python(
        """
        import json
        import spanmeter.instrumentation.processors as processors
        processors._layout_of = lambda processor: "unknown"
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from spanmeter.instrumentation import bootstrap, metrics
        memory = InMemorySpanExporter()
        bootstrap.instrument(exporter=memory)
        from opentelemetry import trace
        from spanmeter.instrumentation.helpers import attribution, gpu_section
        with attribution(account_id="acct-x", job_id="j", plan_code="p"):
            with gpu_section(count=1, model="t4"):
                pass
        trace.get_tracer_provider().force_flush()
        print(json.dumps({"exported": [s.name for s in memory.get_finished_spans()],
                          "dropped": metrics.SPANS_DROPPED.labels("unsupported_sdk")._value.get()}))
        """,
        OTEL_TRACES_SAMPLER="always_off",
    )
    assert unsampled == {"exported": [], "dropped": 1}  # counted, with the warning's advice


def test_a_set_up_step_that_fails_is_a_warning_and_a_metric_never_an_exception():
    out = _python(
        """
        import json, logging, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
        import spanmeter.instrumentation.processors as processors
        def unknown_sdk(*args, **kwargs):
            raise AttributeError("'BatchSpanProcessor' object has no attribute '_batch_processor'")
        processors.SpanmeterSpanProcessor.__init__ = unknown_sdk
        import spanmeter.instrumentation.auto  # the one import, in settings.py: must not raise
        from spanmeter.instrumentation import bootstrap, metrics
        print(json.dumps({"instrumented": bootstrap.current() is not None,
                          "degraded": metrics.DEGRADED.labels("provider")._value.get()}))
        """
    )
    assert out == {"instrumented": True, "degraded": 1}
