"""The tick's memory recycle (WORKER_RECYCLE_MEMORY) and a rolling restart's failed step, against a real Redis with
systemd's side a stand-in (:class:`Systemd`: units appear and disappear when asked, each with its start time, as
Fleet lists them). The ticks are the real ``scaler.tick`` at a clock the test moves (``now``), three seconds apart
as with CHECK_INTERVAL=3.

* An app whose footprint at start is over WORKER_RECYCLE_MEMORY was recycled at every tick for ever (25 recycles in
  120 s, a 25 s task started 7 times and never done): an instance younger than recycle.min_age is not recycled and
  the tick line names the setting; an old one over the limit still is.
* A recycle's replacement got 30 s (START_WAIT) to be ready, not the unit's TimeoutStartSec as a rolling restart's
  does; and one that did not start was tried again at every tick.
* A rolling restart (and a recycle) at MAX_PROCESSES drains first; when the replacement then does not start, the
  old instance is gone: the line says so, and what brings it back, and that is what the next tick does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
import time
from typing import Iterable

import pytest
import redis as redis_lib
from click.testing import CliRunner

from dramactl import rollout, scaler
from dramactl.cli import main
from dramactl.fleet import JobResult
from dramactl.instance import WorkerUnit, unit_name
from dramactl.settings import parse

MIB = 1 << 20
STEP = 3.0  # seconds between ticks (CHECK_INTERVAL=3)
MIN_AGE = 300.0  # recycle.min_age at CHECK_INTERVAL=3: WORKER_RECYCLE_MIN_AGE, 5 minutes


class Systemd:
    """This host's instances as systemd lists them. A start is ready after ``app_start`` seconds of the test's clock
    (``now``); a start job not done within the caller's timeout is "pending" (systemd then times it out), and a
    replacement that did not start is killed, stopped and reset by the caller (rollout.replace_step)."""

    def __init__(self, now: float, footprint: int = 130 * MIB) -> None:
        self.now = now
        self.footprint = footprint
        self.app_start = 1.0
        self.unit_timeouts = (90.0, 75.0)  # TimeoutStartSec, TimeoutStopSec
        self.failing_starts = 0  # this many starts fail (exit 2: the app cannot be imported) before they work again
        self.units: dict[int, WorkerUnit] = {}
        self.jobs: list[tuple[str, int]] = []
        self.start_timeouts: list[float] = []
        self.timed: list[tuple[int, ...]] = []  # the start times read (Fleet.instances' ``timed``), per call

    def instances(self, details: bool = False, timed: Iterable[int] = (), memory: bool = False) -> list[WorkerUnit]:
        timed = tuple(timed)
        if timed:
            self.timed.append(timed)
        # As Fleet lists them: a healthy instance's timestamps are read only for the ``timed`` ones.
        return [u if (details or u.number in timed) else replace(u, since=None, started=None) for _, u in sorted(self.units.items())]

    def start(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        results = []
        for n in numbers:
            self.jobs.append(("start", n))
            self.start_timeouts.append(timeout)
            if self.failing_starts:
                self.failing_starts -= 1
                self.units[n] = WorkerUnit(n, "failed", "failed", result="exit-code", since=self.now)
                results.append(JobResult(unit_name(n), "start", "failed"))
            elif self.app_start > timeout:
                self.units[n] = WorkerUnit(n, "activating", "start", job="start", started=self.now)
                results.append(JobResult(unit_name(n), "start", "pending"))
            else:
                self.units[n] = WorkerUnit(n, "active", "running", memory=self.footprint, started=self.now, since=self.now + self.app_start)
                results.append(JobResult(unit_name(n), "start", "done"))
        return results

    def stop(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        numbers = tuple(numbers)
        for n in numbers:
            self.jobs.append(("stop", n))
            self.units.pop(n, None)
        return [JobResult(unit_name(n), "stop", "done") for n in numbers]

    def restart(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        return []

    def timeouts(self, number: int) -> tuple[float, float]:
        return self.unit_timeouts

    def why_not_started(self, number: int) -> str:
        if self.units.get(number, WorkerUnit(number, "inactive", "dead")).active_state == "failed":
            return "exit status 2 (the app cannot be imported), failed"
        return f"no READY=1 within TimeoutStartSec={self.unit_timeouts[0]:g}s, failed"

    def kill(self, numbers: Iterable[int], signal: int = 9) -> None:
        pass

    def reset_failed(self, numbers: Iterable[int]) -> None:
        for n in numbers:
            if n in self.units and self.units[n].active_state == "failed":
                self.units.pop(n)

    def tick(self, settings, at: float) -> scaler.Outcome:
        self.now = at
        self.jobs.clear()
        return scaler.tick(settings, fleet=self, now=at)  # type: ignore[arg-type]


@pytest.fixture
def env(settings_env: dict[str, str]) -> dict[str, str]:
    return {**settings_env, "MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "CHECK_INTERVAL": "3", "WORKER_RECYCLE_MEMORY": "64M"}


def one_instance(settings, now: float, age: float = 0.0) -> Systemd:
    """A fleet of one sized by hand (as in docs/deploys.md), its instance ``age`` seconds old at ``now``."""
    systemd = Systemd(now - age)
    scaler.scale_to(settings, 1, fleet=systemd)  # type: ignore[arg-type]
    assert list(systemd.units) == [1]
    systemd.jobs.clear()
    return systemd


def test_an_instance_over_the_limit_from_its_start_is_not_recycled_and_the_line_names_the_setting(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    """The app holds 130 MiB from its start, WORKER_RECYCLE_MEMORY=64M: 40 ticks over two minutes recycle nothing (it
    recycled @1, @2, @1, ... at every tick) and each line says why, naming the setting and the fix, once."""
    settings = parse(env)
    t0 = time.time()
    systemd = one_instance(settings, t0)
    lines = []
    for k in range(1, 41):
        outcome = systemd.tick(settings, t0 + k * STEP)
        lines.append(outcome.summary())
        assert systemd.jobs == [] and outcome.recycled is None and outcome.ok, outcome.summary()
    assert all(line.count("WORKER_RECYCLE_MEMORY") == 2 and "| recycle @" not in line for line in lines), lines
    assert f"@1 is over WORKER_RECYCLE_MEMORY (130 MiB > 64 MiB) {3 * STEP - 1:.0f} s after its start: " in lines[2], lines[2]
    assert lines[2].endswith(
        ": the setting is below the app's footprint; not recycled (no instance is before it is 300 s old);"
        " raise WORKER_RECYCLE_MEMORY above what a fresh instance holds"
    ), lines[2]
    # Only the instance over the limit had its start time read, once a tick (the listing reads none for a healthy one).
    assert systemd.timed == [(1,)] * 40


def test_an_old_instance_over_the_limit_is_still_recycled_and_its_young_replacement_is_not(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    settings = parse(env)
    t0 = time.time()
    systemd = one_instance(settings, t0, age=MIN_AGE + 1)  # a little past the minimum age: recycled
    outcome = systemd.tick(settings, t0)
    assert outcome.recycled == "recycle @1 (130 MiB > 64 MiB)" and systemd.jobs == [("start", 2), ("stop", 1)], outcome.summary()
    assert outcome.ok and "WORKER_RECYCLE_MEMORY" not in outcome.summary(), outcome.summary()
    after = systemd.tick(settings, t0 + STEP)
    assert systemd.jobs == [] and after.recycled is None, after.summary()
    assert "@2 is over WORKER_RECYCLE_MEMORY (130 MiB > 64 MiB) 2 s after its start: the setting is below the app's footprint" in after.summary()
    # Once it is as old, it is recycled in turn: at most one recycle per minimum age, never one a tick.
    later = systemd.tick(settings, t0 + 1 + MIN_AGE + STEP)
    assert later.recycled == "recycle @2 (130 MiB > 64 MiB)" and systemd.jobs == [("start", 1), ("stop", 2)], later.summary()


def test_a_recycle_gives_the_replacement_the_units_start_timeout(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    """An app that needs 35 s to be ready: its replacement is waited for as long as TimeoutStartSec=90 (+5 s), as a
    rolling restart's is (it was given 30 s, stopped and reset at every tick, and never recycled)."""
    settings = parse(env)
    t0 = time.time()
    systemd = one_instance(settings, t0, age=7200)
    systemd.app_start = 35.0
    outcome = systemd.tick(settings, t0)
    assert systemd.start_timeouts[-1] == 95.0
    assert outcome.ok and outcome.recycled == "recycle @1 (130 MiB > 64 MiB)" and systemd.jobs == [("start", 2), ("stop", 1)], outcome.summary()
    systemd.unit_timeouts = (0.0, 75.0)  # TimeoutStartSec=infinity: bounded as a rolling restart bounds it
    systemd.tick(settings, t0 + 2 * 7200)
    assert systemd.start_timeouts[-1] == rollout.START_TIMEOUT_CAP + 5.0


def test_a_recycle_whose_replacement_did_not_start_is_not_tried_again_at_every_tick(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    """Its replacement not ready within TimeoutStartSec: the old instance keeps serving, and no recycle is tried again
    before the minimum age has passed; each tick meanwhile says why (it started, waited, stopped and reset a
    replacement at every tick)."""
    settings = parse(env)
    t0 = time.time()
    systemd = one_instance(settings, t0, age=7200)
    systemd.app_start = 200.0  # past TimeoutStartSec=90
    first = systemd.tick(settings, t0)
    assert systemd.jobs == [("start", 2), ("stop", 2)] and list(systemd.units) == [1], first.summary()
    until = time.strftime("%H:%M:%S", time.localtime(t0 + MIN_AGE))
    assert first.failure == (
        "dramatiq-worker@2 did not start (no READY=1 within TimeoutStartSec=90s, failed; journalctl -u dramatiq-worker@2);"
        f" @1 keeps serving; no recycle before {until} (300 s)"
    ), first.summary()
    assert "resets failed instances" not in first.summary()  # nothing is failed: the replacement is reset already
    for k in range(1, 40):
        outcome = systemd.tick(settings, t0 + k * STEP)
        assert systemd.jobs == [] and outcome.ok, outcome.summary()
        assert f"@1 is over WORKER_RECYCLE_MEMORY (130 MiB > 64 MiB); not recycled before {until}: a recycle's replacement did not start {k * STEP:.0f} s ago (dramatiq-worker@2 did not start (" in outcome.summary(), outcome.summary()
    systemd.app_start = 1.0  # fixed meanwhile
    again = systemd.tick(settings, t0 + MIN_AGE)
    assert again.ok and again.recycled == "recycle @1 (130 MiB > 64 MiB)" and systemd.jobs == [("start", 2), ("stop", 1)], again.summary()
    # A recycle that replaced its instance ends the hold at once.
    assert not (Path(settings.state_dir) / "recycle-held.json").exists()


def at_max(settings, now: float) -> Systemd:
    """Two instances at MAX_PROCESSES=2, old, sized by hand."""
    systemd = Systemd(now - 7200)
    scaler.scale_to(settings, 2, fleet=systemd)  # type: ignore[arg-type]
    systemd.now = now
    systemd.jobs.clear()
    return systemd


LOST = "@2 was drained first to make room (MAX_PROCESSES reached) and its replacement did not start: @2 is not running"


def test_a_rolling_restart_at_max_whose_replacement_did_not_start_says_the_drained_instance_is_gone(
    redis: redis_lib.Redis, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At MAX_PROCESSES the roll drains @2 first and starts its replacement on that number; the replacement fails:
    @2 is gone, @1 (not yet replaced) serves. The line said the fleet was as before; it says what is so, and the
    next tick does what it says (restores the manual size: @2 runs again)."""
    settings = parse({**env, "MAX_PROCESSES": "2", "WORKER_RECYCLE_MEMORY": "0"})
    t0 = time.time()
    systemd = at_max(settings, t0)
    systemd.failing_starts = 1
    monkeypatch.setattr(rollout, "Fleet", lambda: systemd)
    monkeypatch.chdir(settings.state_dir)
    res = CliRunner().invoke(main, ["restart"], env={**env, "MAX_PROCESSES": "2", "WORKER_RECYCLE_MEMORY": "0"})
    assert res.exit_code == 1, res.output
    line = next(line for line in res.output.splitlines() if line.startswith("dramactl: rolling restart stopped: "))
    assert line == (
        "dramactl: rolling restart stopped: dramatiq-worker@2 did not start (exit status 2 (the app cannot be imported), failed;"
        f" journalctl -u dramatiq-worker@2); {LOST}; the instances not yet replaced keep serving;"
        " the next tick starts what the fleet needs again, and resets a start that fails, with backoff"
    ), line
    assert systemd.jobs == [("stop", 2), ("start", 2), ("stop", 2)] and list(systemd.units) == [1]
    outcome = systemd.tick(settings, t0 + STEP)
    assert systemd.jobs == [("start", 2)] and sorted(systemd.units) == [1, 2], outcome.summary()


def test_paused_with_no_manual_size_the_line_says_no_tick_starts_the_drained_instance_again(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    settings = parse({**env, "MAX_PROCESSES": "2", "WORKER_RECYCLE_MEMORY": "0"})
    t0 = time.time()
    systemd = at_max(settings, t0)
    scaler.set_paused(settings, False)
    scaler.set_paused(settings, True)  # `dramactl resume`, then `dramactl pause`: ticks hold what runs
    systemd.failing_starts = 1
    outcome = rollout.restart(settings, fleet=systemd)  # type: ignore[arg-type]
    assert outcome.failure is not None and outcome.failure.endswith(
        f"{LOST}; the instances not yet replaced keep serving;"
        " autoscaling is paused with no manual size, so no tick starts it again: `dramactl scale-up` or `dramactl resume` does"
    ), outcome.failure
    systemd.tick(settings, t0 + STEP)
    assert systemd.jobs == [] and list(systemd.units) == [1]


def test_a_rolling_restart_whose_replacement_started_first_keeps_the_old_line(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    settings = parse({**env, "WORKER_RECYCLE_MEMORY": "0"})
    systemd = at_max(settings, time.time())  # MAX_PROCESSES=4: room to start first
    systemd.failing_starts = 1
    outcome = rollout.restart(settings, fleet=systemd)  # type: ignore[arg-type]
    assert outcome.failure is not None and outcome.failure.endswith("); the instances not yet replaced keep serving"), outcome.failure
    assert systemd.jobs == [("start", 3), ("stop", 3)] and sorted(systemd.units) == [1, 2]


def test_a_recycle_at_max_whose_replacement_did_not_start_says_the_instance_is_gone(redis: redis_lib.Redis, env: dict[str, str]) -> None:
    settings = parse({**env, "MAX_PROCESSES": "1"})
    t0 = time.time()
    systemd = one_instance(settings, t0, age=7200)
    systemd.failing_starts = 1
    outcome = systemd.tick(settings, t0)
    assert systemd.jobs == [("stop", 1), ("start", 1), ("stop", 1)] and not systemd.units, outcome.summary()
    assert outcome.failure is not None and (
        "@1 was drained first to make room (MAX_PROCESSES reached) and its replacement did not start: @1 is not running;"
        " the next tick starts what the fleet needs again, and resets a start that fails, with backoff; no recycle before "
    ) in outcome.failure, outcome.failure
    systemd.tick(settings, t0 + STEP)
    assert systemd.jobs == [("start", 1)] and list(systemd.units) == [1]  # the manual size, restored
