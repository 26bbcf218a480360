"""The demo workload and exactly what it must put in the ledger (pure: no I/O, no clock).

Per document (one ``POST /documents``), attributed to the request's account and job:

========================  =====  ====================================================================
meter                     rows   quantity
========================  =====  ====================================================================
``api_requests``          1      1 request
``worker_seconds``        3 (4)  extract_text, detect_tables, classify_document; a *flaky* document's
                                 failed first attempt bills too (``bill_failed``: the worker was busy)
``gpu_seconds``           1      GPU-section duration, rounded up to 100 ms, × ``gpus``
``input_tokens``          1      :func:`input_tokens` (``pages``)
``output_tokens``         1      :func:`output_tokens` (``pages``)
========================  =====  ====================================================================

Two LLM models and two GPU models, priced differently by the demo's price book (``demo/pricing/``): a
document of :data:`VISION_PAGES` pages or more is read by the vision model ``gpt-4o`` (about 1,100 tokens a
page), a shorter one by ``gpt-4o-mini``; a document on two GPUs runs on ``h100``, on one on ``l4``. Each
account's first document is a 180-page extraction, so the per-model invoice differs visibly from the flat
token rate of ``v2_compute``.

Synthetic documents (``X-Spanmeter-Synthetic: true``) produce the same spans and no ledger rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ACCOUNTS",
    "Document",
    "Submission",
    "expected_rows",
    "expected_tokens",
    "extract_seconds",
    "gpu_model",
    "gpu_seconds",
    "input_tokens",
    "model_for",
    "output_tokens",
    "plan",
]

# (account_id, plan_code): one customer per plan the rating engine knows
ACCOUNTS = (("acme", "starter"), ("globex", "growth"), ("initech", "platform"))

EXTRACT_SECONDS_PER_PAGE = 0.05
GPU_SECONDS_PER_PAGE = 0.08
LLM_CALL_SECONDS = 0.04
SMALL_MODEL = "gpt-4o-mini"
VISION_MODEL = "gpt-4o"
VISION_PAGES = 50  # documents this long are read by the vision model
PROVIDER = "openai"
BIG_DOCUMENT_PAGES = 180  # each account's first document: a long extraction
MAX_STEP_SECONDS = 0.8  # the demo's simulated work per step is capped, so a long document does not stall it


def model_for(pages: int) -> str:
    return VISION_MODEL if pages >= VISION_PAGES else SMALL_MODEL


def gpu_model(gpus: int) -> str:
    return "h100" if gpus >= 2 else "l4"


def extract_seconds(pages: int) -> float:
    return min(EXTRACT_SECONDS_PER_PAGE * pages, MAX_STEP_SECONDS)


def gpu_seconds(pages: int) -> float:
    return min(GPU_SECONDS_PER_PAGE * pages, MAX_STEP_SECONDS)


def input_tokens(pages: int) -> int:
    if model_for(pages) == VISION_MODEL:
        return 1_100 * pages + 400  # page images, plus the instructions
    return 320 * pages + 180  # the prompt: instructions plus the extracted text


def output_tokens(pages: int) -> int:
    return 24 + 6 * pages  # the label and a short rationale


@dataclass(frozen=True)
class Document:
    name: str
    pages: int
    gpus: int
    flaky: bool = False

    def body(self) -> dict[str, object]:
        return {"name": self.name, "pages": self.pages, "gpus": self.gpus, "flaky": self.flaky}


@dataclass(frozen=True)
class Submission:
    account_id: str
    plan_code: str
    document: Document
    synthetic: bool = False

    def headers(self) -> dict[str, str]:
        """What the trusted gateway sets after authenticating the caller."""
        headers = {"X-Spanmeter-Account-Id": self.account_id, "X-Spanmeter-Plan-Code": self.plan_code}
        if self.synthetic:
            headers["X-Spanmeter-Synthetic"] = "true"
        return headers


def plan(documents_per_account: int = 4, synthetic_probes: int = 2) -> list[Submission]:
    """A few accounts on different plans, interleaved; every fourth document flaky; plus probes."""
    submissions: list[Submission] = []
    for index in range(documents_per_account):
        for rank, (account, plan_code) in enumerate(ACCOUNTS):
            pages = BIG_DOCUMENT_PAGES if index == 0 else 1 + (3 * index + 5 * rank + index * rank) % 6
            gpus = 1 + (index + rank) % 2
            flaky = (index + rank) % 4 == 1
            submissions.append(Submission(account, plan_code, Document(f"{account}-{index + 1}", pages, gpus, flaky)))
    for probe in range(synthetic_probes):
        submissions.append(Submission("acme", "starter", Document(f"probe-{probe + 1}", 1, 1), synthetic=True))
    return submissions


def _rows(submission: Submission) -> dict[str, int]:
    return {
        "api_requests": 1,
        "worker_seconds": 4 if submission.document.flaky else 3,
        "gpu_seconds": 1,
        "input_tokens": 1,
        "output_tokens": 1,
    }


def _tokens(submission: Submission) -> dict[str, int]:
    pages = submission.document.pages
    return {"input_tokens": input_tokens(pages), "output_tokens": output_tokens(pages)}


def _per_account(submissions: list[Submission], per_submission: Callable[[Submission], dict[str, int]]) -> dict:
    totals: dict[tuple[str, str], int] = {}
    for submission in submissions:
        if submission.synthetic:
            continue  # never in the ledger
        for meter, n in per_submission(submission).items():
            key = (submission.account_id, meter)
            totals[key] = totals.get(key, 0) + n
    return totals


def expected_rows(submissions: list[Submission]) -> dict[tuple[str, str], int]:
    """Ledger rows per (account_id, meter_code) the submissions must produce."""
    return _per_account(submissions, _rows)


def expected_tokens(submissions: list[Submission]) -> dict[tuple[str, str], int]:
    """Exact token totals per (account_id, meter_code)."""
    return _per_account(submissions, _tokens)
