"""The rolling restart's planning (pure) and its marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dramactl import rollout
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


def test_recycle_picks_the_instance_furthest_past_the_limit_one_a_tick() -> None:
    pick = rollout.over_memory([mem(1, 300), mem(2, 612), mem(3, 100)], 512 << 20)
    assert pick == rollout.Recycle(2, 612 << 20, 512 << 20)
    assert str(pick) == "recycle @2 (612 MiB > 512 MiB)"


def test_no_recycle_below_the_limit_while_failing_or_unread() -> None:
    assert rollout.over_memory([mem(1, 300), mem(2, 500)], 512 << 20) is None
    assert rollout.over_memory([mem(1, 700), WorkerUnit(2, "failed", "failed")], 512 << 20) is None
    assert rollout.over_memory([mem(1, 700), WorkerUnit(2, "activating", "auto-restart")], 512 << 20) is None
    assert rollout.over_memory([WorkerUnit(1, "active", "running")], 512 << 20) is None  # memory not read
    assert rollout.over_memory([mem(1, 700, "deactivating", "stop-sigterm", "stop")], 512 << 20) is None
    assert rollout.over_memory([mem(1, 700)], 0) is None


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
