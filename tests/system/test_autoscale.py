"""End-to-end scaling in a booted systemd: the real timer, scaler, units, journal and Redis."""

from __future__ import annotations

import re
import time

import pytest

from dramactl.settings import parse
from tests.system.conftest import System, wait_until

pytestmark = pytest.mark.system


def test_autoscale_round_trip(system: System) -> None:
    """200 half-second messages: the first ticks grow the fleet (to the size the policy logs), the
    instances run within the tick that started them, the backlog drains, the fleet shrinks to MIN."""
    values = system.configure()
    settings = parse(values)

    system.dramactl("scale-to", "1")
    system.dramactl("resume")
    system.send(200, 0.5)
    landed = time.monotonic()
    system.sh("systemctl start dramactl.timer")

    def grew() -> int:
        sizes = [int(n) for n in re.findall(r"\| workers 1 -> (\d+) \|", system.c.journal("dramactl.service"))]
        return next((n for n in sizes if n > 1), 0)

    expected = wait_until(grew, 60, "a tick growing the fleet from one")  # its latency is printed, not asserted
    wait_until(lambda: len(system.active()) >= expected, 30, f"{expected} running instances")
    grown = time.monotonic() - landed
    assert len(system.active()) <= settings.max_processes

    wait_until(lambda: system.redis()["count"] >= 200, 120, "all 200 messages processed")
    wait_until(lambda: len(system.active()) == settings.min_processes, 90, f"fleet back at MIN_PROCESSES={settings.min_processes}")

    r = system.redis()
    assert r["processed"] == 200 and r["count"] == 200 and r["duplicates"] == 0, r
    assert (r["ready"], r["msgs"], r["delayed"], r["dead"], r["acks"]) == (0, 0, 0, 0, 0), r

    # Every tick left one journal line with its inputs and decision.
    ticks = [line for line in system.c.journal("dramactl.service").splitlines() if line.startswith("queues ready=")]
    assert len(ticks) >= 3, ticks
    assert all("| workers " in t for t in ticks)
    print(f"\n[autoscale] grew 1 -> {expected} in {grown:.1f}s after the burst landed")


def test_worker_output_in_journal(system: System) -> None:
    """Each instance's Dramatiq output is in its own unit's journal."""
    system.dramactl("scale-to", "2")
    for unit in ("dramatiq-worker@1.service", "dramatiq-worker@2.service"):
        log = system.c.journal(unit)
        assert "Worker process is ready for action" in log, log[-2000:]
    combined = system.sh("journalctl --no-pager -o cat -u 'dramatiq-worker@*'").stdout
    assert combined.count("Worker process is ready for action") >= 2
