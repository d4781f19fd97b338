"""The scaling policies as pure functions: baseline kept exactly, default policy's rules."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from dramactl import policy
from dramactl.instance import WorkerUnit
from dramactl import bycount
from dramactl.bycount import fleet_for_load, fleet_holding, holds
from dramactl.policy import ScalingDecision, decide, is_starting
from dramactl.settings import Settings, SettingsError, parse
from dramactl.state import Recovery, ScalerState, TickRecord
from dramactl.stats import FleetBacklog

NOW = 1_700_000_000.0


def settings(**values: object) -> Settings:
    base = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"}
    return parse({**base, **{k: str(v) for k, v in values.items()}})


def running(n: int, since: float = NOW - 3600) -> list[WorkerUnit]:
    return [WorkerUnit(k + 1, "active", "running", pid=100 + k, since=since) for k in range(n)]


def waiting(ready: int = 0, in_flight: int = 0, due: int = 0, oldest_age: float | None = None) -> FleetBacklog:
    return FleetBacklog(ready=ready, due=due, in_flight=in_flight, oldest_age=oldest_age)


def calm_history(workers: int, backlog: int, seconds: float = 600, every: float = 15) -> list[TickRecord]:
    """Ticks that neither grew nor wanted to: ``workers`` kept, ``backlog`` seen."""
    count = int(seconds // every)
    return [TickRecord(at=NOW - every * k, backlog=backlog, workers=workers, target=workers, wanted=workers) for k in range(count, 0, -1)]


# --- the baseline: POLICY=step stays exactly the classic threshold step -------------


def reference_step(current: int, depth: int, low: int, high: int, up: float = 5.0, down: float = 2.5) -> int:
    if current < low:
        return low
    if current > high:
        return high
    if depth > current * up and current < high:
        return current + 1
    if depth < current * down and current > low:
        return current - 1
    return current


@pytest.mark.parametrize(
    "current, ready, due, in_flight, expected",
    [
        (1, 6, 0, 0, 2),  # depth 6 > 1 x 5
        (1, 5, 0, 0, 1),  # depth 5 is not > 5
        (2, 11, 0, 0, 3),
        (4, 10, 0, 0, 4),  # 10 = 4 x 2.5: not below
        (4, 9, 0, 0, 3),  # 9 < 10
        (4, 0, 0, 500, 3),  # in flight is not depth for the baseline
        (4, 15, 6, 0, 5),  # due counts as depth: 21 > 20
        (10, 1000, 0, 0, 10),  # at MAX
        (1, 0, 0, 0, 1),  # at MIN
        (0, 0, 0, 0, 1),  # below MIN: straight to MIN
        (12, 1000, 0, 0, 10),  # above MAX: straight to MAX
        (3, 10000, 0, 0, 4),  # one step only, however deep
    ],
)
def test_step_policy_table(current: int, ready: int, due: int, in_flight: int, expected: int) -> None:
    s = settings(POLICY="step", CHECK_INTERVAL=180)
    d = decide(waiting(ready, in_flight, due), running(current), s, calm_history(current, 0), NOW)
    assert (d.current, d.target) == (current, expected)


def test_step_policy_matches_the_formula_everywhere() -> None:
    s = settings(POLICY="step", MIN_PROCESSES=2, MAX_PROCESSES=9, SCALE_UP_THRESHOLD_MULTIPLIER=4, SCALE_DOWN_THRESHOLD_MULTIPLIER=1.5)
    for current in range(0, 12):
        for depth in range(0, 60):
            d = decide(waiting(ready=depth), running(current), s)
            assert d.target == reference_step(current, depth, 2, 9, 4.0, 1.5), (current, depth)


def test_step_policy_ignores_history_age_and_starting_units() -> None:
    s = settings(POLICY="step")
    starting = [WorkerUnit(1, "activating", "start", since=NOW - 1), *running(3)[1:]]
    old = waiting(ready=30, oldest_age=10_000)
    busy_history = [TickRecord(NOW - 15, 999, 3, 10, wanted=10)]
    assert decide(old, starting, s, busy_history, NOW).target == 4  # 30 > 15: +1, no more
    assert decide(waiting(ready=2), running(3), s, busy_history, NOW).target == 2  # 2 < 7.5: -1, no window


# --- default policy: sizing -----------------------------------------------------------


def brute_fleet_holding(backlog: float, per_worker: float) -> int:
    n = 0
    while n * per_worker + 2 * math.sqrt(n * per_worker) < backlog:
        n += 1
    return n


def test_fleet_holding_is_the_smallest_fleet_that_holds() -> None:
    for per_worker in (1.0, 3.0, 8.0, 50.0):
        for backlog in range(0, 2000, 7):
            n = fleet_holding(backlog, per_worker)
            assert n == brute_fleet_holding(backlog, per_worker)
            assert holds(n, per_worker) >= backlog
            assert n <= math.ceil(backlog / per_worker)


def test_burst_grows_to_max_in_one_step() -> None:
    d = decide(waiting(ready=600, in_flight=8, oldest_age=5), running(1), settings(), calm_history(1, 2), NOW)
    assert (d.current, d.target, d.held) == (1, 10, False)
    assert d.wanted == fleet_holding(608, 8) > 10
    assert "MAX_PROCESSES=10" in d.reason


def test_growth_is_sized_to_the_backlog_not_one_worker() -> None:
    s = settings(MAX_PROCESSES=100)
    d = decide(waiting(ready=292, in_flight=8), running(1), s, calm_history(1, 2), NOW)
    assert d.target == brute_fleet_holding(300, 8) == 34
    assert d.target <= math.ceil(300 / 8)


def test_max_scale_up_step_bounds_growth() -> None:
    d = decide(waiting(ready=600), running(2), settings(MAX_SCALE_UP_STEP=3), calm_history(2, 2), NOW)
    assert d.target == 5
    assert "MAX_SCALE_UP_STEP=3" in d.reason


def test_in_flight_and_due_count_toward_the_backlog() -> None:
    s = settings()
    assert decide(waiting(in_flight=100), running(1), s, calm_history(1, 2), NOW).target > 1
    assert decide(waiting(due=100), running(1), s, calm_history(1, 2), NOW).target > 1


def test_per_worker_target_defaults_to_threads_and_can_be_set() -> None:
    assert bycount.backlog_per_worker(settings(WORKER_THREADS=4)) == 4
    assert bycount.backlog_per_worker(settings(WORKER_THREADS=4, TARGET_BACKLOG_PER_WORKER=20)) == 20
    busy = waiting(ready=60, in_flight=4)
    assert decide(busy, running(1), settings(WORKER_THREADS=4), calm_history(1, 2), NOW).target == 10
    assert decide(busy, running(1), settings(WORKER_THREADS=4, TARGET_BACKLOG_PER_WORKER=20), calm_history(1, 2), NOW).target == 3


def test_noise_within_what_the_fleet_holds_does_not_grow() -> None:
    s = settings()
    assert holds(5, 8) == pytest.approx(40 + 2 * math.sqrt(40))
    d = decide(waiting(ready=2, in_flight=50), running(5), s, calm_history(5, 40), NOW)
    assert d.target == 5


def test_small_excess_grows_only_when_a_second_tick_confirms_it() -> None:
    s = settings()
    first = decide(waiting(ready=4, in_flight=52), running(5), s, calm_history(5, 40), NOW)
    assert first.target == 5 and first.wanted > 5
    assert "persists" in first.reason
    history = [*calm_history(5, 40), first.record(NOW, waiting(ready=4, in_flight=52))]
    second = decide(waiting(ready=6, in_flight=54), running(5), s, history, NOW + 15)
    assert second.target == fleet_holding(56, 8) == 6


def test_clamps_to_min_and_max() -> None:
    s = settings(MIN_PROCESSES=2, MAX_PROCESSES=4)
    assert decide(waiting(), running(0), s, (), NOW).target == 2
    assert decide(waiting(), running(1), s, (), NOW).target == 2
    assert decide(waiting(ready=10_000), running(2), s, calm_history(2, 0), NOW).target == 4
    d = decide(waiting(ready=10_000), running(6), s, calm_history(6, 0), NOW)
    assert d.target == 4  # above MAX: straight down, no window


def test_min_zero_scales_from_and_to_nothing() -> None:
    s = settings(MIN_PROCESSES=0, SCALE_DOWN_STABILIZATION=60)
    assert decide(waiting(), running(0), s, (), NOW).target == 0
    assert decide(waiting(ready=1), running(0), s, (), NOW).target == 1
    assert decide(waiting(), running(2), s, calm_history(2, 0), NOW).target == 0


# --- default policy: latency guard -------------------------------------------------


def test_latency_guard_grows_when_depth_rule_would_not() -> None:
    s = settings(TARGET_BACKLOG_PER_WORKER=100)  # the depth rule sees plenty of room
    calm = waiting(ready=30, in_flight=32, oldest_age=30)
    assert decide(calm, running(4), s, calm_history(4, 60), NOW).target <= 4
    late = waiting(ready=30, in_flight=32, oldest_age=90)  # 1.5 x MAX_QUEUE_WAIT: +50 %
    d = decide(late, running(4), s, calm_history(4, 60), NOW)
    assert d.target == 6
    assert "MAX_QUEUE_WAIT=60s" in d.reason
    very_late = waiting(ready=30, in_flight=32, oldest_age=900)  # at most double
    assert decide(very_late, running(4), s, calm_history(4, 60), NOW).target == 8


def test_latency_guard_waits_for_starting_instances() -> None:
    s = settings(TARGET_BACKLOG_PER_WORKER=100)
    late = waiting(ready=30, in_flight=32, oldest_age=90)
    fleet = [*running(3), WorkerUnit(4, "activating", "start", since=NOW - 2)]
    d = decide(late, fleet, s, calm_history(4, 60), NOW)
    assert (d.target, d.starting) == (4, 1)
    assert "starting" in d.reason


def test_latency_guard_blocks_shrinking() -> None:
    s = settings(TARGET_BACKLOG_PER_WORKER=100)
    fleet = [*running(5), WorkerUnit(6, "activating", "start", since=NOW - 2)]
    d = decide(waiting(ready=3, oldest_age=120), fleet, s, calm_history(6, 3), NOW)
    assert d.target == 6


def test_starting_means_activating_before_ready() -> None:
    """Type=notify: active means READY=1 was sent, i.e. consuming, however young."""
    assert is_starting(WorkerUnit(1, "activating", "start", since=NOW - 100))
    assert is_starting(WorkerUnit(1, "activating", "start"))
    assert not is_starting(WorkerUnit(1, "active", "running", since=NOW - 0.5))
    assert not is_starting(WorkerUnit(1, "active", "running"))  # what a tick's listing gives: no timestamp
    assert not is_starting(WorkerUnit(1, "deactivating", "stop-sigterm", since=NOW - 1))
    assert not is_starting(WorkerUnit(1, "activating", "auto-restart", since=NOW - 1))


def test_a_young_active_instance_is_capacity_not_starting() -> None:
    """The latency guard grows past an instance that sent READY=1 a second ago, as it does in a
    real tick, where the listing carries no ActiveEnterTimestamp: one rule for both."""
    s = settings(TARGET_BACKLOG_PER_WORKER=100)
    late = waiting(ready=30, in_flight=32, oldest_age=90)
    young = [*running(3), WorkerUnit(4, "active", "running", since=NOW - 1)]
    listed = [*running(3), WorkerUnit(4, "active", "running")]
    for fleet in (young, listed):
        d = decide(late, fleet, s, calm_history(4, 60), NOW)
        assert (d.target, d.starting) == (6, 0), d.reason


# --- default policy: stabilization -----------------------------------------------------


def test_no_scale_down_within_the_window_then_down_after_it() -> None:
    s = settings(SCALE_DOWN_STABILIZATION=120)
    grew = TickRecord(at=NOW, backlog=600, workers=1, target=8, wanted=8)
    history = [*calm_history(1, 2, seconds=300), grew]
    workers, t = 8, NOW
    while True:
        t += 15
        d = decide(waiting(in_flight=10), running(workers), s, history, t)
        if t - NOW <= 120:
            assert d.target == workers, f"shrank {t - NOW:g}s after growing"
        else:
            break
        history.append(d.record(t, waiting(in_flight=10)))
    assert d.target == fleet_for_load((10 * 8 + 10) / 9, 8) == 2  # mean over the window, one step


def test_scale_down_waits_for_history_covering_the_window() -> None:
    s = settings(SCALE_DOWN_STABILIZATION=120)
    assert decide(waiting(), running(6), s, (), NOW).target == 6
    short = calm_history(6, 0, seconds=90)
    assert decide(waiting(), running(6), s, short, NOW).target == 6
    stale = [TickRecord(NOW - 3000, 0, 6, 6, wanted=6)]  # a gap (reboot, pause): unknown
    assert decide(waiting(), running(6), s, stale, NOW).target == 6
    assert decide(waiting(), running(6), s, calm_history(6, 0, seconds=150), NOW).target == 1


def test_a_tick_that_asked_to_grow_holds_its_size_for_the_window() -> None:
    s = settings(SCALE_DOWN_STABILIZATION=120)
    history = calm_history(6, 0, seconds=300)
    history[-3] = TickRecord(history[-3].at, 0, 4, 6, wanted=6)  # 45 s ago it grew 4 -> 6
    assert decide(waiting(), running(6), s, history, NOW).target == 6


def test_max_scale_down_step_limits_each_shrink() -> None:
    s = settings(MAX_SCALE_DOWN_STEP=2)
    assert decide(waiting(), running(8), s, calm_history(8, 0), NOW).target == 6
    assert decide(waiting(), running(8), settings(), calm_history(8, 0), NOW).target == 1


def test_mean_load_keeps_slack() -> None:
    s = settings()
    d = decide(waiting(in_flight=60), running(10), s, calm_history(10, 60), NOW)
    assert d.target == fleet_for_load(60, 8) == 9  # 60 fits 8 x 8, but not with sqrt(60) of slack


def test_no_flapping_on_an_oscillating_backlog() -> None:
    s = settings()
    history: list[TickRecord] = calm_history(4, 20)
    workers, changes = 4, 0
    for k in range(240):  # an hour of 15 s ticks, backlog swinging 8 <-> 42 every tick
        t = NOW + 15 * (k + 1)
        seen = waiting(in_flight=42 if k % 2 else 8)
        d = decide(seen, running(workers), s, history, t)
        history = list(ScalerState(history=tuple(history)).with_tick(d.record(t, seen)).history)
        changes += d.target != workers
        workers = d.target
    assert changes <= 1, f"{changes} scaling actions in an hour"


# --- failing units -------------------------------------------------------------------


def test_failing_instances_hold_growth_and_say_so() -> None:
    fleet = [*running(2), WorkerUnit(3, "activating", "auto-restart", restarts=4)]
    d = decide(waiting(ready=600), fleet, settings(), calm_history(2, 2), NOW)
    assert (d.current, d.target, d.held) == (2, 2, True)
    assert d.reason.startswith("hold: 1 failing instance(s) (@3)")
    assert d.wanted is not None and d.wanted > 2
    assert d.record(NOW, waiting(ready=600)).wanted == d.wanted  # the window remembers the need


def test_failing_instances_do_not_block_shrinking() -> None:
    fleet = [*running(4), WorkerUnit(5, "failed", "failed")]
    d = decide(waiting(), fleet, settings(), calm_history(4, 0), NOW)
    assert (d.target, d.held) == (1, False)


def test_instances_coming_back_count_toward_max() -> None:
    """A SIGKILLed unit still cleaning up (deactivating, no stop job) will be restarted by
    systemd: starting another number for it would end above MAX_PROCESSES."""
    fleet = [*running(7), WorkerUnit(8, "deactivating", "stop-sigterm")]
    d = decide(waiting(ready=600), fleet, settings(MAX_PROCESSES=8), calm_history(7, 0), NOW)
    assert d.current == 7 and d.target <= 7
    fleet = [*running(8), WorkerUnit(9, "activating", "auto-restart")]
    d = decide(waiting(ready=600), fleet, settings(MAX_PROCESSES=8), calm_history(8, 600), NOW)
    assert d.target == 7 and "count toward MAX_PROCESSES=8" in d.reason


def test_a_unit_restarting_by_itself_is_not_replaced() -> None:
    d = decide(waiting(), [WorkerUnit(1, "activating", "auto-restart", restarts=1)], settings(MIN_PROCESSES=1), (), NOW)
    assert (d.current, d.target, d.reset) == (0, 0, ())


def test_failed_units_are_reset_at_once_then_with_growing_backoff() -> None:
    fleet = [WorkerUnit(1, "failed", "failed")]
    s = settings(MIN_PROCESSES=1)
    d = decide(waiting(ready=600), fleet, s, (), NOW)
    assert (d.reset, d.target) == ((1,), 1)  # back to MIN, not to what the backlog wants
    assert d.held and d.recovery == Recovery(attempts=1, next_at=0.0, failing_at=NOW)
    # It failed again: the next reset waits 10 s from then, saying so; nothing starts meanwhile.
    d2 = decide(waiting(ready=600), fleet, s, (), NOW + 4, recovery=d.recovery)
    assert (d2.reset, d2.target) == ((), 0) and "waiting 10s before resetting @1" in d2.reason
    d2 = decide(waiting(ready=600), fleet, s, (), NOW + 10, recovery=d2.recovery)
    assert d2.reset == () and "waiting 4s" in d2.reason
    d3 = decide(waiting(), fleet, s, (), NOW + 14, recovery=d2.recovery)
    assert d3.reset == (1,) and d3.recovery.attempts == 2
    waits = []
    rec, at = d3.recovery, NOW + 20
    for _ in range(7):
        seen = decide(waiting(), fleet, s, (), at, recovery=rec)  # failed again: the wait starts
        assert seen.reset == () and seen.recovery.next_at > at
        waits.append(seen.recovery.next_at - at)
        again = decide(waiting(), fleet, s, (), seen.recovery.next_at, recovery=seen.recovery)
        assert again.reset == (1,) and again.target == 1
        rec, at = again.recovery, seen.recovery.next_at + 30
    assert waits == [20, 40, 80, 160, 300, 300, 300]


def test_failure_streak_ends_after_a_quiet_spell() -> None:
    rec = Recovery(attempts=4, next_at=NOW - 100, failing_at=NOW - 60)
    assert decide(waiting(), running(1), settings(), (), NOW, recovery=rec).recovery == rec
    assert decide(waiting(), running(1), settings(), (), NOW + 61, recovery=rec).recovery == Recovery()


def test_recovery_restores_min_but_not_more() -> None:
    fleet = [WorkerUnit(1, "failed", "failed"), WorkerUnit(2, "failed", "failed"), *running(1)[:0]]
    d = decide(waiting(ready=600), fleet, settings(MIN_PROCESSES=2), (), NOW)
    assert d.reset == (1, 2) and d.target == 2


def test_paused_with_a_manual_size_restores_it() -> None:
    """After a reboot (nothing runs) a manual `start 2 4` comes back as 2, whatever the queue."""
    d = decide(waiting(ready=600), [], settings(), (), NOW, paused=True, size=2)
    assert (d.current, d.target) == (0, 2) and "manual size 2" in d.reason
    d = decide(waiting(), running(3), settings(), calm_history(3, 0), NOW, paused=True, size=2)
    assert d.target == 2
    d = decide(waiting(ready=600), running(3), settings(), (), NOW, paused=True)
    assert d.target == 3 and d.reason.startswith("paused")


def test_autoscaling_comes_back_at_min_after_a_reboot() -> None:
    d = decide(waiting(), [], settings(MIN_PROCESSES=2), (), NOW)
    assert d.target == 2


# --- what the scaler persists ----------------------------------------------------------


def test_record_carries_what_the_next_tick_needs() -> None:
    seen = waiting(ready=7, due=2, in_flight=5, oldest_age=3.5)
    d = ScalingDecision(current=3, target=4, reason="x", wanted=5)
    assert d.record(NOW, seen) == TickRecord(at=NOW, backlog=14, workers=3, target=4, oldest_age=3.5, wanted=5)
    assert ScalingDecision(3, 3, "paused").record(NOW, seen).wanted == 3


def test_history_survives_the_state_file_including_old_records() -> None:
    state = ScalerState().with_tick(TickRecord(NOW, 10, 2, 3, wanted=3))
    again = ScalerState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.history[0].wanted == 3
    old = ScalerState.from_dict({"history": [{"at": NOW - 30, "backlog": 0, "workers": 6, "target": 6}]})
    assert old.history[0].wanted is None
    assert decide(waiting(), running(6), settings(), old.history, NOW).target == 6  # too short to shrink, no crash


def test_reasons_are_single_lines() -> None:
    s = settings()
    cases = [
        (waiting(ready=600), running(1), calm_history(1, 0)),
        (waiting(), running(6), calm_history(6, 0)),
        (waiting(), running(6), ()),
        (waiting(in_flight=20, oldest_age=100), running(3), calm_history(3, 20)),
        (waiting(in_flight=30), running(4), calm_history(4, 30)),
    ]
    for seen, fleet, history in cases:
        reason = decide(seen, fleet, s, history, NOW).reason
        assert reason and "\n" not in reason


@pytest.mark.parametrize("module", ["policy.py", "rates.py", "queueing.py", "recurring.py", "calm.py", "reaction.py", "bycount.py", "limits.py"])
def test_policy_module_stays_pure(module: str) -> None:
    """The policy and the modules it computes with import no I/O."""
    tree = ast.parse((Path(policy.__file__).parent / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    allowed = {"__future__", "bisect", "math", "statistics", "dataclasses", "typing", ".instance", ".settings", ".state", ".stats", ".queueing", ".rates", ".recurring", ".calm", ".reaction", ".bycount", ".limits"}
    assert imported <= allowed


# --- settings for the policy knobs ------------------------------------------------------


def test_policy_knob_defaults() -> None:
    s = parse({})
    assert (s.policy, s.target_backlog_per_worker, s.max_queue_wait) == ("default", 0.0, 60.0)
    assert (s.max_scale_up_step, s.scale_down_stabilization, s.max_scale_down_step) == (0, 120.0, 0)


@pytest.mark.parametrize(
    "name, value",
    [
        ("POLICY", "hpa"),
        ("TARGET_BACKLOG_PER_WORKER", "-1"),
        ("TARGET_BACKLOG_PER_WORKER", "lots"),
        ("TARGET_BACKLOG_PER_WORKER", "inf"),
        ("MAX_QUEUE_WAIT", "0"),
        ("MAX_QUEUE_WAIT", "nan"),
        ("MAX_SCALE_UP_STEP", "-1"),
        ("MAX_SCALE_UP_STEP", "1.5"),
        ("MAX_SCALE_DOWN_STEP", "-1"),
        ("MAX_SCALE_DOWN_STEP", "1001"),
        ("SCALE_DOWN_STABILIZATION", "-5"),
        ("SCALE_DOWN_STABILIZATION", "3600"),
    ],
)
def test_bad_policy_knobs_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse({name: value})
    assert caught.value.setting == name
    assert str(caught.value).startswith(f"{name}: ")


def test_good_policy_knobs_parse() -> None:
    s = parse({
        "POLICY": "Step", "TARGET_BACKLOG_PER_WORKER": "12.5", "MAX_QUEUE_WAIT": "30",
        "MAX_SCALE_UP_STEP": "4", "SCALE_DOWN_STABILIZATION": "0", "MAX_SCALE_DOWN_STEP": "2",
    })
    assert (s.policy, s.target_backlog_per_worker, s.max_queue_wait) == ("step", 12.5, 30.0)
    assert (s.max_scale_up_step, s.scale_down_stabilization, s.max_scale_down_step) == (4, 0.0, 2)
