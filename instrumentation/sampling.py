"""Billing-safe sampling.

A sampler decides when a span *starts*, before its account, task outcome or token counts are known, so a
sampler must never be what drops billable usage. :class:`BillingSafeSampler` wraps the application's
sampler and turns its DROP into RECORD_ONLY: every span is recorded in-process (not marked sampled), and
:class:`spanmeter.instrumentation.processors.SpanmeterSpanProcessor` exports, at span end, the sampled
spans plus every unsampled span that matches a meter definition. Non-billable spans follow the
application's sampler exactly as before.

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from spanmeter.instrumentation.sampling import BillingSafeSampler

    provider = TracerProvider(sampler=BillingSafeSampler(ParentBased(TraceIdRatioBased(0.1))))

The cost: unsampled spans are recorded (attributes kept in memory until they end) instead of being
no-ops; only billable ones are exported. Where the delegate is a ``ParentBased`` sampler (the SDK's
default), only the branches that can say DROP are wrapped (``ParentBased(ALWAYS_ON)`` drops only under an
unsampled parent), so a span the application's sampler samples anyway pays nothing extra.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, StaticSampler
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

__all__ = ["BillingSafeSampler"]


class BillingSafeSampler(Sampler):
    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate
        self._delegate_should_sample = delegate.should_sample  # bound once: this runs for every span
        fast = _billing_safe_parent_based(delegate) if type(self) is BillingSafeSampler else None
        if fast is not None:
            # the rewritten ParentBased decides alone (same decisions, DROP turned into RECORD_ONLY in the
            # branches that can drop): the tracer calls it without going through this wrapper
            self.should_sample = fast.should_sample  # type: ignore[method-assign]

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self._delegate_should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if result.decision is Decision.DROP:
            # the SDK starts a span with the *sampling result's* attributes, and samplers drop them with
            # a DROP decision: hand back the span's own start attributes (gpu.count, celery.action, …)
            merged = {**(attributes or {}), **(result.attributes or {})}
            return SamplingResult(Decision.RECORD_ONLY, merged, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"BillingSafeSampler{{{self.delegate.get_description()}}}"


def _never_drops(sampler: Sampler) -> bool:
    return type(sampler) is StaticSampler and getattr(sampler, "_decision", Decision.DROP) is not Decision.DROP


def _billing_safe_parent_based(sampler: Sampler) -> ParentBased | None:
    """``sampler`` (the SDK's ``ParentBased``, or a subclass that keeps its decision logic, such as
    ``ParentBasedTraceIdRatio``) with each branch that may DROP wrapped; else None."""
    if not isinstance(sampler, ParentBased) or type(sampler).should_sample is not ParentBased.should_sample:
        return None
    names = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled",
             "_local_parent_not_sampled")  # fmt: skip
    branches = [getattr(sampler, name, None) for name in names]
    if any(not isinstance(branch, Sampler) for branch in branches):
        return None  # an SDK version with another layout: keep the plain wrapper
    safe = [branch if _never_drops(branch) else BillingSafeSampler(branch) for branch in branches]
    return ParentBased(*safe)
