"""Instrumentation for services that spanmeter meters: one import for Django + Celery.

The guide
=========

1. Install spanmeter into the service (it brings the OpenTelemetry SDK, the OTLP exporter and the official
   Django and Celery instrumentations).
2. Add one line at the top of ``settings.py`` and one at the top of the module that creates the Celery app::

       import spanmeter.instrumentation.auto  # noqa: F401

3. Point it at the collector (or, in production, at the sidecar: ``deploy/otelcol-sidecar.yaml``) and name
   the service, with the standard variables::

       OTEL_SERVICE_NAME=docs-api
       OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317
       OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20<producer token>   # when spanmeter requires one
       SPANMETER_TRUSTED_HEADERS=true    # only behind a gateway that sets X-Spanmeter-* and strips them

4. Decide who pays for a request. By default: the ``X-Spanmeter-Account-Id`` / ``-Plan-Code`` / ``-Job-Id``
   headers of a trusted gateway (step 3), else the authenticated Django user (``user.spanmeter_account_id``
   or the username). Or name your own resolver (``SPANMETER_ATTRIBUTION_RESOLVER = "myapp.billing:resolve"``
   in settings): see :mod:`.django`.

5. Optionally, admission control: ``spanmeter.instrumentation.entitlements`` asks ``spanmeter api`` whether an
   account may start more work (``check(account_id, meter)``, cached, never raises) and caps a plan's
   concurrent Celery tasks across the fleet (``@entitled(meter)``); see that module.

That is all. Every HTTP request becomes an attributed ``api_requests`` unit; every Celery task the request
enqueues, on every hop through the broker, runs with the request's ``account_id``, ``job_id`` and
``plan_code`` and bills its run time as ``worker_seconds``. For what auto-instrumentation cannot see::

    from spanmeter.instrumentation import attribution, gpu_section, record_llm_usage

    with gpu_section(count=2, model="h100"):          # duration × 2 GPU-seconds
        run_inference(batch)

    response = client.chat.completions.create(...)    # tokens, under the GenAI names
    record_llm_usage(input_tokens=response.usage.prompt_tokens,
                     output_tokens=response.usage.completion_tokens,
                     model=response.model, provider="openai")

    with attribution(account_id="acme", job_id="nightly-42", plan_code="growth"):   # beat, management commands
        rebuild_index()

The helpers are no-ops without a tracer provider and never raise into your code. The demo project
``spanmeter.demo`` (run it: ``spanmeter demo``) is a complete, small example.

What the import does, and how to undo it
========================================

:mod:`.bootstrap` documents every step: a ``TracerProvider`` from ``OTEL_*`` variables (or the
application's existing SDK provider, which is reused: spanmeter adds its processors and wraps its
sampler), W3C tracecontext + baggage propagation in which inbound HTTP baggage cannot carry the reserved
keys (:mod:`.propagation`), the Django middleware (:mod:`.django`), Celery instrumentation in every worker
process, flushing on ``worker_process_shutdown`` and SIGTERM. ``spanmeter.instrumentation.uninstrument()``
undoes exactly that; the provider stays the global provider (OpenTelemetry allows setting it once).
``OTEL_SDK_DISABLED=true`` turns everything off. Settings: :mod:`.config`.

Sampling never loses billable usage
===================================

A sampler decides when a span starts, before its account, task outcome or token counts are known.
:class:`~.sampling.BillingSafeSampler` turns the application's DROP into RECORD_ONLY, and
:class:`~.processors.SpanmeterSpanProcessor` exports at span end the sampled spans plus every span that
matches a meter definition (:mod:`.billable`). Non-billable spans follow the application's sampler
(``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``OTEL_TRACES_SAMPLER_ARG=0.1`` keeps 10 % of traces and
every billable span).

Synthetic traffic
=================

A request carrying ``X-Spanmeter-Synthetic: true`` from the trusted gateway (or a resolver returning
``Attribution(..., synthetic=True)``) sets ``spanmeter.synthetic = true`` on its server span and, through
baggage, on every span it causes, tasks included: the collector meters it in
``spanmeter_synthetic_spans_total`` and never bills it. Clients cannot set the flag themselves (it is a
reserved baggage key), or anyone could make their usage free.

What "nothing lost" means in-process
====================================

Honestly: the SDK keeps ended spans in an in-memory queue (``OTEL_BSP_MAX_QUEUE_SIZE``, 2048) that drops
when full, and its exporter gives up on a batch after its timeout (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s).
spanmeter counts both per process (``spanmeter_sdk_spans_dropped_total{reason}``, :mod:`.metrics`), logs
them, and flushes the queue on SIGTERM and when a Celery worker process shuts down; a SIGKILL or an OOM kill
still loses what the queue held. The production topology therefore puts a durable hop on loopback: a
sidecar OpenTelemetry Collector with an fsync'd ``file_storage`` sending queue that retries forever
(``deploy/otelcol-sidecar.yaml``).
"""

from .bootstrap import instrument, uninstrument
from .helpers import attribution, gpu_section, record_llm_usage

__all__ = ["attribution", "gpu_section", "instrument", "record_llm_usage", "uninstrument"]
