"""The rolling restart's planning (pure) and its marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dramactl import recycle, rollout
from dramactl.instance import WorkerUnit
from dramactl.rollout import Step, drain_order, next_step


def up(n: int) -> WorkerUnit:
    return WorkerUnit(number=n, active_state="active", sub_state="running")


def test_replacement_starts_first_at_the_lowest_free_number() -> None:
    assert next_step({1, 2, 3}, 3, [3, 2, 1], max_processes=4) == Step(start=(4,), stop=(3,))
    assert next_step({1, 2, 4}, 3, [2, 1], max_processes=4) == Step(start=(3,), stop=(2,))


def test_batch_is_limited_by_the_room_under_max() -> None:
    assert next_step({1, 2, 3}, 3, [3, 2, 1], max_processes=5, batch=3) == Step(start=(4, 5), stop=(3, 2))
    assert next_step({1, 2}, 2, [2, 1], max_processes=10, batch=3) == Step(start=(3, 4), stop=(2, 1))


def test_at_max_one_instance_drains_first_and_its_number_is_reused() -> None:
    assert next_step({1, 2}, 2, [2, 1], max_processes=2, batch=2) == Step(start=(2,), stop=(2,), stop_first=True)


def test_a_failed_or_stopping_unit_keeps_its_number_but_not_a_place_under_max() -> None:
    # @3 failed: its number is taken, but it does not count against MAX.
    assert next_step({1, 2, 3}, 2, [2, 1], max_processes=3) == Step(start=(4,), stop=(2,))


def test_nothing_to_replace() -> None:
    assert next_step({1}, 1, [], max_processes=4) == Step((), ())


def test_idle_instances_drain_first_then_the_highest() -> None:
    units = [up(1), up(2), up(3)]
    assert drain_order(units) == [3, 2, 1]
    from dramactl.stats import InstanceReport

    now = 1_000.0
    reports = {3: InstanceReport(3, threads=4, busy=1, oldest=now - 5, at=now), 2: InstanceReport(2, threads=4, at=now), 1: InstanceReport(1, threads=4, busy=2, oldest=now - 100, at=now)}
    assert drain_order(units, reports, now) == [2, 3, 1]  # idle first, then the work started most recently


def test_marker_names_a_live_roll_and_ignores_a_dead_or_damaged_one(tmp_path) -> None:
    assert rollout.in_progress(str(tmp_path)) is None
    rollout.mark(str(tmp_path), [1, 2, 3])
    line = rollout.in_progress(str(tmp_path))
    assert line is not None and line.startswith("rolling restart of 3 instance(s) in progress since") and f"pid {os.getpid()}" in line
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / rollout.MARKER).write_text(json.dumps({"pid": int(dead), "since": 0, "instances": [1], "command": "restart"}))
    assert rollout.in_progress(str(tmp_path)) is None
    (tmp_path / rollout.MARKER).write_text("{not json")
    assert rollout.in_progress(str(tmp_path)) is None
    rollout.unmark(str(tmp_path))
    rollout.unmark(str(tmp_path))
    assert not (tmp_path / rollout.MARKER).exists()


def mem(n: int, mib: int, state: str = "active", sub: str = "running", job: str = "") -> WorkerUnit:
    return WorkerUnit(number=n, active_state=state, sub_state=sub, job=job, memory=mib << 20)


def over_memory(instances: list[WorkerUnit], limit: int) -> recycle.Recycle | None:
    """The instance a tick recycles, whatever its age."""
    return recycle.choose(instances, limit, 0.0, 0.0)[0]


def test_recycle_picks_the_instance_furthest_past_the_limit_one_a_tick() -> None:
    pick = over_memory([mem(1, 300), mem(2, 612), mem(3, 100)], 512 << 20)
    assert pick == recycle.Recycle(2, 612 << 20, 512 << 20)
    assert str(pick) == "recycle @2 (612 MiB > 512 MiB)"


def test_no_recycle_below_the_limit_while_failing_or_unread() -> None:
    assert over_memory([mem(1, 300), mem(2, 500)], 512 << 20) is None
    assert over_memory([mem(1, 700), WorkerUnit(2, "failed", "failed")], 512 << 20) is None
    assert over_memory([mem(1, 700), WorkerUnit(2, "activating", "auto-restart")], 512 << 20) is None
    assert over_memory([WorkerUnit(1, "active", "running")], 512 << 20) is None  # memory not read
    assert over_memory([mem(1, 700, "deactivating", "stop-sigterm", "stop")], 512 << 20) is None
    assert over_memory([mem(1, 700)], 0) is None


def test_the_fleets_room_bounds_a_step_below_max_processes() -> None:
    assert rollout.bound(4) == (4, "MAX_PROCESSES reached")
    assert rollout.bound(4, 6, "FLEET") == (4, "MAX_PROCESSES reached")  # the fleet allows more than this host may run
    assert rollout.bound(4, 3, "FLEET") == (3, "FLEET")
    assert rollout.bound(4, 2, "FLEET") == (2, "FLEET")


def test_at_the_fleets_cap_the_old_instance_drains_first_and_the_step_says_why() -> None:
    limit, why = rollout.bound(4, 2, "FLEET_MAX_PROCESSES reached")
    step = next_step({1, 2}, 2, [2, 1], limit, 1, why)
    assert step == Step(start=(2,), stop=(2,), stop_first=True) and step.why == "FLEET_MAX_PROCESSES reached"
    assert next_step({1, 2}, 2, [2, 1], 2).why == "MAX_PROCESSES reached"
    # Room for one of a batch of two: one replacement starts first, for the first old instance.
    limit, why = rollout.bound(4, 3, "FLEET_MAX_PROCESSES reached")
    assert next_step({1, 2}, 2, [2, 1], limit, 2, why) == Step(start=(3,), stop=(2,))


def test_a_rolls_heartbeat_is_renewed_three_times_per_ttl() -> None:
    from dramactl.seat import every

    assert every(60) == 20.0 and every(2) == 2 / 3 and every(0.3) == 0.2


# -- the recycle's minimum age, its hold after a failed start, and what a failed drain-first step leaves ----------

NOW = 1_000_000.0


def aged(n: int, mib: int, age: float | None) -> WorkerUnit:
    return WorkerUnit(number=n, active_state="active", sub_state="running", memory=mib << 20, since=None if age is None else NOW - age)


def test_the_minimum_age_is_five_minutes_or_three_ticks() -> None:
    from dramactl.settings import parse

    ages = [recycle.min_age(parse({"CHECK_INTERVAL": str(i)})) for i in (3, 15, 100, 180)]
    assert ages == [300.0, 300.0, 300.0, 540.0]
    assert recycle.min_age(parse({"CHECK_INTERVAL": "3", "WORKER_RECYCLE_MIN_AGE": "0"})) == 9.0
    assert recycle.min_age(parse({"CHECK_INTERVAL": "15", "WORKER_RECYCLE_MIN_AGE": "3600"})) == 3600.0


def test_an_instance_over_the_limit_within_the_minimum_age_is_not_recycled_and_named() -> None:
    limit = 64 << 20
    pick, young = recycle.choose([aged(1, 130, 9.25), aged(2, 90, 299)], limit, NOW, 300)
    assert pick is None and young == [recycle.Young(1, 130 << 20, 9.25), recycle.Young(2, 90 << 20, 299)]
    assert recycle.young_text(young[:1], limit, 300) == (
        "@1 is over WORKER_RECYCLE_MEMORY (130 MiB > 64 MiB) 9 s after its start: the setting is below the app's footprint;"
        " not recycled (no instance is before it is 300 s old); raise WORKER_RECYCLE_MEMORY above what a fresh instance holds"
    )
    assert recycle.young_text(young, limit, 300).startswith(  # type: ignore[union-attr]
        "@1 (130 MiB, 9 s after its start), @2 (90 MiB, 299 s after its start) are over WORKER_RECYCLE_MEMORY (64 MiB): "
    )
    assert recycle.young_text([], limit, 300) is None
    # An old one over the limit is recycled beside a young one worse than it; one of unknown age counts as old.
    pick, young = recycle.choose([aged(1, 200, 10), aged(2, 100, 301), aged(3, 80, None)], limit, NOW, 300)
    assert pick == recycle.Recycle(2, 100 << 20, limit) and [y.number for y in young] == [1]
    assert over_memory([aged(1, 200, 10)], limit) == recycle.Recycle(1, 200 << 20, limit)  # without a clock: any age
    assert recycle.choose([aged(1, 200, 10)], limit, NOW, 300)[0] is None


def test_a_failed_recycle_holds_the_next_for_the_minimum_age(tmp_path) -> None:
    state = str(tmp_path)
    assert recycle.held(state, NOW, 300) is None
    recycle.hold(state, NOW, "dramatiq-worker@2 did not start (…)")
    assert recycle.held(state, NOW + 10, 300) == (NOW, NOW + 300, "dramatiq-worker@2 did not start (…)")
    assert recycle.held(state, NOW + 300, 300) is None
    assert recycle.held(state, NOW - 3600, 300) is None  # the clock was set back: no hold on a time ahead of it
    (tmp_path / recycle.HELD).write_text("{not json")
    assert recycle.held(state, NOW, 300) is None
    recycle.release(state)
    recycle.release(state)
    assert not (tmp_path / recycle.HELD).exists()


class Jobs:
    """A fleet whose start jobs end as told; records each job and the time it was given."""

    def __init__(self, start_result: str = "done", timeouts: tuple[float, float] = (90.0, 75.0)) -> None:
        self.start_result, self.unit_timeouts = start_result, timeouts
        self.jobs: list[tuple[str, tuple[int, ...], float]] = []

    def start(self, numbers, timeout=90.0):
        self.jobs.append(("start", tuple(numbers), timeout))
        return [rollout.JobResult(f"dramatiq-worker@{n}.service", "start", self.start_result) for n in numbers]

    def stop(self, numbers, timeout=90.0):
        self.jobs.append(("stop", tuple(numbers), timeout))
        return [rollout.JobResult(f"dramatiq-worker@{n}.service", "stop", "done") for n in numbers]

    def timeouts(self, number):
        return self.unit_timeouts

    def why_not_started(self, number):
        return "exit status 2 (the app cannot be imported), failed"

    def kill(self, numbers, signal=9):
        pass

    def reset_failed(self, numbers):
        pass


def test_a_recycles_replacement_is_waited_for_as_long_as_the_units_start_timeout() -> None:
    fleet = Jobs()
    rollout.recycle(fleet, [up(1)], recycle.Recycle(1, 1, 1), 4, stop_wait=10.0)  # type: ignore[arg-type]
    assert fleet.jobs == [("start", (2,), 95.0), ("stop", (1,), 10.0)]
    fleet = Jobs(timeouts=(0.0, 0.0))  # infinity: bounded as a rolling restart bounds it
    rollout.recycle(fleet, [up(1)], recycle.Recycle(1, 1, 1), 1, stop_wait=10.0)  # type: ignore[arg-type]
    assert fleet.jobs[0] == ("stop", (1,), rollout.START_TIMEOUT_CAP + 5.0) and fleet.jobs[1] == ("start", (1,), rollout.START_TIMEOUT_CAP + 5.0)


def test_a_drain_first_step_whose_replacement_did_not_start_leaves_its_instance_gone_and_says_so() -> None:
    rolled = rollout.replace_step(Jobs("failed"), Step(start=(2,), stop=(2,), stop_first=True, why="MAX_PROCESSES reached"), start_timeout=95, stop_timeout=80)  # type: ignore[arg-type]
    assert rolled.lost == [(2, "MAX_PROCESSES reached")] and rolled.replaced == []
    assert rollout.after_failure(rolled, [1, 2], paused_without_size=False) == (
        "@2 was drained first to make room (MAX_PROCESSES reached) and its replacement did not start: @2 is not running;"
        " the instances not yet replaced keep serving;"
        " the next tick starts what the fleet needs again, and resets a start that fails, with backoff"
    )
    assert rollout.after_failure(rolled, [2], paused_without_size=True) == (
        "@2 was drained first to make room (MAX_PROCESSES reached) and its replacement did not start: @2 is not running;"
        " autoscaling is paused with no manual size, so no tick starts it again: `dramactl scale-up` or `dramactl resume` does"
    )
    # Started first: nothing was stopped for it, and the line stays what it was.
    rolled = rollout.replace_step(Jobs("failed"), Step(start=(3,), stop=(2,)), start_timeout=95, stop_timeout=80)  # type: ignore[arg-type]
    assert rolled.lost == [] and rollout.after_failure(rolled, [1, 2], paused_without_size=False) == "the instances not yet replaced keep serving"
