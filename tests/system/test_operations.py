"""Operator-facing behaviour in a booted systemd: manage script, drain, status, failures, pause."""

from __future__ import annotations

import json
import re
import statistics
import time

import pytest

from tests.system.conftest import DRAMACTL, PYTHON, REPO, System, wait_until

pytestmark = pytest.mark.system

MANAGE = str(REPO / "manage_dramatiq.sh")


def manage(system: System, *args: str, check: bool = True):
    return system.c.run([MANAGE, *args], env={"DRAMACTL": DRAMACTL}, check=check)


def test_manage_start_2_4(system: System) -> None:
    """`start 2 4`: exactly @1 and @2, each Dramatiq worker really running 4 threads."""
    manage(system, "start", "2", "4")
    assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"]
    assert set(system.units()) == {"dramatiq-worker@1.service", "dramatiq-worker@2.service"}
    for n in (1, 2):
        # StatusText comes from the running worker's own Worker object (the READY hook).
        text = system.sh(f"systemctl show -P StatusText dramatiq-worker@{n}").stdout
        assert "with 4 threads" in text, text
    # Behaviour, not config: 16 slow messages; at most 2 x 4 run at once. 10 s each: the checks and the
    # stop below must come before the first 8 end (and the drain lets them end, GRACEFUL_SHUTDOWN_TIMEOUT=20).
    system.send(16, 10.0)
    wait_until(lambda: system.redis_counter("sys:started") >= 8, 15, "8 tasks running")
    time.sleep(1.0)
    assert system.redis_counter("sys:started") == 8
    assert system.redis()["count"] == 0

    out = manage(system, "status").stdout
    assert "dramatiq-worker@1.service" in out and "PAUSED" in out
    logs = manage(system, "logs", "50").stdout
    assert "dramatiq-worker@" in logs and "ready for action" in logs

    manage(system, "stop")
    assert system.units() == {}
    # The stop drained: the 8 running tasks finished, the prefetched rest went back.
    r = system.redis()
    assert r["count"] == 8 and r["ready"] == 8 and r["acks"] == 0, r


def test_scale_down_under_load_loses_nothing(system: System) -> None:
    """Stopping instances with 5 s tasks in flight: every message completes exactly once."""
    system.dramactl("scale-to", "3")
    system.send(12, 5.0)
    wait_until(lambda: system.redis_counter("sys:started") >= 6, 15, "all 6 threads busy")
    out = system.dramactl("scale-to", "1").stdout
    # Every instance is busy: the two whose work started last stop (issue 19), whichever they are.
    stopped = [int(n) for n in re.findall(r"@(\d+):done", out.split("stopped ", 1)[1])]
    assert len(stopped) == 2 and len(system.active()) == 1, out
    for n in stopped:
        result = system.sh(f"journalctl --no-pager -o cat -u dramatiq-worker@{n}").stdout
        assert "Worker has been shut down" in result
    wait_until(lambda: system.redis()["count"] >= 12, 90, "all 12 messages processed")
    r = system.redis()
    assert r["processed"] == 12 and r["duplicates"] == 0, r
    assert (r["ready"], r["msgs"], r["delayed"], r["dead"], r["acks"]) == (0, 0, 0, 0, 0), r


def test_status_json_agrees_with_systemd_and_redis(system: System) -> None:
    system.dramactl("scale-to", "2")
    system.send(8, 20.0)  # 2 workers x 2 threads in flight (the hook fetches only for free threads), 4 ready: stable
    code = (
        "import sysapp, json\n"
        "for i in range(3): sysapp.work.send_with_options(args=('d%d' % i, 0.1), delay=600000)\n"
        "print(json.dumps(True))"
    )
    system.c.python(PYTHON, code, cwd=str(REPO / "tests/system"))
    wait_until(lambda: system.redis()["ready"] == 4, 10, "workers to take a message per thread")
    status = system.status()
    truth = {}
    for n in (1, 2):
        props = system.sh(f"systemctl show -p MainPID -p ActiveState -p SubState dramatiq-worker@{n}").stdout
        truth[f"dramatiq-worker@{n}.service"] = dict(line.split("=", 1) for line in props.split())
    r = system.redis()
    assert status["errors"] == [] and status["unread"] == []
    for res in (system.dramactl("status", check=False), system.dramactl("status", "--json", check=False), manage(system, "status", check=False)):
        assert res.returncode == 0, res.stdout + res.stderr  # everything was read
    assert {u["name"]: (str(u["pid"]), u["active_state"], u["sub_state"]) for u in status["instances"]} == {
        name: (t["MainPID"], t["ActiveState"], t["SubState"]) for name, t in truth.items()
    }
    (q,) = status["queues"]
    assert q["name"] == "sys"
    assert (q["ready"], q["in_flight"], q["delayed"], q["dead"]) == (r["ready"], r["msgs"] - r["ready"], r["delayed"], r["dead"])
    assert q["in_flight"] == 4 and q["ready"] == 4 and q["delayed"] == 3 and q["due"] == 0
    assert status["paused"] is True and status["limits"]["max"] == 4
    # The CHECK_INTERVAL drop-in replaces the shipped 180 s trigger instead of adding one.
    timers = system.sh("systemctl show -P TimersMonotonic dramactl.timer").stdout
    assert timers.count("OnUnitActiveUSec") == 1 and "OnUnitActiveUSec=3s" in timers, timers
    assert status["timer"]["interval"] == 3.0


UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"  # systemd's catalog: a unit's start job began


def test_timer_ticks_every_check_interval(system: System) -> None:
    """OnUnitActiveSec counts from the last tick's start, so the timer's AccuracySec slack
    adds to every interval: with AccuracySec=1s the CHECK_INTERVAL=3 timer ticked every 4 s."""
    system.dramactl("scale-to", "1")  # paused: the ticks only hold
    system.sh("systemctl start dramactl.timer")

    def starts() -> list[float]:
        lines = system.sh("journalctl -o json -u dramactl.service").stdout.splitlines()
        return [int(e["__MONOTONIC_TIMESTAMP"]) / 1e6 for e in map(json.loads, lines) if e.get("MESSAGE_ID") == UNIT_STARTING]

    wait_until(lambda: len(starts()) >= 9, 60, "nine ticks")
    system.sh("systemctl stop dramactl.timer")
    ticks = starts()
    gaps = [b - a for a, b in zip(ticks[1:], ticks[2:])]  # after OnActiveSec's first tick
    assert 3.0 <= statistics.median(gaps) < 3.5, gaps


def test_tick_with_redis_down_changes_nothing(system: System) -> None:
    system.dramactl("scale-to", "2")
    system.dramactl("resume")
    system.sh("systemctl stop redis-server")
    try:
        system.sh("systemctl start dramactl.timer")
        wait_until(
            lambda: system.sh("journalctl --no-pager -o cat -u dramactl.service").stdout.count("cannot reach Redis") >= 3,
            30,
            "three ticks reporting Redis down (the timer keeps firing)",
        )
        assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"]
        line = next(l for l in system.c.journal("dramactl.service").splitlines() if "cannot reach Redis" in l)
        assert line.startswith("dramactl: REDIS_HOST: cannot reach Redis at localhost:6379"), line
        # status still prints what it could read (systemd's instances) and says in its exit code that Redis was not;
        # the same for --json, and manage_dramatiq.sh passes the code on.
        for res in (system.dramactl("status", check=False), manage(system, "status", check=False)):
            assert res.returncode == 2, res.stdout + res.stderr
            assert "dramatiq-worker@2.service" in res.stdout and "error: redis: REDIS_HOST: cannot reach Redis" in res.stdout, res.stdout
        res = system.dramactl("status", "--json", check=False)
        data = json.loads(res.stdout)
        assert (res.returncode, data["unread"], len(data["instances"])) == (2, ["redis"], 2), res.stdout
    finally:
        system.sh("systemctl start redis-server")


def test_failing_worker_is_reported_not_multiplied(system: System) -> None:
    system.configure(DRAMATIQ_COMMAND="dramatiq no_such_app_module")
    system.dramactl("resume")
    system.send(40, 0.1)
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: "hold:" in system.c.journal("dramactl.service"), 30, "a tick holding on the failed unit")
    time.sleep(7)  # two more ticks
    units = system.units()
    assert units == {"dramatiq-worker@1.service": "failed/failed"}, units
    status = system.status()
    assert [u["name"] for u in status["instances"] if u["is_failing"]] == ["dramatiq-worker@1.service"]
    log = system.c.journal("dramactl.service")
    assert "started @1:failed" in log and "reset-failed" in log


def test_manual_size_holds_while_paused(system: System) -> None:
    system.dramactl("scale-to", "3")
    system.sh("systemctl start dramactl.timer")
    time.sleep(10)  # three ticks with an empty queue: the policy alone would shrink
    assert len(system.active()) == 3
    assert "manual size 3, autoscaling paused until `dramactl resume`" in system.c.journal("dramactl.service")
    system.dramactl("resume")
    wait_until(lambda: len(system.active()) == 1, 45, "the timer shrinking to MIN after resume")


def test_new_thread_count_restarts_the_instances_that_stay(system: System) -> None:
    system.dramactl("scale-to", "3", "--threads", "3")
    pids = {n: system.sh(f"systemctl show -P MainPID dramatiq-worker@{n}").stdout.strip() for n in (1, 2)}
    # Idle instances tie to the highest number only once all three report (one not reporting yet
    # ranks after the idle ones, victims.py), so wait for their first reports.
    wait_until(lambda: all(u["work"] is not None for u in system.status()["instances"]), 20, "all three instances reporting")
    out = system.dramactl("scale-to", "2", "--threads", "1").stdout
    assert "stopped @3:done" in out and "restarted @1:done @2:done" in out, out
    assert system.active() == ["dramatiq-worker@1.service", "dramatiq-worker@2.service"]
    for n in (1, 2):
        assert system.sh(f"systemctl show -P MainPID dramatiq-worker@{n}").stdout.strip() != pids[n]
        assert "with 1 threads" in system.sh(f"systemctl show -P StatusText dramatiq-worker@{n}").stdout
    assert system.status()["threads"] == 1


def test_scaler_runs_as_dramactl_and_may_manage_only_workers(system: System) -> None:
    """The tick runs unprivileged; polkit lets that user start/stop workers and nothing else."""
    system.dramactl("resume")
    system.sh("systemctl start dramactl.timer")
    wait_until(lambda: system.active() == ["dramatiq-worker@1.service"], 20, "the timer's tick to start @1 as MIN")
    uids = {json.loads(line)["_UID"] for line in system.sh("journalctl -o json -u dramactl.service _COMM=dramactl").stdout.splitlines()}
    assert uids == {system.sh("id -u dramactl").stdout.strip()}, uids
    worker_user = system.sh("ps -o user= -p $(systemctl show -P MainPID dramatiq-worker@1)").stdout.strip()
    assert worker_user == "dramatiq"
    system.sh("systemctl stop dramactl.timer")

    probe = (
        "import json\n"
        "from dramactl.fleet import Fleet, FleetError\n"
        "out = {}\n"
        "with Fleet() as f:\n"
        "    out['start5'] = f.start([5])[0].result\n"
        "    out['stop5'] = f.stop([5])[0].result\n"
        "    for name, call in (('stop_redis', lambda: f.stop_unit('redis-server.service')),\n"
        "                       ('start_other', lambda: f.start_unit('systemd-tmpfiles-clean.service')),\n"
        "                       ('reload', f.reload)):\n"
        "        try:\n"
        "            call(); out[name] = 'allowed'\n"
        "        except FleetError as e:\n"
        "            out[name] = str(e)\n"
        "print(json.dumps(out))"
    )
    out = system.c.python(PYTHON, probe, user="dramactl")
    assert out["start5"] == "done" and out["stop5"] == "done", out
    for verb in ("stop_redis", "start_other", "reload"):
        refused = "Permission denied" in out[verb] or "Interactive authentication required" in out[verb]
        assert refused and "polkit lets the dramactl user" in out[verb], (verb, out[verb])
    assert system.sh("systemctl is-active redis-server").stdout.strip() == "active"
