"""Sizing by work in a booted systemd: the real hook reports, the real timer scales.

The same number of messages, tiny or slow: once the workers' hook has reported what
a message costs, tiny ones do not grow the fleet to MAX_PROCESSES and slow ones do.
"""

from __future__ import annotations

import time

import pytest

from tests.system.conftest import System, wait_until

pytestmark = pytest.mark.system

COUNT = 400


def work_done(system: System) -> int:
    return int(system.sh("redis-cli hget dramatiq:__dramactl__.work.sys done").stdout.strip() or 0)


def tick_lines(system: System) -> list[str]:
    return [line for line in system.c.journal("dramactl.service").splitlines() if line.startswith("queues ready=")]


def burst_peak(system: System, seconds: float, prefix: str) -> tuple[int, int]:
    """Warm up (the hook reports what a message costs), then send COUNT messages while no
    instance runs, so that the first tick sees the whole burst waiting (one instance
    could finish 400 tiny messages before the timer's first tick, and the test would
    then prove nothing); run the timer until all are processed; (the largest fleet
    seen, MAX_PROCESSES)."""
    values = system.configure()
    system.dramactl("scale-to", "1")
    system.dramactl("resume")
    system.send(20, seconds, prefix=f"{prefix}warm")
    wait_until(lambda: work_done(system) >= 20, 120, "the hook reported the warm-up's 20 completions")
    wait_until(lambda: system.redis()["count"] >= 20, 60, "the warm-up's 20 messages counted")
    system.sh("systemctl stop 'dramatiq-worker@*.service'")
    system.send(COUNT, seconds, prefix=prefix)
    assert system.redis()["ready"] == COUNT
    before = len(tick_lines(system))
    system.sh("systemctl start dramactl.timer")
    peak = 0
    deadline = time.monotonic() + 300
    while system.redis()["count"] < COUNT + 20:
        assert time.monotonic() < deadline, "the burst was not processed within 300 s"
        peak = max(peak, len(system.active()))
        time.sleep(0.5)
    ticks = tick_lines(system)[before:]
    assert ticks and f"ready={COUNT}" in ticks[0], ticks  # the first tick saw the whole burst
    print(f"\n[work sizing] {prefix}: peak {peak}; ticks:\n" + "\n".join(ticks[:6]))
    assert any("λ" in t or "E[S]" in t for t in ticks), ticks  # the policy sized by work
    return peak, int(values["MAX_PROCESSES"])


def test_a_burst_of_tiny_messages_does_not_grow_the_fleet_to_max(system: System) -> None:
    peak, most = burst_peak(system, 0.01, "tiny")
    assert peak < most


def test_a_burst_of_slow_messages_of_the_same_count_does(system: System) -> None:
    peak, most = burst_peak(system, 0.5, "slow")
    assert peak == most
