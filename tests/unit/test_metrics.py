"""observe_counted: the same histogram as one observe per value."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Histogram

from wks.metrics import observe_counted

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


def test_observe_counted_equals_observe_repeated() -> None:
    rng = random.Random(4)
    # bucket bounds themselves (le is inclusive), zero, past the last bound, a zero count
    pairs = [*((b, 2) for b in _BUCKETS), (0.0, 1), (50.0, 2), (1.0, 0),
             *((rng.uniform(0, 20), rng.randrange(1, 9)) for _ in range(100))]
    one_reg, one = _histogram()
    counted_reg, counted = _histogram()
    for value, count in pairs:
        for _ in range(count):
            one.labels("x").observe(value)
    observe_counted(counted.labels("x"), pairs)
    got, want = _samples(counted_reg), _samples(one_reg)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got[("h_count", "")] == sum(n for _, n in pairs)


def test_observe_counted_falls_back_to_observe_without_bucket_internals() -> None:
    seen: list[float] = []
    observe_counted(SimpleNamespace(observe=seen.append), [(3.0, 2), (1.0, 1)])
    assert seen == [3.0, 3.0, 1.0]
