"""The benchmark's simulator reports its instances as the real systemd does.

dramactl/sim/simulator.py hands the policy one WorkerUnit per instance, as
``Fleet.instances`` would list it. Here the same situations are made in a booted
systemd (an instance starting, one active, one draining a long message after a stop,
one killed and being restarted by systemd) and listed by the real ``Fleet``; the
simulator's units for the first three must read the same (states, job, and what the
policy derives from them), and the crashed one, which the simulator never produces,
must be one the policy holds growth for. (The simulator before issue 20 listed a draining instance without its stop job: systemd
never shows that for a stop, only for a main process that died, and the policy held
growth for it.) The learned start-up from systemd's
timestamps is checked against the app's own start-up delay, and what reading those
timestamps costs a tick is printed.
"""

from __future__ import annotations

import json
import time

from dramactl.sim.simulator import _Worker
from dramactl.instance import WorkerUnit
from dramactl.policy import is_starting
from dramactl.rates import measure_startup
from tests.system.conftest import APP_DIR, PYTHON, System, wait_until

DELAY = 8.0  # seconds the app sleeps before Dramatiq starts consuming (READY=1)

LIST = r"""
import dataclasses, json, sys, time
from dramactl.fleet import Fleet
timed = [int(n) for n in sys.argv[1:]]
with Fleet() as f:
    print(json.dumps([dataclasses.asdict(u) for u in f.instances(timed=timed)]))
"""

CRASH = r"""
import dataclasses, json, subprocess, time
from dramactl.fleet import Fleet
seen = {}
with Fleet() as f:
    # The main process alone, as an OOM kill would: systemd cleans up the rest, then restarts it.
    subprocess.run(["systemctl", "kill", "--kill-whom=main", "-s", "KILL", "dramatiq-worker@2.service"], check=True)
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        for u in f.instances():
            if u.number == 2 and u.active_state != "active":
                seen.setdefault((u.active_state, u.sub_state, u.job), dataclasses.asdict(u))
        time.sleep(0.02)
print(json.dumps(list(seen.values())))
"""

COST = r"""
import json, time
from dramactl.fleet import Fleet
with Fleet() as f:
    f.instances()
    def best(**kw):
        times = []
        for _ in range(30):
            t = time.perf_counter(); f.instances(**kw); times.append(time.perf_counter() - t)
        return min(times) * 1e3
    print(json.dumps({"list": best(), "timed": best(timed=[1, 2])}))
"""


def listed(system: System, *timed: int) -> dict[int, WorkerUnit]:
    """The real Fleet's listing inside the container; ``timed``: instances whose timestamps it reads."""
    out = system.c.run([PYTHON, "-c", LIST, *map(str, timed)], cwd=APP_DIR).stdout.strip().splitlines()
    return {r["number"]: WorkerUnit(**r) for r in json.loads(out[-1])}


def read(unit: WorkerUnit) -> tuple:
    """What the policy and the plan read from a unit."""
    return (unit.active_state, unit.sub_state, unit.job, unit.is_up, is_starting(unit), unit.is_stopping, unit.is_coming_back, unit.is_failing)


def start(system: System, number: int) -> None:
    system.sh(f"systemctl start --no-block dramatiq-worker@{number}.service")


def test_the_simulators_units_read_as_systemds_in_the_same_situations(system: System) -> None:
    system.configure(SYSAPP_START_DELAY=str(DELAY))
    system.sh("systemctl stop dramactl.timer", check=False)

    start(system, 1)
    starting = wait_until(lambda: listed(system).get(1), 10, "@1 listed while starting")
    assert read(starting) == read(_Worker(1, 0.0, DELAY).unit()), starting

    wait_until(lambda: "dramatiq-worker@1.service" in system.active(), 30, "@1 active")
    active = listed(system, 1)[1]
    assert read(active) == read(_Worker(1, 0.0, DELAY, ready=True).unit()), active
    # The start-up, from systemd's own timestamps: the app's delay, however long the tick waited.
    took, still = measure_startup([active], [1], time.time())
    assert still == () and DELAY <= took < DELAY + 10, took

    system.send(1, 60.0, prefix="long")
    wait_until(lambda: system.redis_counter("sys:started") >= 1, 30, "the long message started")
    system.sh("systemctl stop --no-block dramatiq-worker@1.service")
    draining = wait_until(lambda: listed(system).get(1), 10, "@1 listed while draining")
    simulated = _Worker(1, 0.0, DELAY, ready=True)
    simulated.stopping_since = 20.0
    assert read(draining) == read(simulated.unit()), draining
    assert draining.is_stopping and not draining.is_coming_back

    start(system, 2)
    wait_until(lambda: "dramatiq-worker@2.service" in system.active(), 30, "@2 active")
    cost = system.c.python(PYTHON, COST, cwd=APP_DIR)
    print(f"\n[unit-states] ListUnitsByPatterns {cost['list']:.2f} ms; with 2 instances' timestamps {cost['timed']:.2f} ms")
    crashed = [WorkerUnit(**r) for r in system.c.python(PYTHON, CRASH, cwd=APP_DIR)]
    assert crashed, "the killed instance was never listed on its way back"
    # Every state systemd shows on the way back (waiting to restart, then starting again with
    # a restart counted) holds growth; the simulator (which models no crash) never reports a
    # unit in any of them: a draining unit of its own is never taken for one coming back.
    assert all(u.is_failing for u in crashed) and any(u.is_coming_back for u in crashed), [read(u) for u in crashed]
    simulator_states = {read(w.unit()) for w in (_Worker(1, 0.0, DELAY), _Worker(1, 0.0, DELAY, ready=True), simulated)}
    assert not simulator_states & {read(u) for u in crashed}
    print(f"[unit-states] systemd on the way back: {sorted({(u.active_state, u.sub_state, u.job) for u in crashed})}")
    system.sh("systemctl kill -s KILL dramatiq-worker@1.service", check=False)


WAITING = r"""
import json, threading, time
from dramactl.fleet import Fleet
beats, done = [], threading.Event()
def renew():  # what the tick's fleet heartbeat thread (dramactl.seat) does while the main thread waits for jobs
    while not done.wait(0.05):
        beats.append(time.monotonic())
thread = threading.Thread(target=renew, daemon=True)
thread.start()
with Fleet() as f:
    began = time.monotonic()
    result = f.start([3], timeout=60)[0].result
    took = time.monotonic() - began
done.set()
thread.join()
print(json.dumps({"result": result, "took": took, "beats": sum(1 for b in beats if began <= b <= began + took)}))
"""


def test_the_ticks_other_threads_run_while_it_waits_for_a_start_job(system: System) -> None:
    """A tick waits for its start jobs (READY=1) on the D-Bus socket. pystemd's ``wait`` holds
    the GIL inside sd_bus_wait, so a thread beside it, the fleet heartbeat's renewals among them,
    ran about once a second at most: a tick waiting on a slow start renewed its heartbeat seconds
    late, and the fleet recorded a silence while the host was live (seen in the multihost outage
    test). The real Fleet starts an instance whose app takes DELAY seconds; a thread that wakes
    every 50 ms meanwhile must run about as often as it asks (a quarter of that is the bar: with
    the GIL held it ran about DELAY times)."""
    system.configure(SYSAPP_START_DELAY=str(DELAY))
    system.sh("systemctl stop dramactl.timer", check=False)
    out = system.c.python(PYTHON, WAITING, cwd=APP_DIR)
    asked = out["took"] / 0.05
    print(f"\n[unit-states] a 50 ms thread ran {out['beats']} times during a {out['took']:.1f}s start job ({asked:.0f} asked)")
    assert out["result"] == "done" and out["took"] >= DELAY - 1, out
    assert out["beats"] >= asked / 4, out
