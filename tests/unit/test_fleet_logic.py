"""Pure pieces around the fleet: unit naming, health, which numbers to start and stop, tick summary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dramactl.fleet import JobResult
from dramactl.instance import WorkerUnit, instance_number, unit_name
from dramactl.policy import ScalingDecision
from dramactl.scaler import Outcome, Plan, plan
from dramactl.state import ScalerState, StateStore, TickRecord
from dramactl.stats import QueueStats


def up(n: int) -> WorkerUnit:
    return WorkerUnit(n, "active", "running")


def test_unit_names_round_trip() -> None:
    assert unit_name(3) == "dramatiq-worker@3.service"
    assert instance_number("dramatiq-worker@12.service") == 12
    for other in ("dramatiq-worker@x.service", "dramatiq-worker@0.service", "redis-server.service", "dramatiq-worker@1.timer"):
        assert instance_number(other) is None
    with pytest.raises(ValueError):
        unit_name(0)


@pytest.mark.parametrize(
    ("unit", "is_up", "failing"),
    [
        (WorkerUnit(1, "active", "running"), True, False),
        (WorkerUnit(1, "activating", "start"), True, False),
        (WorkerUnit(1, "activating", "start", restarts=2), True, True),
        (WorkerUnit(1, "activating", "auto-restart"), False, True),
        (WorkerUnit(1, "failed", "failed"), False, True),
        (WorkerUnit(1, "deactivating", "stop-sigterm", job="stop"), False, False),
        # The main process died (SIGKILL, OOM): systemd cleans up, then Restart= brings it back.
        (WorkerUnit(1, "deactivating", "stop-sigterm"), False, True),
    ],
)
def test_health(unit: WorkerUnit, is_up: bool, failing: bool) -> None:
    assert (unit.is_up, unit.is_failing) == (is_up, failing)


@pytest.mark.parametrize(
    ("unit", "occupies", "stopping"),
    [
        (WorkerUnit(1, "active", "running"), True, False),
        (WorkerUnit(1, "activating", "auto-restart"), True, False),
        (WorkerUnit(1, "deactivating", "stop-sigterm"), True, False),
        (WorkerUnit(1, "deactivating", "stop-sigterm", job="restart"), True, False),
        (WorkerUnit(1, "inactive", "dead", job="start"), True, False),
        (WorkerUnit(1, "deactivating", "stop-sigterm", job="stop"), False, True),
        (WorkerUnit(1, "failed", "failed"), False, False),
    ],
)
def test_what_counts_against_max(unit: WorkerUnit, occupies: bool, stopping: bool) -> None:
    """Up or coming back by itself counts against MAX_PROCESSES; a drain on a stop job does not."""
    assert (unit.occupies, unit.is_stopping) == (occupies, stopping)


def test_grow_takes_lowest_free_numbers() -> None:
    fleet = [up(1), up(3), WorkerUnit(4, "deactivating", "stop-sigterm", job="stop"), WorkerUnit(5, "activating", "auto-restart")]
    assert plan(fleet, 5) == Plan(start=(2, 6, 7))


def test_a_failed_number_is_reused_only_once_reset() -> None:
    fleet = [up(1), WorkerUnit(2, "failed", "failed")]
    assert plan(fleet, 2) == Plan(start=(3,))
    assert plan(fleet, 2, reset=(2,)) == Plan(start=(2,))


def test_shrink_stops_highest() -> None:
    assert plan([up(1), up(2), up(5), up(7)], 2) == Plan(stop=(7, 5))
    assert plan([up(1), up(2)], 2) == Plan()
    assert plan([up(1)], 0) == Plan(stop=(1,))


def test_summary_is_one_journal_line_with_inputs_and_decision() -> None:
    o = Outcome(
        ScalingDecision(1, 3, "backlog 40 needs 3"),
        [QueueStats("a", ready=30, in_flight=10, delayed=2, due=1, oldest_age=12.34, orphaned=3)],
        started=[JobResult("dramatiq-worker@2.service", "start", "done"), JobResult("dramatiq-worker@3.service", "start", "failed")],
    )
    line = o.summary()
    assert "\n" not in line
    assert line.startswith("queues ready=30 delayed=2 due=1 in_flight=10 orphaned=3 dead=0 oldest=12.3s | workers 1 -> 3 | backlog 40 needs 3")
    assert "started @2:done @3:failed" in line and "resets failed instances by itself" in line
    assert not o.ok


def test_a_stop_still_draining_is_not_a_failure() -> None:
    o = Outcome(ScalingDecision(3, 2, "down"), stopped=[JobResult("dramatiq-worker@3.service", "stop", "pending")])
    assert o.ok
    assert "stopped @3:draining" in o.summary()


def test_state_round_trip_and_history_window(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    assert store.load() == ScalerState()
    state = ScalerState(paused=True, threads=4)
    for t in (0.0, 1000.0, 4000.0):
        state = state.with_tick(TickRecord(at=t, backlog=1, workers=1, target=1))
    assert [r.at for r in state.history] == [1000.0, 4000.0]
    store.save(state)
    assert store.load() == state
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o644"


def test_corrupt_state_starts_over(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("{not json")
    assert store.load() == ScalerState()


def test_lock_is_exclusive(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.lock():
        with pytest.raises(BlockingIOError):
            with StateStore(tmp_path).lock(wait=False):
                pass
    with store.lock(wait=False):
        pass
