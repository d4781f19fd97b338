"""The calm rules in a booted systemd: a steady load near a fleet boundary, 5 minutes of
the real timer, the real hook and the real policy, and at most two scaling actions.

Poisson arrivals of 1 s messages at 1.8/s on 2-thread workers: 1.8 busy threads, where
the Erlang fleet for P(wait > 30 s) <= 5 % turns from one worker to two (at about 1.9):
the measured rate's noise crosses that boundary all the time. CHECK_INTERVAL=3, so
about 100 ticks each have a chance to flap. (One run: 569 messages in 300 s, the fleet
at 2 throughout, 0 starts or stops; with the policy before issue 20, 9.)
"""

from __future__ import annotations

import re

import pytest

from tests.system.conftest import APP_DIR, PYTHON, System

pytestmark = pytest.mark.system

RATE = 1.8  # messages/s
SERVICE = 1.0  # seconds each
STEADY = 300.0  # seconds of steady load whose actions are counted
WARM = 60.0  # seconds of the same load before: the fleet finds its size

SENDER = r"""
import json, random, sys, time
import sysapp
rate, service, seconds = (float(a) for a in sys.argv[1:4])
rng = random.Random(20)
end = time.monotonic() + seconds
sent, at = 0, time.monotonic()
while True:
    at += rng.expovariate(rate)
    if at >= end:
        break
    time.sleep(max(0.0, at - time.monotonic()))
    sysapp.work.send("calm%d" % sent, service)
    sent += 1
print(json.dumps(sent))
"""


def actions(system: System) -> int:
    counted = system.status()["scaling_actions"]
    return counted["up"] + counted["down"]


def send_for(system: System, seconds: float) -> int:
    out = system.c.run([PYTHON, "-c", SENDER, str(RATE), str(SERVICE), str(seconds)], cwd=APP_DIR, timeout=seconds + 60)
    return int(out.stdout.strip().splitlines()[-1])


def test_a_steady_load_near_a_fleet_boundary_causes_at_most_two_actions_in_five_minutes(system: System) -> None:
    system.configure(MAX_PROCESSES="4", WORKER_THREADS="2", CHECK_INTERVAL="3", SCALE_DOWN_STABILIZATION="30")
    system.dramactl("scale-to", "1")
    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    send_for(system, WARM)
    before, fleet_before = actions(system), len(system.active())
    sent = send_for(system, STEADY)
    after, fleet_after = actions(system), len(system.active())
    ticks = [line for line in system.c.journal("dramactl.service").splitlines() if line.startswith("queues ready=")]
    changes = [t for t in ticks if (m := re.search(r"\| workers (\d+) -> (\d+)", t)) and m[1] != m[2]]
    print(f"\n[calm] {sent} messages in {STEADY:g}s ({sent / STEADY:.2f}/s of {SERVICE:g}s); fleet {fleet_before} -> {fleet_after}; "
          f"{after - before} instance starts/stops in the steady 5 minutes, {len(ticks)} ticks in all; changes:\n" + "\n".join(changes[-10:]))
    assert sent > RATE * STEADY * 0.8
    assert after - before <= 2, changes
