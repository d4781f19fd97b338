"""The bad day, in a booted systemd and with real faults: nothing lost, the fleet within
MIN..MAX, recovery without an operator. CI-sized; bench/fault_soak.py is the long run."""

from __future__ import annotations

import json
import time

import pytest

from tests.system import faults
from tests.system.conftest import DRAMACTL, REPO, System, wait_until

pytestmark = pytest.mark.system

HEARTBEAT = 20.0  # the test app's Dramatiq heartbeat timeout (SYSAPP_HEARTBEAT_TIMEOUT), seconds
FAULT_SETTINGS = {
    "MIN_PROCESSES": "1",
    "MAX_PROCESSES": "4",
    "WORKER_THREADS": "4",
    "CHECK_INTERVAL": "3",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "5",
    "SCALE_DOWN_STABILIZATION": "6",
    "SYSAPP_HEARTBEAT_TIMEOUT": str(int(HEARTBEAT * 1000)),
}


def test_nothing_lost_and_fleet_within_bounds_under_faults(system: System) -> None:
    """2,000 recorded messages (plain, time-limited with half of those failing once, two-step
    pipelines) through 6 SIGKILLs of units and 3 of Dramatiq's worker child process, a Redis
    restart, a 30 s Redis hang (SIGSTOP, then SIGCONT), a 30 s Redis stop and a manual scale-down
    under load, then resume: every message processed, none dead-lettered, nothing stranded in an
    ack set a heartbeat timeout after the drain, never more than MAX up or coming back, never
    below MIN, orphans redelivered in time."""
    plan = faults.FaultPlan(
        messages=2000, waves=2, seconds=0.5, kills=6, child_kills=3, kill_every=4.0, redis_hang=30.0, redis_stop=30.0, scale_to=1, settings=FAULT_SETTINGS
    )
    report = faults.run(system, plan, wait_until, log=lambda s: print(f"[faults] {s}"))
    print("\n" + "\n".join(f"[faults] {line}" for line in report.lines()))
    assert report.kills >= 6 and report.child_kills >= 3, report.lines()
    assert report.lost == 0 and report.dead == 0, report.lines()
    assert report.stranded == 0, report.lines()
    assert report.max_occupied <= 4, report.lines()
    assert report.below_min == 0, report.lines()
    # Orphans show only once their worker's heartbeat expired; maintenance (every 5 s in each
    # worker) or the next tick's new worker redelivers them: one tick plus slack.
    assert report.orphaned_for <= 5 + 3 + 7, report.lines()
    assert report.redis_down_ticks >= 3, report.lines()
    assert "stopped" in report.scale_down and "failed" not in report.scale_down, report.scale_down
    r = system.redis()
    assert (r["ready"], r["msgs"], r["delayed"], r["acks"]) == (0, 0, 0, 0), r
    assert r["failed"] == 2000 // 4, r  # every fail-once message failed once (and then ran: nothing lost)
    assert report.outlived == 0, report.lines()  # each unit SIGKILL took the whole unit, the worker child with it


def unit_samples(system: System, unit: str, seconds: float, every: float = 0.5) -> list[dict[str, str]]:
    """``unit``'s ActiveState, SubState, MainPID and pending job (type, from list-jobs) every
    ``every`` seconds for ``seconds``, sampled by one loop inside the container."""
    loop = (
        f"end=$(( $(date +%s) + {int(seconds)} )); while [ $(date +%s) -lt $end ]; do "
        f"echo '--'; systemctl show -p ActiveState -p SubState -p MainPID {unit}; "
        f"echo \"JobType=$(systemctl list-jobs --plain --no-legend {unit} | awk '{{print $3}}' | head -1)\"; sleep {every}; done"
    )
    out = system.sh(loop, timeout=seconds + 60).stdout
    samples = []
    for block in out.split("--\n")[1:]:
        samples.append(dict(line.split("=", 1) for line in block.splitlines() if "=" in line))
    return samples


def test_the_hooks_recovery_of_dropped_delayed_messages_never_stops_the_unit(system: System) -> None:
    """One instance holds delayed messages in memory; Redis stops for 8 s, so Dramatiq's consumer
    drops its in-memory delay queue while the ids stay in the worker's ack set; Redis starts
    again. The hook hands them back (its stranded-message sweep) with the worker still running:
    for the next 40 s the unit stays active/running with no job and the same MainPID, and every
    delayed message is processed exactly once with nothing left in any ack set. (The SIGHUP
    reload it replaced sent STOPPING=1, which systemd takes as the service stopping: the unit sat
    deactivating with no stop job, which the scaler counts as failing, until TimeoutStopSec.)"""
    system.configure(**{**FAULT_SETTINGS, "MAX_PROCESSES": "1"})
    system.dramactl("scale-to", "1")
    unit = "dramatiq-worker@1.service"
    pid = system.sh(f"systemctl show -P MainPID {unit}").stdout.strip()
    count = 20
    system.send_delayed(count, 0.1, 20_000)
    wait_until(
        lambda: system.redis()["acks"] == count and system.sh("redis-cli llen dramatiq:sys.DQ").stdout.strip() == "0",
        10,
        "the worker to hold every delayed message in memory",
    )
    system.sh("systemctl stop redis-server")
    time.sleep(8)  # longer than a maintenance round (5 s): the hook's own Redis calls fail too
    system.sh("systemctl start redis-server")
    samples = unit_samples(system, unit, 40)
    assert len(samples) >= 40, samples
    log = system.c.journal(unit)
    assert "Consumer encountered a connection error" in log, log[-3000:]  # the delay queue was dropped
    bad = [s for s in samples if (s.get("ActiveState"), s.get("SubState"), s.get("JobType"), s.get("MainPID")) != ("active", "running", "", pid)]
    assert not bad, f"{len(bad)} of {len(samples)} samples not active/running with no job and MainPID {pid}: {bad[:3]} ... {bad[-1:]}"
    wait_until(lambda: system.redis()["processed"] == count, 20, "every delayed message processed")
    wait_until(lambda: system.redis()["acks"] == 0, 10, "nothing left in any ack set")
    r = system.redis()
    assert (r["processed"], r["duplicates"], r["count"], r["ready"], r["msgs"], r["delayed"], r["acks"]) == (count, 0, count, 0, 0, 0, 0), r
    print(f"\n[faults] {count} delayed messages dropped from memory by an 8 s Redis stop: handed back and processed once each; {unit} active/running with MainPID {pid} in all {len(samples)} samples over 40 s")


def gave_up(system: System, unit: str) -> int:
    """How often systemd refused to restart ``unit`` (start limit), from its journal."""
    return system.c.journal(unit).count("Start request repeated too quickly")


def kill_until_failed(system: System, unit: str, limit: int = 12) -> int:
    """SIGKILL ``unit`` each time it runs again, until systemd gives up on it (start limit)."""
    before = gave_up(system, unit)
    for kills in range(1, limit + 1):
        wait_until(lambda: system.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", 20, f"{unit} running")
        faults.kill_unit(system, unit)  # may race a process just exiting
        time.sleep(0.3)
        wait_until(
            lambda: gave_up(system, unit) > before or system.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active",
            45,  # RestartSec, then a start-up that a loaded CI machine can make slow
            f"{unit} restarted or given up",
            interval=0.2,
        )
        if gave_up(system, unit) > before:
            return kills
    pytest.fail(f"{unit} never hit its start limit in {limit} kills")


def test_sigkill_loop_past_the_start_limit_recovers_with_backoff(system: System) -> None:
    """An OOM-killer-style loop: systemd gives up on the last instance (start limit). The next
    tick resets it and starts it again; when it is killed past the limit again right away, the
    next reset waits (backoff, shown in status and the journal) and then brings it back."""
    system.configure(**{**FAULT_SETTINGS, "MAX_PROCESSES": "2"})
    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    unit = "dramatiq-worker@1.service"
    with faults.Sampler(system) as sampler:
        kills = kill_until_failed(system, unit)
        gave_up = time.monotonic()
        wait_until(lambda: system.active() == [unit], 20, "the tick to reset and restart @1")
        first = time.monotonic() - gave_up
        log = system.c.journal("dramactl.service")
        assert "recover: reset-failed @1 (attempt 1;" in log, log[-3000:]

        kill_until_failed(system, unit)
        again = time.monotonic()
        wait_until(lambda: "before resetting @1 (backoff after 1 attempt(s))" in system.c.journal("dramactl.service"), 10, "a tick waiting out the backoff")
        status = system.status()
        assert status["recovery"]["attempts"] == 1 and status["recovery"]["next_at"] > time.time() - 1, status["recovery"]
        text = system.dramactl("status").stdout
        assert "recovery: 1 reset(s) of failed instances in a row" in text, text
        wait_until(lambda: system.active() == [unit], 30, "@1 back after the backoff")
        second = time.monotonic() - again
    log = system.c.journal("dramactl.service")
    assert "recover: reset-failed @1 (attempt 2;" in log, log[-3000:]
    assert "before resetting @1 (backoff after 1 attempt(s))" in log
    assert max(faults.occupied(row) for row in sampler.rows) <= 2
    ran = {name for row in sampler.rows for name, state in row["units"].items() if not state.startswith(("inactive/", "failed/"))}
    assert ran == {unit}, f"never grew into failures: {ran}"
    print(f"\n[faults] start limit hit after {kills} SIGKILLs; back in {first:.1f}s; after failing again, back in {second:.1f}s (10 s backoff)")
    # The first reset comes with the next tick; the second waits out the 10 s backoff.
    assert first <= 3 + 10 and 10 <= second <= 10 + 3 + 10


def manage(system: System, *args: str):
    return system.c.run([str(REPO / "manage_dramatiq.sh"), *args], env={"DRAMACTL": DRAMACTL})


def test_reboot_brings_back_a_manual_size_then_autoscaling_at_min(system: System) -> None:
    system.configure(MIN_PROCESSES="1", MAX_PROCESSES="4")
    manage(system, "start", "2", "4")
    system.sh("systemctl enable dramactl.timer")
    try:
        took = system.c.reboot()
        wait_until(lambda: len(system.active()) == 2, 30, "two instances after the reboot")
        for n in (1, 2):
            assert "with 4 threads" in system.sh(f"systemctl show -P StatusText dramatiq-worker@{n}").stdout
        status = system.status()
        assert (status["paused"], status["size"], status["threads"]) == (True, 2, 4)
        print(f"\n[faults] reboot took {took:.1f}s; `start 2 4` came back as 2 x 4 threads")

        system.dramactl("resume")
        system.c.reboot()
        wait_until(lambda: len(system.active()) == 1, 30, "autoscaling back at MIN after the reboot")
        assert system.status()["paused"] is False
    finally:
        system.sh("systemctl disable dramactl.timer", check=False)


def test_orphaned_messages_are_shown_and_redelivered_with_no_worker_running(system: System) -> None:
    """A worker SIGKILLed while holding messages, with MIN_PROCESSES=0 and nothing else running:
    once its heartbeat expires the messages show as orphaned (not in flight), count in the
    backlog, and the next tick's worker redelivers them through Dramatiq's own maintenance."""
    system.configure(**{**FAULT_SETTINGS, "MIN_PROCESSES": "0", "MAX_PROCESSES": "2", "WORKER_THREADS": "2"})
    system.dramactl("scale-to", "1")
    system.send(4, 8.0)  # 2 threads: 2 running; the hook leaves the other 2 in Redis for a free thread
    wait_until(lambda: system.redis_counter("sys:started") >= 2 and system.redis()["ready"] == 2, 15, "the worker to take two")
    faults.kill_unit(system, "dramatiq-worker@1.service")
    system.sh("systemctl stop dramatiq-worker@1; systemctl reset-failed dramatiq-worker@1 2>/dev/null; true")
    assert system.units() == {}
    killed = time.monotonic()

    def orphaned() -> int:
        (q,) = system.status()["queues"]
        return q["orphaned"]

    wait_until(lambda: orphaned() == 2, HEARTBEAT + 10, "two orphaned messages")
    shown = time.monotonic() - killed
    (q,) = system.status()["queues"]
    assert (q["ready"], q["in_flight"], q["orphaned"], q["backlog"]) == (2, 0, 2, 4), q
    assert "ORPHANED" in system.dramactl("status").stdout

    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: orphaned() == 0, 3 + 15, "the orphans redelivered by the new worker")
    redelivered = time.monotonic() - killed
    wait_until(lambda: system.redis()["processed"] == 4, 60, "all four processed")
    r = system.redis()
    assert (r["ready"], r["msgs"], r["acks"]) == (0, 0, 0), r
    assert "orphaned=2" in system.c.journal("dramactl.service")
    print(f"\n[faults] orphans shown {shown:.1f}s after the kill (heartbeat timeout {HEARTBEAT:.0f}s), redelivered at {redelivered:.1f}s")
    assert redelivered <= HEARTBEAT + 3 + 15
    assert json.loads(system.dramactl("status", "--json").stdout)["queues"][0]["orphaned"] == 0
