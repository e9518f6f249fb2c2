"""observe_many: the same histogram as one observe per value, whatever the values."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Histogram

from wks.metrics import observe_many

_BUCKETS = (0.001, 0.01, 0.1, 1, 10)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("h", "h", ["g"], buckets=_BUCKETS, registry=registry)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_observe_many_equals_observe_each(seed: int) -> None:
    rng = random.Random(seed)
    # bucket bounds themselves (le is inclusive), zero, values past the last bound
    values = [*_BUCKETS, 0.0, 50.0, *(rng.uniform(0, 20) for _ in range(500))]
    one_reg, one = _histogram()
    many_reg, many = _histogram()
    for v in values:
        one.labels("x").observe(v)
    observe_many(many.labels("x"), values[:100])
    observe_many(many.labels("x"), values[100:])
    observe_many(many.labels("x"), [])
    got, want = _samples(many_reg), _samples(one_reg)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got[("h_count", "")] == len(values)


def test_observe_many_falls_back_to_observe_without_bucket_internals() -> None:
    seen: list[float] = []
    observe_many(SimpleNamespace(observe=seen.append), [3.0, 1.0])
    assert seen == [3.0, 1.0]
