"""What every sizing applies (dramactl.limits): pure, no Redis."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from dramactl import limits
from dramactl.settings import Settings


@pytest.mark.parametrize("limit", [0.0, -1.0, math.nan, 5e-324, 1e-300, 60.0])
@pytest.mark.parametrize("age", [0.0, 61.0, 1e300, math.inf])
def test_the_latency_guard_never_divides_by_zero_nor_overflows(limit: float, age: float) -> None:
    """MAX_QUEUE_WAIT 0 in the fleet's settings record was a ZeroDivisionError in every tick of
    a host that followed it; whatever the limit, the guard grows by at most double."""
    got = limits.latency_guard(age, 4, 0, replace(Settings(), max_queue_wait=limit))
    if got is not None:
        target, reason = got
        assert 5 <= target <= 8 and "MAX_QUEUE_WAIT" in reason


def test_a_tiny_backlog_per_worker_asks_for_the_most_never_overflows() -> None:
    """TARGET_BACKLOG_PER_WORKER=1e-300 is a setting (0 or more): a backlog divided by it overflowed the fleet
    size (math.ceil of infinity). It asks for the most, which MAX_PROCESSES then clamps."""
    from dramactl import bycount
    from dramactl.policy import decide
    from dramactl.settings import parse
    from dramactl.stats import FleetBacklog

    assert bycount.fleet_holding(1e9, 1e-300) == bycount.LARGEST
    assert bycount.fleet_for_load(1e9, 1e-300) == bycount.LARGEST
    settings = parse({"TARGET_BACKLOG_PER_WORKER": "1e-300", "MAX_PROCESSES": "8"})
    assert decide(FleetBacklog(ready=10**9), [], settings, (), 100.0).target <= 8
