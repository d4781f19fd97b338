"""The benchmark's simulator: deterministic, every message accounted for, honest accounting."""

from __future__ import annotations

import pytest

from dramactl.sim.bound import work_lower_bound
from bench.policies import DramactlController, lineup
from bench.report import table
from dramactl.sim.simulator import RunResult, WorkerModel, Workload, count_flaps, simulate
from bench.traces import Trace, big_burst, one_thread, periodic, slow_start, tiny_fast

SMALL = Trace("small", 900.0, lambda t: 3.0 if 200 <= t < 500 else 0.5, 3.0, ((123.0, 150),), "test")


def run_all(seed: int, trace: Trace = SMALL) -> list[RunResult]:
    workload = Workload.draw(trace, WorkerModel(), seed)
    return [
        simulate(workload, spec.make(workload), policy=spec.name, interval=spec.interval,
                 initial_workers=spec.initial_workers, min_workers=1)
        for spec in lineup(15, max_workers=trace.max_workers, threads=workload.model.threads)
    ]


def shortened(trace: Trace, duration: float, blocks: tuple = ()) -> Trace:
    return Trace(trace.name, duration, trace.rate, trace.peak_rate, blocks, model=trace.model, max_workers=trace.max_workers)


def test_same_seed_same_table() -> None:
    first, again = table(run_all(7)), table(run_all(7))
    assert first == again
    assert table(run_all(8)) != first  # the seed does drive the draw


def test_static_max_costs_max_times_duration() -> None:
    results = {r.policy: r for r in run_all(3)}
    static = results["static MAX"]
    assert static.worker_seconds == pytest.approx(10 * static.horizon)
    assert static.horizon >= SMALL.duration
    assert (static.actions, static.peak_workers) == (0, 10)
    others = [r for r in results.values() if r is not static]
    assert all(r.worker_seconds < static.worker_seconds for r in others)


def test_every_message_gets_a_wait() -> None:
    workload = Workload.draw(SMALL, WorkerModel(), 5)
    for r in run_all(5):
        assert len(r.waits) == len(workload.arrivals)
        assert min(r.waits) >= 0


def test_the_real_policy_sees_history_grow_tick_by_tick() -> None:
    spec = next(s for s in lineup(15) if s.name.startswith("dramactl"))
    workload = Workload.draw(SMALL, WorkerModel(), 1)
    controller = spec.make(workload)
    assert isinstance(controller, DramactlController)
    result = simulate(workload, controller, policy=spec.name, interval=15,
                      initial_workers=1, min_workers=1, keep_ticks=True)
    history = controller.state.history
    assert len(history) == len(result.ticks) >= int(SMALL.duration // 15)
    assert [r.at for r in history] == [t.at for t in result.ticks]
    assert all(b.at - a.at >= 15 for a, b in zip(history, history[1:])), "a tick never starts before the last one ended"
    assert any(r.startup is not None for r in history), "the start-up its start jobs took is recorded"
    assert all(r.done is not None for r in history[1:]), "the hook's counters reach the policy"
    assert [r.target for r in history] == [t.target for t in result.ticks]
    assert all(r.wanted is not None for r in history)
    assert result.peak_workers > 1  # the burst made it grow


def test_bound_is_the_floor_plus_the_work_it_cannot_absorb() -> None:
    # MIN 1 x 8 threads absorbs 8 s of work per second; 80 x 2 s at t=10 leaves 160 - 8 x 90 < 0: the floor alone.
    assert work_lower_bound([10.0] * 80, [2.0] * 80, 8, 1, 100.0) == pytest.approx(100.0)
    # 800 x 2 s at t=10: 1600 - 720 = 880 s of work left at H, 110 worker-seconds beyond the floor.
    assert work_lower_bound([10.0] * 800, [2.0] * 800, 8, 1, 100.0) == pytest.approx(100.0 + 880 / 8)


FAMILIES = [
    SMALL,
    shortened(tiny_fast(), 60.0),
    shortened(periodic(), 400.0, ((7.5, 150), (187.5, 150))),
    shortened(one_thread(), 600.0),
    shortened(big_burst(count=3000), 400.0, ((30.0, 3000),)),
    shortened(slow_start(), 600.0, ((37.5, 600),)),
]


@pytest.mark.parametrize("trace", FAMILIES, ids=[t.name for t in FAMILIES])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_policy_goes_under_the_lower_bound(trace: Trace, seed: int) -> None:
    """The baseline and the clairvoyant reference included, on every family and seed."""
    results = run_all(seed, trace)
    assert len(results) == 6
    for r in results:
        assert r.worker_seconds >= r.lower_bound, (r.policy, r.worker_seconds, r.lower_bound)


def test_a_tick_that_starts_instances_lasts_until_they_are_ready() -> None:
    trace = shortened(slow_start(), 600.0, ((37.5, 600),))
    workload = Workload.draw(trace, WorkerModel(), 1)
    spec = next(s for s in lineup(15) if s.name.startswith("dramactl"))
    controller = spec.make(workload)
    simulate(workload, controller, policy=spec.name, interval=15, initial_workers=1, min_workers=1)
    history = controller.state.history
    grew = [(a, b) for a, b in zip(history, history[1:]) if a.target > a.workers]
    assert grew
    assert all(b.at - a.at >= 28.0 for a, b in grew), "the tick waits for its start jobs"
    # Start-ups of 28-32 s: some outlast the tick's 30 s wait; systemd's timestamps time them later.
    assert any(a.starting for a, _ in grew)
    learned = [r.startup for r in history if r.startup is not None]
    assert learned and 30.0 < max(learned) <= 32.0, learned


def test_flaps_are_actions_undone_within_two_ticks() -> None:
    assert count_flaps([(3, 1), (4, -1)]) == 1  # up, down at the next tick
    assert count_flaps([(3, 1), (5, -1)]) == 1  # ... or the one after
    assert count_flaps([(3, 1), (6, -1)]) == 0  # three ticks later: not a flap
    assert count_flaps([(3, 1), (4, 1), (5, -1)]) == 2  # both ups undone by the down
    assert count_flaps([(3, 1), (4, -1), (5, 1)]) == 2  # up undone, then the down undone
    assert count_flaps([(1, -1), (2, -1), (9, 1)]) == 0


class Recording(DramactlController):
    def __init__(self, settings) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self.seen: list = []

    def target(self, backlog, units, now):  # type: ignore[no-untyped-def]
        self.seen.extend(units)
        return super().target(backlog, units, now)


def test_the_simulator_lists_draining_instances_with_their_stop_job_never_as_coming_back() -> None:
    """What a real systemd shows (tests/system/test_unit_states.py compares the two): a
    stopped instance draining its messages is deactivating with a stop job; one starting
    is activating with a start job. Nothing in the simulator crashes, so nothing is
    failing and the policy never holds growth for it."""
    spec = next(s for s in lineup(15) if s.name.startswith("dramactl"))
    workload = Workload.draw(SMALL, WorkerModel(mean_service=30.0, startup_low=40.0, startup_high=45.0), 2)  # outlasts the wait
    controller = Recording(spec.make(workload).settings)
    result = simulate(workload, controller, policy=spec.name, interval=15, initial_workers=1, min_workers=1)
    states = {(u.active_state, u.job) for u in controller.seen}
    assert ("activating", "start") in states, states
    assert not any(u.is_failing or u.is_coming_back for u in controller.seen)
    assert not any(d.held for _, d in controller.decisions)
    assert result.actions > 2
    # The calm policy stops idle instances, which leave at once: a forced stop of a busy one drains.
    trace = Trace("drain", 60.0, lambda t: 0.0, 0.0)
    busy = Workload(trace, WorkerModel(threads=1, prefetch=1), arrivals=[0.0, 1.0], services=[100.0, 100.0], startups=[1.0] * 8, seed=1)
    seen: list = []

    class Watching(_TwoThenOne):
        def target(self, backlog, units, now):  # type: ignore[no-untyped-def]
            seen.extend(units)
            return super().target(backlog, units, now)

    simulate(busy, Watching(), policy="t", interval=15, initial_workers=2, min_workers=1, victim="highest", grace=40.0)
    draining = [u for u in seen if u.active_state == "deactivating"]
    assert draining and all(u.job == "stop" and u.is_stopping and not u.is_coming_back for u in draining), seen


class _TwoThenOne:
    """Two workers until t=30, then one."""

    def target(self, backlog, units, now):
        return 2 if now < 30 else 1


def test_a_stop_drains_with_the_real_rule_and_the_victim_rule_decides_what_is_cut() -> None:
    """@1 runs a 5 s message, @2 a 100 s one; at t=30 one worker goes. Highest number stops
    @2: its message is cut off at G (30 s later, 59 task-seconds lost) and redelivered after
    the heartbeat timeout, from scratch; least busy stops the idle @1 and nothing is lost."""
    from dramactl.sim.simulator import GRACE, HEARTBEAT

    trace = Trace("two", 40.0, lambda t: 0.0, 0.0)
    workload = Workload(trace, WorkerModel(threads=1, prefetch=1), arrivals=[0.0, 1.0], services=[5.0, 100.0], startups=[1.0] * 8, seed=1)
    run = lambda victim: simulate(workload, _TwoThenOne(), policy="t", interval=15, initial_workers=2, min_workers=1, victim=victim)  # noqa: E731
    highest, least = run("highest"), run("least-busy")
    assert (highest.cut, highest.discarded) == (1, 30.0 + GRACE - 1.0)
    assert highest.horizon == 30.0 + GRACE + HEARTBEAT + 100.0, "redelivered after the heartbeat timeout and run again from scratch"
    assert sorted(highest.waits) == [0.0, 30.0 + GRACE + HEARTBEAT - 1.0], "the wait is the one before the start that completed"
    assert (least.cut, least.discarded, least.horizon) == (0, 0.0, 101.0)


def test_the_actions_after_the_arrivals_end_are_counted_apart() -> None:
    """``after_end`` (bench.long_tasks' end/h): of the actions, those at or after the trace's
    end, when the arrivals have stopped and the fleet drains; the stop at t=30 is one of
    them when the trace ends at 20 s, not when it ends at 40 s."""
    def run(duration: float) -> RunResult:
        trace = Trace("end", duration, lambda t: 0.0, 0.0)
        workload = Workload(trace, WorkerModel(threads=1, prefetch=1), arrivals=[0.0, 1.0], services=[5.0, 100.0], startups=[1.0] * 8, seed=1)
        return simulate(workload, _TwoThenOne(), policy="t", interval=15, initial_workers=2, min_workers=1, victim="least-busy")

    within, after = run(40.0), run(20.0)
    assert (within.actions, within.after_end) == (1, 0)
    assert (after.actions, after.after_end) == (1, 1)


def test_an_instance_stopped_within_its_start_up_of_being_started_is_counted() -> None:
    """``stopped_starting`` (bench: "no instance stopped within its start-up of being started"):
    @2 is started at t=0; the tick waits at most 30 s for its start job, so the next tick, at
    t=30, stops it. With a start-up of 40 s it was still starting, and counts; with 5 s it had
    been consuming since t=5, and does not."""
    def run(startup: float) -> RunResult:
        trace = Trace("young", 60.0, lambda t: 0.0, 0.0)
        workload = Workload(trace, WorkerModel(threads=1, prefetch=1), arrivals=[], services=[], startups=[startup] * 8, seed=1)
        return simulate(workload, _TwoThenOne(), policy="t", interval=15, initial_workers=1, min_workers=1, victim="highest")

    slow, quick = run(40.0), run(5.0)
    assert (slow.actions, slow.stopped_starting) == (2, 1)
    assert (quick.actions, quick.stopped_starting) == (2, 0)


class _ShrinkHoldShrink:
    """Two workers until t=30, one until 1500, two (a hold) until 1600, then one."""

    def target(self, backlog, units, now):
        return 2 if now < 30 or 1500 <= now < 1600 else 1


def test_a_tick_without_a_scale_down_ends_the_wait_as_the_real_tick_does() -> None:
    """scaler.tick keeps ``waiting_since`` only while its ticks wait: a tick that does not
    scale down (here the policy holds at two from 1500 to 1600) ends the wait, and the next
    scale-down's wait counts its limit from its own first tick (1605), not from the first
    wait's (30). Both workers run a task longer than anything here, so the wait ends only at
    the limit: the most recent start (@2, begun at 1.0) is stopped at 1605 + WAIT_LIMIT and cut
    off GRACE later."""
    from dramactl.sim.simulator import GRACE
    from dramactl.victims import WAIT_LIMIT

    trace = Trace("hold", 60.0, lambda t: 0.0, 0.0)
    workload = Workload(trace, WorkerModel(threads=1, prefetch=1), arrivals=[0.0, 1.0], services=[9000.0, 9000.0], startups=[1.0] * 8, seed=1)
    result = simulate(workload, _ShrinkHoldShrink(), policy="t", interval=15, initial_workers=2, min_workers=1, victim="least-busy")
    assert result.cut == 1
    assert result.discarded == 1605.0 + WAIT_LIMIT + GRACE - 1.0


class _TwoUntilSixty:
    def target(self, backlog, units, now):
        return 2 if now < 60 else 1


def test_an_instance_the_scale_down_waits_for_takes_no_new_message() -> None:
    """As dramactl.intake: @1 takes the two 1000 s messages (alone at first; a prefetch of 2 leaves
    it no room for more), @2 (started by the first tick) the two 40 s ones, so the app's tasks outlast the drain (mean 40 s > G) and the
    hook's gate has each worker fetch only for its free threads. @2 begins the 500 s message at 51;
    at t=60 the scale-down waits for it (the most recent start) and pauses @2's intake. The 5 s
    message at t=70 then stays in Redis (@1 has no free thread, @2 is paused) until the tick at
    75, which lifts the pause because a message waits for a thread (:func:`victims.messages_wait`),
    and @2's free thread takes it; @2 runs its tasks to their end and is stopped idle, nothing cut."""
    trace = Trace("pause", 100.0, lambda t: 0.0, 0.0)
    arrivals = [0.0, 0.1, 2.0, 2.1, 51.0, 70.0]
    services = [1000.0, 1000.0, 40.0, 40.0, 500.0, 5.0]
    workload = Workload(trace, WorkerModel(threads=2, prefetch=2), arrivals=arrivals, services=services, startups=[1.0] * 8, seed=1)
    result = simulate(workload, _TwoUntilSixty(), policy="t", interval=15, initial_workers=1, min_workers=1, victim="least-busy", keep_ticks=True)
    assert (result.cut, result.discarded) == (0, 0.0)
    assert result.waits[5] == 5.0, "the message waited in Redis for the tick that lifted the pause (not taken by the paused worker, nor fetched behind @1's busy threads)"
    assert result.waits[4] == 0.0 and result.horizon == 1000.1


def test_the_simulator_gates_fetches_from_the_hooks_mean_task() -> None:
    """The simulator's consumers fetch only for free threads from the worker hook's threshold
    (the hook cannot be imported here: its import installs it on Dramatiq's broker)."""
    from pathlib import Path

    import dramactl
    from dramactl.sim.simulator import LONG_TASK_SECONDS

    source = (Path(dramactl.__file__).with_name("hook") / "dramactl_ready.py").read_text()
    line = next(x for x in source.splitlines() if x.startswith("LONG_TASK_SECONDS = "))
    assert float(line.split("=")[1].split("#")[0]) == LONG_TASK_SECONDS


class _Two:
    def target(self, backlog, units, now):
        return 2


def test_a_message_waits_for_a_free_thread_in_redis_once_tasks_are_long() -> None:
    """Two 1-thread workers with a prefetch of 2. The first message's length sets the mean task;
    then a 100 s and a 105 s task arrive, and two 1 s messages. With long tasks (mean >=
    LONG_TASK_SECONDS) each worker fetches only for a free thread: the 105 s task goes to the
    other worker, and the 1 s messages wait in Redis for the first thread to be free (105, then
    106 once the first of them is done). With short tasks the consumers fetch up to their
    prefetch, whichever draws first, and some message waits behind a long task longer."""
    trace = Trace("gate", 10.0, lambda t: 0.0, 0.0)
    arrivals = [0.0, 5.0, 5.1, 7.0, 8.0]
    waits = {}
    for first in (2.0, 0.5):
        services = [first, 100.0, 105.0, 1.0, 1.0]
        workload = Workload(trace, WorkerModel(threads=1, prefetch=2), arrivals=arrivals, services=services, startups=[1.0] * 8, seed=1)
        waits[first] = simulate(workload, _Two(), policy="t", interval=15, initial_workers=2, min_workers=1).waits
    assert [round(w, 6) for w in waits[2.0]] == [0.0, 0.0, 0.0, 98.0, 98.0]
    assert max(waits[0.5]) > 99.0, waits[0.5]


def test_the_simulator_waits_for_jobs_as_the_scaler_does() -> None:
    from dramactl import scaler
    from dramactl.settings import parse
    from dramactl.sim import simulator

    assert (simulator.START_WAIT, simulator.STOP_WAIT_FLOOR) == (scaler.START_WAIT, scaler.STOP_WAIT_FLOOR)
    settings = parse({"DRAMATIQ_COMMAND": "dramatiq app", "CHECK_INTERVAL": "15"})
    assert scaler.stop_wait(settings) == simulator.STOP_WAIT == 30.0
    assert scaler.stop_wait(settings, elapsed=0.0) == 14.0, "a second before the next tick"
    assert scaler.stop_wait(settings, elapsed=12.0) == simulator.STOP_WAIT_FLOOR == 10.0


def test_victim_rules_pairs_the_seeds_and_gives_the_differences_standard_error() -> None:
    """Each "no worse" line of bench.victim_rules says the seed-by-seed difference and its noise;
    runs of unequal seeds are refused rather than paired wrongly."""
    from types import SimpleNamespace

    from bench.report import Summary
    from bench.victim_rules import paired

    def summary(*values: float) -> Summary:
        return Summary("t", "p", tuple(SimpleNamespace(actions_per_hour=v) for v in values))  # type: ignore[arg-type]

    mean, error = paired(summary(10.0, 12.0, 8.0), summary(9.0, 12.0, 10.0), "actions_per_hour")
    assert mean == pytest.approx(-1 / 3) and error == pytest.approx(1.0 / 3**0.5 * (7 / 3) ** 0.5)
    assert paired(summary(3.0), summary(1.0), "actions_per_hour") == (2.0, 0.0)
    with pytest.raises(ValueError):
        paired(summary(1.0, 2.0), summary(1.0), "actions_per_hour")


@pytest.mark.parametrize(("item", "named"), [
    ("WORKER_THREADS=4", "--set WORKER_THREADS: not a setting the bench varies"),
    ("MAX_PROCESSES=20", "--set MAX_PROCESSES: not a setting the bench varies"),
    ("CHECK_INTERVAL=60", "--set CHECK_INTERVAL: not a setting the bench varies"),
    ("SCALE_DOWN_STABILISATION=300", "--set SCALE_DOWN_STABILISATION: not a setting the bench varies"),
    ("MAX_QUEUE_WAIT=abc", "--set MAX_QUEUE_WAIT: 'abc' is not a number"),
    ("SCALE_DOWN_STABILIZATION", "write NAME=VALUE"),
])
def test_bench_set_takes_only_the_policys_settings_and_names_a_bad_one(item: str, named: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--set WORKER_THREADS=4`` reached dramactl's policy but not the simulated workers,
    which kept the trace's 8 threads: the policy sized 4-thread workers (ramp's p95 1135 s
    instead of 0.4 s), a figure of nothing real; a misspelt name or CHECK_INTERVAL (the
    lineup's) changed nothing and was printed as if it had. --set takes the policy's
    settings the simulator models alike; a bad item is one line and exit 2, before any run."""
    from bench.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(["--seeds", "1", "--set", item])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert named in err[-1] and "Traceback" not in "".join(err)
