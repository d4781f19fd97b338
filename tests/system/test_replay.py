"""Replay and tune in a booted systemd: runs recorded by the real timer, rebuilt from their journal.

Two bursts of 140 one-second messages go through the real fleet (the timer grows it one
instance a tick and lets it shrink back to MIN); each burst is sent right after a tick
ended, so every run meets the timer at the same moment of its period. ``dramactl replay``
then rebuilds the arrivals and service times from the journal's counters and replays
them with the settings in force. Tolerances, over the recorded ticks: the replayed fleet
size within 0.5 instance of the recorded one on average (MAX_PROCESSES is 4), the backlog
within 15 % of its recorded mean, the actions within two (or half the recorded count) of
the recorded ones, and the p95 wait within 30 % of the real one. Measured in two runs of
bursts of 140: the fleet size off by 0.00, the backlog by 1.6-1.8 %, the p95 0.4 and 2.2 s
short of the real 23.4 and 24.8 s (bursts of 120 read 2 or 3 instances by a few messages
at the tick after the first growth: see BURST). Before (bursts of 160, sent at any moment,
the fleet free to reach MAX in one tick) the real p95 of the same load varied from run to
run by more than the replay's error (20.6-25.2 s in four runs, the replay 22.9-23.3 s):
whether a burst met 3 or 4 instances was decided by a message or two at the policy's
threshold, and one run in eight of a first redesign replayed the fleet 0.72 instance off.

``dramactl tune`` is then asked for a p95 wait a quarter of the way from static MAX's to the
settings in force's, so more than a tick below the settings in force's (the recorded run
grows one instance a tick, so the two are 5.9-7.9 s apart) and tune must change
something. The settings it prints, applied to a second real run of the same load, must
meet that p95 (each message's wait from its send to its start, as the simulator counts
it) within what the replay was short of the first run's real p95 and one tick (a growth
a tick sooner or later than in the replay): a bound under the first run's real p95,
which unchanged settings would not meet.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.system.conftest import APP_DIR, BASE_SETTINGS, PYTHON, System, wait_until

pytestmark = pytest.mark.system

# 1 s each on instances of 2 threads: 3 drain it well within the goal, 2 do not. The tick after the first growth
# reads about 125 waiting with 26 s left to drain them: 2.4 instances' work, 20 messages from either edge (2
# instances below 105, 4 above 156). 160 sat where 3 or 4 was a message or two; 120 read 106-110 there, a few
# messages above the edge of 2, and a replay that rebuilt that tick's backlog a few messages short kept 2
# instances (two CI runs: the fleet off by 0.25 and 0.50 instances, the p95 by 5-6 s).
BURST = 140
SECONDS = 1.0
FLEET_TOLERANCE = 0.5  # instances, mean absolute error over the recorded ticks
BACKLOG_TOLERANCE = 0.15  # of the recorded mean backlog, mean absolute error over the recorded ticks
P95_TOLERANCE = 0.30  # of the real p95 wait
TICK = float(BASE_SETTINGS["CHECK_INTERVAL"])
# The recorded run grows one instance a tick, so static MAX's p95 is well below the settings in force's
# and a p95 between them asks tune for a real change (with no step limit the fleet may reach MAX in one
# tick, the two p95s meet and tune rightly changes nothing: a CI run then compared two runs of the same
# settings, 21.9 s and 24.8 s, against a target of 18 s).
RECORDED = {"MAX_SCALE_UP_STEP": "1"}


def work_done(system: System) -> int:
    return int(system.sh("redis-cli hget dramatiq:__dramactl__.work.sys done").stdout.strip() or 0)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


def right_after_a_tick(system: System) -> None:
    """Wait for the next tick to end: a burst sent then meets the timer at the same moment of its
    period in every run (its first read comes about a CHECK_INTERVAL later)."""
    show = "systemctl show -P ExecMainExitTimestampMonotonic dramactl.service"
    before = system.sh(show).stdout.strip()
    wait_until(lambda: system.sh(show).stdout.strip() != before, 4 * TICK + 10, "a tick that ended", interval=0.05)


def record(system: System, **settings: str) -> tuple[float, float, int, float]:
    """One recorded run under ``settings``: (since, until, the largest fleet seen, the real p95 wait of the bursts)."""
    system.reset()
    system.configure(**settings)
    system.dramactl("scale-to", "1")
    system.dramactl("resume")
    system.send(10, SECONDS, prefix="warm")
    wait_until(lambda: work_done(system) >= 10, 120, "the hook reported the warm-up's 10 completions")
    since = float(system.sh("date +%s.%N").stdout)
    system.sh("systemctl start dramactl.timer")
    time.sleep(8)  # a few idle ticks first
    peak, waits = 1, []
    for n in range(2):
        system.sh("redis-cli del sys:waits")
        right_after_a_tick(system)
        code = f"import sysapp, json, time\nfor i in range({BURST}): sysapp.work.send('b{n}-%d' % i, {SECONDS}, time.time())\nprint(json.dumps(True))"
        system.c.python(PYTHON, code, cwd=APP_DIR)
        deadline = time.monotonic() + 150
        while system.redis()["count"] < 10 + (n + 1) * BURST:
            assert time.monotonic() < deadline, f"burst {n} not processed within 150 s: {system.redis()}, {system.units()}"
            peak = max(peak, len(system.active()))
            time.sleep(0.5)
        burst = [float(x) for x in system.sh("redis-cli lrange sys:waits 0 -1").stdout.split()]
        assert len(burst) == BURST
        waits += burst
        wait_until(lambda: len(system.active()) <= int(settings.get("MIN_PROCESSES", BASE_SETTINGS["MIN_PROCESSES"])), 90,
                   "the fleet shrank back to MIN after the burst")
    system.sh("systemctl stop dramactl.timer")
    return since, float(system.sh("date +%s.%N").stdout), peak, nearest_rank(waits, 95)


def test_a_recorded_run_replays_its_fleet_and_tunes_settings_that_meet_the_p95_in_a_second_run(system: System) -> None:
    since, until, peak, real_p95 = record(system, **RECORDED)
    env_before = system.sh("cat /etc/dramactl/dramactl.env").stdout
    assert peak >= 2  # the recorded run did scale: a constant fleet would make the comparison empty

    span = ["--since", f"@{since}", "--until", f"@{until}"]
    report = json.loads(system.dramactl("replay", *span, "--set", "MAX_QUEUE_WAIT=5", "--json").stdout)
    text = system.dramactl("replay", *span, "--set", "MAX_QUEUE_WAIT=5").stdout
    print(f"\n[replay] real p95 wait of the recorded run: {real_p95:.1f}s\n$ dramactl replay --since @{since:.0f} --until @{until:.0f} --set MAX_QUEUE_WAIT=5\n{text}")
    # The recorded ticks, for a failure's report: where the replay's fleet parts from the recorded one, which tick
    # decided otherwise (so BURST was found to sit on a threshold; see there).
    print(f"$ dramactl history --since @{since:.0f} --until @{until:.0f}\n{system.dramactl('history', *span).stdout}")
    fit = report["fit"]
    rows = {r["name"]: r for r in report["rows"]}
    assert report["ticks"] >= 10 and fit["ticks"] >= 10, report
    assert report["messages"] >= 2 * BURST * 0.95, report  # what the counters say arrived
    assert fit["fleet_mae"] <= FLEET_TOLERANCE, fit
    assert fit["backlog_mae"] <= BACKLOG_TOLERANCE * fit["backlog_mean"], fit
    hours = (report["until"] - report["since"]) / 3600.0
    recorded_actions = rows["recorded"]["actions_per_hour"] * hours
    assert abs(rows["settings in force"]["actions_per_hour"] * hours - recorded_actions) <= max(2.0, recorded_actions / 2) + 1e-6, rows
    assert abs(rows["settings in force"]["p95_wait"] - real_p95) <= P95_TOLERANCE * real_p95, (rows["settings in force"], real_p95)
    assert report["cv_source"] == "measured by the hook" and report["service_cv"] < 0.1, report  # the messages are all 1 s
    assert rows["recorded"]["peak_workers"] >= peak - 1  # the journal saw the fleet the test saw (a tick reads before its step)
    assert {"settings in force", "MAX_QUEUE_WAIT=5", "static MAX (4)", "hpa/keda 15s", "lower bound"} <= set(rows)
    assert rows["lower bound"]["worker_hours"] <= min(r["worker_hours"] for n, r in rows.items() if n not in ("lower bound", "recorded"))

    # A p95 a fleet within MIN..MAX can meet on this range (static MAX's is among tune's combinations), well below
    # the settings in force's: a quarter of the way from static MAX's. More than a tick below it, the bound the second
    # run is held to (below) is under the first run's real p95: a second run of unchanged settings would not meet it.
    in_force, static = rows["settings in force"]["p95_wait"], rows["static MAX (4)"]["p95_wait"]
    target = f"{static + (in_force - static) / 4:.1f}"
    assert float(target) + TICK < in_force, rows  # one instance a tick: MAX comes two ticks after the first growth
    tuned = system.dramactl("tune", "--p95", target, *span, check=False)
    print(f"$ dramactl tune --p95 {target} --since @{since:.0f} --until @{until:.0f}\n{tuned.stdout}")
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    result = json.loads(system.dramactl("tune", "--p95", target, *span, "--json").stdout)
    assert result["met"] and result["after"]["p95_wait"] <= float(target)
    assert result["env"] and all(line in tuned.stdout.splitlines() for line in result["env"])  # a change: the target is below the settings in force's
    assert system.sh("cat /etc/dramactl/dramactl.env").stdout == env_before  # nothing changed

    # The second run of the same load under tune's settings meets the target as far as the replay is right about
    # this load: within what it was short of the first run's real p95, and one tick (a growth a tick sooner or
    # later than in the replay).
    applied = dict(line.split("=", 1) for line in result["env"])
    _, _, _, tuned_p95 = record(system, **{**RECORDED, **applied})
    short = max(0.0, real_p95 - in_force)
    print(f"[replay] second real run with {applied}: p95 wait {tuned_p95:.1f}s (asked {target}s, the replay {short:.1f}s short "
          f"of the first run's {real_p95:.1f}s)")
    assert tuned_p95 <= float(target) + short + TICK
