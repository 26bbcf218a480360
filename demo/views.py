"""The ingress endpoint: validate a document request, enqueue its pipeline, answer with the job id."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from .tasks import extract_text

MAX_PAGES = 500  # a long extraction (the workload's first document per account is 180 pages)
MAX_GPUS = 8


@require_POST
def submit_document(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
        document = {
            "name": str(body.get("name", "document")),
            "pages": int(body.get("pages", 1)),
            "gpus": int(body.get("gpus", 1)),
            "flaky": bool(body.get("flaky", False)),
        }
    except (ValueError, TypeError, AttributeError):
        return JsonResponse({"error": "body must be JSON: {pages: int, gpus: int, flaky: bool}"}, status=400)
    if not 1 <= document["pages"] <= MAX_PAGES or not 1 <= document["gpus"] <= MAX_GPUS:
        return JsonResponse({"error": f"pages must be 1..{MAX_PAGES}, gpus 1..{MAX_GPUS}"}, status=400)
    attribution = getattr(request, "spanmeter", None)  # set by spanmeter's middleware after authentication
    if attribution is None:
        return JsonResponse({"error": "unauthenticated: no account for this request"}, status=401)
    result = extract_text.delay(document)
    return JsonResponse({"job_id": attribution.job_id, "task_id": result.id}, status=202)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})
