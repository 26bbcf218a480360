"""``observe_many``: the receiver observes a batch's lags and durations in one pass per bucket; a scrape must
read exactly what observing them one at a time gives, in one process and in ``serve --processes N``'s
multiprocess mode, with amounts on the bucket bounds themselves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from spanmeter.collector.metrics import observe_many
from spanmeter.metrics_catalog import LAG_BUCKETS_SECONDS

BOUNDS = list(LAG_BUCKETS_SECONDS)
amounts = st.lists(
    st.one_of(
        st.sampled_from([*BOUNDS, 0.0, -1.0]),  # on a bound: `amount <= bound` puts it in that bucket
        st.floats(min_value=-10.0, max_value=1e6, allow_nan=False),
    ),
    max_size=300,
)


def _exposition(observe) -> str:
    registry = CollectorRegistry()
    histogram = Histogram("lag_seconds", "lag", ["meter"], buckets=BOUNDS, registry=registry)
    observe(histogram.labels("worker_seconds"))
    return generate_latest(registry).decode()


@settings(max_examples=300, deadline=None)
@given(amounts)
def test_observing_many_at_once_exposes_what_observing_each_does(values):
    def one_by_one(child):
        for value in values:
            child.observe(value)

    expected = _exposition(one_by_one)
    got = _exposition(lambda child: observe_many(child, values))
    # the sum is added once rather than amount by amount: equal up to float rounding, buckets exactly
    assert _without_sum(got) == _without_sum(expected)
    assert abs(_sum_of(got) - _sum_of(expected)) <= 1e-9 * max(1.0, sum(abs(v) for v in values))


def test_a_nan_among_the_amounts_is_counted_as_observe_counts_it():
    values = [0.5, float("nan"), 3.0]

    def one_by_one(child):
        for value in values:
            child.observe(value)

    # observe() puts a NaN in no bucket (so not in _count or +Inf either, which add the buckets up); only the
    # sum sees it. bisect would put it in the first bucket, so a batch with a NaN is observed one at a time
    got, expected = _exposition(lambda child: observe_many(child, values)), _exposition(one_by_one)
    assert _without_sum(got) == _without_sum(expected)
    assert "lag_seconds_sum" in got and str(_sum_of(got)) == str(_sum_of(expected)) == "nan"


def test_the_batch_path_does_not_observe_amount_by_amount():
    registry = CollectorRegistry()
    child = Histogram("lag_seconds", "lag", buckets=BOUNDS, registry=registry)
    calls = []
    child.observe = lambda amount, *a, **k: calls.append(amount)  # the per-amount path, now a recorder
    observe_many(child, [0.01, 0.2, 5.0, 0.2])
    assert calls == []
    assert registry.get_sample_value("lag_seconds_count") == 4
    assert registry.get_sample_value("lag_seconds_bucket", {"le": str(float(BOUNDS[0]))}) == 1


def test_a_histogram_laid_out_otherwise_is_observed_one_amount_at_a_time():
    class Plain:
        def __init__(self):
            self.seen = []

        def observe(self, amount):
            self.seen.append(amount)

    plain = Plain()
    observe_many(plain, [0.5, 2.0, 0.5])
    assert plain.seen == [0.5, 2.0, 0.5]


@pytest.mark.integration
def test_in_multiprocess_mode_a_scrape_adds_up_what_was_observed_at_once(tmp_path):
    # serve --processes N keeps metric values in mmap'ed files (prometheus_client's multiprocess mode):
    # the bulk increments must land there the same way
    script = textwrap.dedent(
        f"""
        import json
        from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess
        from spanmeter.collector.metrics import observe_many
        values = [0.0, 0.005, 0.3, 0.3, 2.5, 7.0, 1e5, {BOUNDS[3]!r}]
        one = Histogram("one_seconds", "one", buckets={BOUNDS!r})
        many = Histogram("many_seconds", "many", buckets={BOUNDS!r})
        for v in values:
            one.observe(v)
        observe_many(many, values)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        print(json.dumps(generate_latest(registry).decode()))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    text = json.loads(out.stdout)
    one = sorted(line.replace("one_seconds", "X") for line in text.splitlines() if line.startswith("one_seconds"))
    many = sorted(line.replace("many_seconds", "X") for line in text.splitlines() if line.startswith("many_seconds"))
    assert len(one) == len(BOUNDS) + 3  # every bucket, +Inf, _count and _sum
    assert many == one


def _without_sum(text: str) -> list[str]:
    return [line for line in text.splitlines() if "_sum" not in line and "_created" not in line]


def _sum_of(text: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith("lag_seconds_sum")]
    return float(line.rsplit(" ", 1)[1])
