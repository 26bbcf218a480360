"""docpipe: the demo Django + Celery document pipeline that ``spanmeter demo`` runs.

A real Django project (:mod:`.settings`, :mod:`.urls`, :mod:`.views`) and Celery app (:mod:`.celery_app`,
:mod:`.tasks`), instrumented the way a customer would: one ``import spanmeter.instrumentation.auto`` line in
``settings.py`` and one in the Celery app module. Nothing else in the app knows about spanmeter except the
two helpers it calls where auto-instrumentation cannot see (a GPU section, an LLM call's tokens).

    POST /documents  {"pages": 3, "gpus": 2, "flaky": false}   -> 202 {"job_id": …, "task_id": …}
        extract_text (worker time) ─┬─> detect_tables (worker time + a GPU section of `gpus` GPUs)
                                    └─> classify_document (worker time + an LLM call's tokens;
                                        with "flaky": the first attempt fails and is retried)

Attribution comes from the trusted-gateway headers (``SPANMETER_TRUSTED_HEADERS=true``; the demo's load
driver plays the gateway): ``X-Spanmeter-Account-Id``, ``X-Spanmeter-Plan-Code``, and
``X-Spanmeter-Synthetic: true`` for probes. :mod:`.workload` says exactly which ledger rows a workload
must produce; :mod:`.runner` is ``spanmeter demo``.
"""
