"""Fixtures of the deployment-file tests."""

from __future__ import annotations

import pytest

from tests.ops.promtool import PromtoolMissing, find_promtool


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path to promtool; the test fails (never skips) when none can be had."""
    try:
        return find_promtool()
    except PromtoolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
