"""Issue 19 in a booted systemd: a scale-down stops the idle instance, never a long task."""

from __future__ import annotations

import json

import pytest

from tests.system.conftest import System, wait_until

pytestmark = pytest.mark.system

LONG = 30.0  # seconds a long task runs: longer than GRACEFUL_SHUTDOWN_TIMEOUT, so a drain would cut it off


def reported(system: System) -> dict[int, dict]:
    """Instance number -> its work report, from `dramactl status --json`."""
    return {u["number"]: u["work"] for u in system.status()["instances"] if u.get("work")}


def test_scale_down_stops_the_idle_instance_and_the_long_tasks_finish_once(system: System) -> None:
    # One thread and one prefetched message per instance: each runs exactly the message it took.
    system.configure(WORKER_THREADS="1", GRACEFUL_SHUTDOWN_TIMEOUT="10", dramatiq_queue_prefetch="1")
    system.dramactl("scale-to", "1")
    system.send(1, LONG, prefix="a")
    wait_until(lambda: system.redis_counter("sys:started") == 1, 20, "@1 running the first long task")
    # @3 up next (started directly, as an operator might), so it takes the second long task ...
    system.sh("systemctl start dramatiq-worker@3.service")
    system.send(1, LONG, prefix="b")
    wait_until(lambda: system.redis_counter("sys:started") == 2, 20, "@3 running the second long task")
    # ... and @2, started last, is idle: the highest number is busy, the idle one is in the middle.
    system.dramactl("scale-to", "3")
    assert system.active() == [f"dramatiq-worker@{n}.service" for n in (1, 2, 3)]
    work = wait_until(lambda: (w := reported(system)) and len(w) == 3 and w, 15, "all three instances reporting")
    assert (work[1]["busy"], work[2]["busy"], work[3]["busy"]) == (1, 0, 1), work
    assert work[1]["threads"] == 1 and work[1]["oldest_age"] > 0 and work[2]["oldest_age"] is None
    text = system.dramactl("status").stdout
    assert "1/1" in text and "0/1" in text, text

    out = system.dramactl("scale-down").stdout
    assert "stop @2 (idle)" in out and "stopped @2:done" in out, out
    assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@3.service"]
    entry = json.loads(system.sh("journalctl -o json -n 1 SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=scale-down").stdout)
    assert json.loads(entry["DRAMACTL_VICTIMS"]) == [{"instance": 2, "why": "idle"}], entry

    wait_until(lambda: system.redis()["count"] == 2, LONG + 20, "both long tasks finished")
    r = system.redis()
    assert system.redis_counter("sys:started") == 2, "neither long task was cut off and started again"
    assert (r["processed"], r["duplicates"], r["ready"], r["acks"]) == (2, 0, 0, 0), r



def test_a_tick_waits_for_long_tasks_then_stops_the_instance_once_idle(system: System) -> None:
    """Every candidate busy with a task older than G/2: the tick's scale-down waits and says so;
    once the tasks are done the next tick stops one, and no task ran twice."""
    system.configure(POLICY="step", WORKER_THREADS="1", GRACEFUL_SHUTDOWN_TIMEOUT="10", dramatiq_queue_prefetch="1")
    system.sh("systemctl stop dramactl.timer")  # the ticks of this test are run by hand
    system.dramactl("scale-to", "2")
    system.send(2, LONG, prefix="t")
    wait_until(lambda: system.redis_counter("sys:started") == 2, 20, "both instances running a long task")
    wait_until(lambda: (w := reported(system)) and len(w) == 2 and all(x["busy"] == 1 and x["oldest_age"] > 6 for x in w.values()), 20, "both tasks older than G/2")
    system.dramactl("resume")

    out = system.dramactl("tick").stdout
    assert "workers 2 -> 1" in out and "scale-down waits for long tasks: @" in out and "stopped" not in out, out
    assert len(system.active()) == 2
    entry = json.loads(system.sh("journalctl -o json -n 1 SYSLOG_IDENTIFIER=dramactl DRAMACTL_COMMAND=tick").stdout)
    assert json.loads(entry["DRAMACTL_VICTIMS"]) == [] and len(json.loads(entry["DRAMACTL_WAITING"])) == 1, entry
    assert system.status()["last_tick"]["waiting_since"] is not None

    wait_until(lambda: system.redis()["count"] == 2, LONG + 20, "both long tasks finished")
    wait_until(lambda: all(x["busy"] == 0 for x in reported(system).values()), 10, "both instances reporting idle")
    out = system.dramactl("tick").stdout
    assert "stop @2 (idle)" in out and "stopped @2:done" in out, out
    assert system.active() == ["dramatiq-worker@1.service"]
    assert system.redis_counter("sys:started") == 2, "no long task was cut off and started again"
    assert system.status()["last_tick"]["waiting_since"] is None
