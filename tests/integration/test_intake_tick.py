"""The tick's intake pauses against a real Redis (this host's instances a stand-in, no systemd):
a paused instance the tick stops keeps its mark until its stop has begun, then the mark goes.
Unpaused before the SIGTERM reaches Dramatiq's worker, its free threads would start messages
that the stop then cuts (a reviewer reproduced it: 8 of 44 trials). The same in a booted
systemd: tests/system/test_victims.py."""

from __future__ import annotations

import json
import os
import time
from typing import Iterable

import redis as redis_lib

from dramactl import intake, reports, scaler
from dramactl.fleet import JobResult
from dramactl.settings import parse
from tests.integration.test_replace_in_fleet import StandIn


class Recording(StandIn):
    """Records, at each stop job, this host's pause marks and how long the job is waited for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marks_at_stop: list[dict] = []
        self.stop_timeouts: list[float] = []

    def stop(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
        numbers = tuple(numbers)
        if numbers:
            self.marks_at_stop.append(self.client.hgetall(intake.pause_key(self.settings.namespace)))
            self.stop_timeouts.append(timeout)
        return super().stop(numbers, timeout)


def report(redis: redis_lib.Redis, namespace: str, number: int, busy: int, paused: bool) -> None:
    now = time.time()
    value = {"threads": 1, "busy": busy, "oldest": int((now - 100) * 1000) if busy else None, "held": 0, "at": int(now * 1000), "paused": paused}
    redis.hset(reports.instances_key(namespace), f"{number}.{os.getpid()}", json.dumps(value))


def test_a_paused_instance_the_tick_stops_keeps_its_mark_until_its_stop_began(redis: redis_lib.Redis, settings_env: dict[str, str]) -> None:
    settings = parse({**settings_env, "DRAMATIQ_QUEUE_NAME": "q1", "POLICY": "step", "MIN_PROCESSES": "1", "MAX_PROCESSES": "4",
                      "CHECK_INTERVAL": "15", "SCALE_DOWN_STABILIZATION": "0"})
    here = Recording(redis, settings)
    scaler.scale_to(settings, 2, fleet=here)  # type: ignore[arg-type]
    scaler.set_paused(settings, False)
    # @2 was waited for and paused by an earlier tick; its long task is done: idle, still paused.
    assert intake.write(redis, settings.namespace, [2], time.time(), settings.check_interval) is None
    report(redis, settings.namespace, 1, busy=1, paused=False)
    report(redis, settings.namespace, 2, busy=0, paused=True)
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.decision.target == 1 and [p.number for p in outcome.plan.picks] == [2], outcome.decision.reason
    assert here.marks_at_stop == [{b"2": here.marks_at_stop[0][b"2"]}], "paused through its stop job"
    assert not redis.exists(intake.pause_key(settings.namespace)), "and no mark left after it: the number may be started again"


def test_a_manual_scale_ends_the_pauses_after_its_stops(redis: redis_lib.Redis, settings_env: dict[str, str]) -> None:
    """`scale-to` / `scale-down` act at once and end any wait: the instances they stop stay
    marked through their stop, and no mark is left after it (a number started again by the
    next `scale-up` would otherwise boot paused until the next tick)."""
    settings = parse({**settings_env, "DRAMATIQ_QUEUE_NAME": "q1", "MIN_PROCESSES": "1", "MAX_PROCESSES": "4", "CHECK_INTERVAL": "15"})
    here = Recording(redis, settings)
    scaler.scale_to(settings, 3, fleet=here)  # type: ignore[arg-type]
    assert intake.write(redis, settings.namespace, [3], time.time(), settings.check_interval) is None
    report(redis, settings.namespace, 1, busy=1, paused=False)
    report(redis, settings.namespace, 2, busy=1, paused=False)
    report(redis, settings.namespace, 3, busy=1, paused=True)
    outcome = scaler.scale_to(settings, 1, fleet=here)  # type: ignore[arg-type]
    stopped = [p.number for p in outcome.plan.picks]
    assert stopped == [3, 2], "no wait, and all three began alike: ties go to the highest number"
    assert [sorted(int(k) for k in m) for m in here.marks_at_stop] == [sorted(stopped)], "marked through their stop"
    assert not redis.exists(intake.pause_key(settings.namespace)), "no mark left: @3 started again would not boot paused"


def test_a_tick_waits_for_its_stop_jobs_only_until_shortly_before_the_next_tick(redis: redis_lib.Redis, settings_env: dict[str, str]) -> None:
    """The timer does not start a tick while one runs: a tick that waited GRACEFUL_SHUTDOWN_TIMEOUT + 5 s
    for a drain would put off the next one. The tick's stop jobs are waited for until a second before the
    next tick is due; a manual scale-down (no next tick to keep) waits as before (GRACEFUL_SHUTDOWN_TIMEOUT + 5 s,
    at most 30 s)."""
    settings = parse({**settings_env, "DRAMATIQ_QUEUE_NAME": "q1", "POLICY": "step", "MIN_PROCESSES": "1", "MAX_PROCESSES": "4",
                      "CHECK_INTERVAL": "15", "SCALE_DOWN_STABILIZATION": "0", "GRACEFUL_SHUTDOWN_TIMEOUT": "60"})
    here = Recording(redis, settings)
    scaler.scale_to(settings, 3, fleet=here)  # type: ignore[arg-type]
    scaler.set_paused(settings, False)
    scaler.scale_to(settings, 2, fleet=here)  # type: ignore[arg-type]
    scaler.set_paused(settings, False)
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.decision.target == 1, outcome.decision.reason
    manual, ticked = here.stop_timeouts
    assert manual == 30.0, "scale-to waits as before (at most 30 s)"
    assert 10.0 <= ticked <= 14.0, f"the tick waited {ticked}s for its stop: past the next tick (15 s)"


def two_reporting(redis: redis_lib.Redis, settings_env: dict[str, str], busy: int, fleet: type[Recording] = Recording) -> tuple:
    """Two instances up, autoscaling on (step policy, no scale-down window, MIN 1), each reporting ``busy``
    threads of one busy since 100 s ago: with nothing queued, the next tick scales down by one."""
    settings = parse({**settings_env, "DRAMATIQ_QUEUE_NAME": "q1", "POLICY": "step", "MIN_PROCESSES": "1", "MAX_PROCESSES": "4",
                      "CHECK_INTERVAL": "15", "SCALE_DOWN_STABILIZATION": "0"})
    here = fleet(redis, settings)
    scaler.scale_to(settings, 2, fleet=here)  # type: ignore[arg-type]
    scaler.set_paused(settings, False)
    report(redis, settings.namespace, 1, busy=busy, paused=False)
    report(redis, settings.namespace, 2, busy=busy, paused=False)
    return settings, here


def test_a_manual_scale_ends_the_ticks_wait_so_the_next_wait_counts_its_limit_afresh(redis: redis_lib.Redis, settings_env: dict[str, str]) -> None:
    """A tick's scale-down waits for two long tasks; `scale-to` then acts at once and ends that wait: the
    state's last tick no longer says since when it waited (status, metrics), and a later wait starts anew
    rather than reaching victims.WAIT_LIMIT early."""
    from dramactl.state import StateStore

    settings, here = two_reporting(redis, settings_env, busy=1)
    outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
    assert outcome.plan.waiting and not outcome.stopped and outcome.waiting_since is not None, outcome.summary()
    assert StateStore(settings.state_dir).load().history[-1].waiting_since == outcome.waiting_since
    scaler.scale_to(settings, 2, fleet=here)  # type: ignore[arg-type]
    assert StateStore(settings.state_dir).load().history[-1].waiting_since is None
    # A rolling restart ends it too.
    from dramactl import rollout

    scaler.set_paused(settings, False)
    report(redis, settings.namespace, 1, busy=1, paused=False)
    report(redis, settings.namespace, 2, busy=1, paused=False)
    assert scaler.tick(settings, fleet=here).waiting_since is not None  # type: ignore[arg-type]
    rollout.restart(settings, fleet=here)  # type: ignore[arg-type]
    assert StateStore(settings.state_dir).load().history[-1].waiting_since is None


def test_a_stop_whose_job_failed_is_not_counted_and_one_that_went_through_is_counted_once(redis: redis_lib.Redis, settings_env: dict[str, str]) -> None:
    """dramactl_scale_down_stops_total and dramactl_scaling_actions_total count the jobs that went through: a
    stop systemd refused (the unit keeps running, the next tick picks it again) counts nothing, in a tick
    and in `scale-to` alike; the stop that then goes through counts once."""
    from dramactl.instance import unit_name
    from dramactl.state import StateStore

    class Refusing(Recording):
        refuse = True

        def stop(self, numbers: Iterable[int], timeout: float = 90.0) -> list[JobResult]:
            if self.refuse:
                return [JobResult(unit_name(n), "stop", "failed") for n in numbers]
            return super().stop(numbers, timeout)

    settings, here = two_reporting(redis, settings_env, busy=0, fleet=Refusing)
    counts = lambda: (StateStore(settings.state_dir).load().stops_by_kind()["idle"], StateStore(settings.state_dir).load().actions)  # noqa: E731
    for _ in range(2):
        outcome = scaler.tick(settings, fleet=here)  # type: ignore[arg-type]
        assert [j.result for j in outcome.stopped] == ["failed"] and sorted(here.units) == [1, 2]
        assert counts() == (0, (2, 0)) and outcome.stopped_by["idle"] == 0
    assert [j.result for j in scaler.scale_to(settings, 1, fleet=here).stopped] == ["failed"]  # type: ignore[arg-type]
    assert counts() == (0, (2, 0))
    here.refuse = False
    outcome = scaler.scale_to(settings, 1, fleet=here)  # type: ignore[arg-type]
    assert sorted(here.units) == [1] and counts() == (1, (2, 1)) and outcome.stopped_by["idle"] == 1
