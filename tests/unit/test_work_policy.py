"""Sizing by work: rates from the hook's counters across ticks, Erlang staffing, drain, holds (pure)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

from dramactl.instance import WorkerUnit
from dramactl.policy import ScalingDecision, decide, recurring
from dramactl.queueing import workers_for
from dramactl.rates import learned_startup, surges, work_rates
from dramactl.reaction import headroom, reacting_fleet
from dramactl.settings import Settings, parse
from dramactl.state import ScalerState, TickRecord
from dramactl.stats import FleetBacklog

NOW = 1_700_000_000.0


def settings(**values: object) -> Settings:
    base = {"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"}
    return parse({**base, **{k: str(v) for k, v in values.items()}})


def running(n: int) -> list[WorkerUnit]:
    return [WorkerUnit(k + 1, "active", "running", pid=100 + k, since=NOW - 3600) for k in range(n)]


def worked(rate: float, service: float, *, workers: int, backlog: int = 0, seconds: float = 300, every: float = 15,
           wanted: int | None = None, startup: float | None = None) -> list[TickRecord]:
    """Ticks that saw ``rate`` msgs/s of ``service`` s each complete, at a constant backlog."""
    out = []
    for k in range(int(seconds // every), 0, -1):
        at = NOW - every * k
        done = rate * (at - NOW + 10_000)
        out.append(TickRecord(at, backlog, workers, workers, wanted=workers if wanted is None else wanted, done=done,
                              busy=done * service, for_rate=None, startup=startup))
    return out


def seen(history: list[TickRecord], rate: float, service: float, ready: int = 0, in_flight: int = 0) -> FleetBacklog:
    """This tick's figures, continuing ``history``'s counters at ``rate`` for one more interval."""
    done = rate * 10_000
    return FleetBacklog(ready=ready, in_flight=in_flight, done_total=done, busy_seconds_total=done * service,
                        oldest_age=1.0 if ready else None)


def test_tiny_fast_messages_do_not_grow_the_fleet_to_max_but_slow_ones_of_the_same_count_do() -> None:
    s = settings()
    fast_history = worked(300, 0.05, workers=2, backlog=2000)
    fast = decide(seen(fast_history, 300, 0.05, ready=2000, in_flight=16), running(2), s, fast_history, NOW)
    slow_history = worked(1.0, 4.0, workers=2, backlog=2000)
    slow = decide(seen(slow_history, 1.0, 4.0, ready=2000, in_flight=16), running(2), s, slow_history, NOW)
    assert fast.target < 5, fast.reason
    assert slow.target == 10, slow.reason
    assert "λ 300.1" in fast.reason


def test_first_tick_with_counters_uses_the_lifetime_service_time() -> None:
    """No earlier tick has counters: E[S] is busy / done, the load what runs now."""
    s = settings()
    backlog = FleetBacklog(ready=2000, in_flight=16, done_total=1000, busy_seconds_total=50.0)  # 0.05 s each
    assert decide(backlog, running(1), s, [], NOW).target <= 3
    slow = FleetBacklog(ready=2000, in_flight=16, done_total=1000, busy_seconds_total=4000.0)  # 4 s each
    assert decide(slow, running(1), s, [], NOW).target == 10


def test_without_counters_it_sizes_by_count_as_before() -> None:
    s = settings()
    counted = decide(FleetBacklog(ready=2000), running(2), s, [], NOW)
    assert counted.target == 10 and counted.for_rate is None
    assert "λ" not in counted.reason


def test_step_ignores_the_counters() -> None:
    s = settings(POLICY="step", CHECK_INTERVAL=180)
    history = worked(300, 0.05, workers=2, backlog=2000)
    with_counters = decide(seen(history, 300, 0.05, ready=2000), running(2), s, history, NOW)
    without = decide(FleetBacklog(ready=2000), running(2), s, [], NOW)
    assert (with_counters.target, with_counters.reason) == (without.target, without.reason) == (3, "step: depth 2000 > 10")


def test_steady_load_gets_its_erlang_fleet() -> None:
    s = settings()
    history = worked(12.0, 4.0, workers=7)  # 48 busy threads
    d = decide(seen(history, 12.0, 4.0, in_flight=48), running(7), s, history, NOW)
    assert d.target == d.for_rate == workers_for(48.0, 4.0, 8, 6.0)
    assert 48 / 8 < d.target <= 8


def test_a_drained_backlog_is_released_at_once() -> None:
    """20,000 messages drained at MAX: once the queue is empty the drain capacity goes,
    down to what the arrivals need, without waiting out the stabilization window."""
    s = settings(MAX_PROCESSES=64)
    history = worked(0.5, 4.0, workers=64, backlog=0, wanted=200)  # every tick in the window asked for more
    history = [TickRecord(r.at, r.backlog, r.workers, r.target, wanted=r.wanted, done=r.done, busy=r.busy, for_rate=1) for r in history]
    d = decide(seen(history, 0.5, 4.0, in_flight=3), running(64), s, history, NOW)
    assert d.target == 1, d.reason


def test_arrivals_need_is_held_over_the_stabilization_window_within_the_rates_noise() -> None:
    """0.1 msg/s of 40 s messages: 15 arrivals over the 150 s of history, a noisy rate. The fleet shrinks no lower than the rate two standard errors up needs
    (2, not the 1 the estimate needs); a tick in the window that needed 6 is beyond
    that noise and does not hold it higher. (A 20 s start-up: a growth consumes past
    the 30 s goal, so the static fleet is the need, not the reacting one.)"""
    s = settings()

    def window_needed(n: int) -> ScalingDecision:
        history = worked(0.1, 40.0, workers=3, seconds=150, startup=20.0)
        r = history[-3]
        history[-3] = TickRecord(r.at, 0, 3, 3, wanted=3, done=r.done, busy=r.busy, for_rate=n)
        return decide(seen(history, 0.1, 40.0), running(3), s, history, NOW)

    held = window_needed(2)
    assert held.for_rate == 1 and held.target == 2 and "the load 2 sigma up (6.1 busy threads) needs 2" in held.reason
    capped = window_needed(6)
    assert capped.target == 2 and "2 sigma above the load now" in capped.reason


def blocks(ages: tuple[float, ...], startup: float | None = None, size: int = 150, seconds: float = 600) -> list[TickRecord]:
    """0.5 msg/s of 4 s messages on 1 worker for ``seconds``, and ``size`` messages landing
    before each tick ``ages`` seconds old (seen in its backlog, drained by the next)."""
    out = []
    for r in worked(0.5, 4.0, workers=1, seconds=seconds, startup=startup):
        landed = NOW - r.at in ages
        out.append(TickRecord(r.at, size if landed else 0, 1, 5 if landed else 1, wanted=5 if landed else 1,
                              done=r.done, busy=r.busy, for_rate=1, startup=r.startup))
    return out


def test_a_recurring_block_is_met_by_a_fleet_started_ahead_of_it() -> None:
    """Blocks 180 s apart, the last 150 s ago: the next is due in 30 s, within the
    start-up plus two ticks. The fleet that serves it within a tick is started now
    (not recorded as a need: the next tick's window does not hold it), or kept."""
    s = settings()
    history = blocks((510.0, 330.0, 150.0))
    ahead = decide(seen(history, 0.5, 4.0), running(1), s, history, NOW)
    assert ahead.target == 6 and ahead.wanted == 1, ahead.reason  # (2 busy + 150 x 4 s / 15 s) / 8 threads
    assert "150 msgs land every 180s, due in 30s" in ahead.reason
    kept = decide(seen(history, 0.5, 4.0), running(8), s, history, NOW)
    assert kept.target == 6, kept.reason


def test_a_recurring_block_due_later_than_a_start_takes_is_not_waited_for() -> None:
    s = settings(SCALE_DOWN_STABILIZATION=0)  # no window: only the start ahead keeps a fleet
    quick = blocks((480.0, 300.0, 120.0), startup=3.0)  # due in 60 s; start-up + 2 ticks 33 s: release
    assert decide(seen(quick, 0.5, 4.0), running(8), s, quick, NOW).target == 1
    slow = blocks((480.0, 300.0, 120.0), startup=30.0)  # start-up + 2 ticks 60 s: keep
    assert decide(seen(slow, 0.5, 4.0), running(8), s, slow, NOW).target == 6


def test_a_recurring_blocks_fleet_is_kept_when_it_would_start_again_within_the_window() -> None:
    """A block every 180 s, due in 60 s: stopped now, its fleet would be started again (33 s
    ahead of it) 27 s from now: kept, at most what is up. The window is at least
    RECURRING_KEEP (300 s, HPA's and KEDA's default) above the default 120 s
    SCALE_DOWN_STABILIZATION: blocks 210 s apart, due in 195 s (longer than 120 s plus the
    33 s lead), are kept too; blocks 420 s apart, due in 375 s (longer than 300 + 33 s),
    are released between blocks; SCALE_DOWN_STABILIZATION=0 keeps nothing."""
    s = settings()
    soon = blocks((480.0, 300.0, 120.0), startup=3.0)
    kept = decide(seen(soon, 0.5, 4.0), running(8), s, soon, NOW)
    assert kept.target == 6 and "due again within 300s: kept" in kept.reason, kept.reason
    assert decide(seen(soon, 0.5, 4.0), running(3), s, soon, NOW).target == 3, "kept, never grown by it"
    beyond_stabilization = blocks((435.0, 225.0, 15.0), startup=3.0)
    kept = decide(seen(beyond_stabilization, 0.5, 4.0), running(8), s, beyond_stabilization, NOW)
    assert kept.target == 6 and "land every 210s, due in 195s" in kept.reason, kept.reason
    assert decide(seen(beyond_stabilization, 0.5, 4.0), running(8), settings(SCALE_DOWN_STABILIZATION=0), beyond_stabilization, NOW).target == 1
    later = blocks((885.0, 465.0, 45.0), startup=3.0, seconds=1200)
    released = decide(seen(later, 0.5, 4.0), running(8), s, later, NOW)
    assert released.target == 1, released.reason


def test_one_block_is_not_a_recurrence() -> None:
    s = settings()
    once = blocks((150.0,))
    d = decide(seen(once, 0.5, 4.0), running(8), s, once, NOW)
    assert d.target == 1 and "land every" not in d.reason


def test_a_rate_that_steps_up_is_one_block_not_a_recurrence() -> None:
    """0.5/s, then 10/s from 300 s ago: the median follows over about five ticks, each
    of which sees a surge, the last 30 s after the one before (a tick that waited for
    its start jobs) and 75 s after the first. That is one block, nothing that recurs."""
    history, done = [], 0.0
    for k in range(40, 0, -1):
        at = NOW - 15 * k
        done += (0.5 if k > 20 else 10.0) * 15
        if k == 16:
            continue  # a late tick: the interval to the next is 30 s
        history.append(TickRecord(at, 0, 4, 4, wanted=4, done=done, busy=done * 0.4, for_rate=4))
    assert len(surges(history)) >= 2
    assert recurring(history, tolerance=30.0) is None


def test_surges_count_blocks_even_when_absorbed_but_not_poisson_noise() -> None:
    history = worked(8.0, 4.0, workers=5, seconds=600)
    assert surges(history) == [], "steady arrivals are no block"
    r = history[20]
    # 200 messages landed and were all completed before the tick saw them: no backlog, still a block.
    absorbed = history[:20] + [TickRecord(x.at, 0, 5, 5, done=x.done + 200, busy=x.busy + 800) for x in history[20:]]
    assert [(at, round(n)) for at, n in surges(absorbed)] == [(r.at, 200)]


def test_a_block_drains_sooner_the_longer_its_oldest_message_waited() -> None:
    s = settings()
    history = worked(0.5, 4.0, workers=1)
    fresh = decide(FleetBacklog(ready=150, in_flight=16, oldest_age=1.0, done_total=5000.0, busy_seconds_total=20000.0),
                   running(1), s, history, NOW)
    old = decide(FleetBacklog(ready=150, in_flight=16, oldest_age=12.0, done_total=5000.0, busy_seconds_total=20000.0),
                 running(1), s, history, NOW)
    assert "drain in 24s" in fresh.reason and "drain in 15s" in old.reason
    assert old.target > fresh.target > 1


def test_prefetched_messages_with_nothing_ready_are_no_backlog() -> None:
    """1-thread workers, prefetch 2: with the queue empty, messages held behind a busy
    thread are the queue the Erlang headroom is for; behind a ready backlog they wait too."""
    s = settings(WORKER_THREADS=1)
    history = worked(1.0, 4.0, workers=6)
    quiet = decide(seen(history, 1.0, 4.0, in_flight=10), running(6), s, history, NOW)
    assert quiet.wanted == quiet.for_rate and "waiting" not in quiet.reason
    behind = decide(seen(history, 1.0, 4.0, ready=3, in_flight=10), running(6), s, history, NOW)
    assert "7 waiting" in behind.reason


def test_a_block_landing_is_a_backlog_not_a_rate() -> None:
    history = worked(1.0, 4.0, workers=2, backlog=0)
    blocked = history[:-1] + [TickRecord(history[-1].at, 600, 2, 2, wanted=2, done=history[-1].done, busy=history[-1].busy)]
    rates = work_rates(blocked, seen(blocked, 1.0, 4.0, ready=600), NOW)
    assert rates.arrival == pytest.approx(1.0)
    assert rates.service == pytest.approx(4.0)


def counted(rates_per_tick: list[float]) -> tuple[list[TickRecord], FleetBacklog]:
    """The history and the backlog now after 15 s tick intervals that saw these arrivals per
    second (none waiting, each completed at once), the last of them ending now."""
    history, done = [], 1000.0
    for k, rate in enumerate(rates_per_tick):
        history.append(TickRecord(NOW - 15 * (len(rates_per_tick) - k), 0, 3, 3, wanted=3, done=done, busy=done * 20.0, for_rate=3))
        done += rate * 15
    return history, FleetBacklog(ready=0, in_flight=0, done_total=done, busy_seconds_total=done * 20.0)


def test_arrivals_beyond_the_rate_interval_after_interval_are_a_rate_not_a_block() -> None:
    """A block lands at once, within one interval between ticks; arrivals far beyond the rate
    before them in two intervals in a row are a rate that rose (a step, a burst of minutes),
    counted from the first of them: before, every interval until the median of the window
    before it caught up was taken for a block and the rate stayed 0.2/s through a 2-minute
    burst of 2.4/s, absorbed in flight by the fleet, while the fleet shrank under it."""
    stepped = work_rates(*counted([0.2] * 39 + [2.4, 2.4]), NOW)
    assert stepped.arrival == pytest.approx(2.4), "both intervals of the new rate counted, and the rate before it not (a step)"
    landed = work_rates(*counted([0.2] * 39 + [2.4, 0.2]), NOW)
    assert landed.arrival == pytest.approx(0.2), "one interval's excess is a block, a backlog to drain"


def test_counters_that_went_backwards_start_over() -> None:
    history = worked(1.0, 4.0, workers=2)
    reset = FleetBacklog(done_total=30.0, busy_seconds_total=60.0)  # Redis lost the key: 2 s each since
    rates = work_rates(history, reset, NOW)
    assert rates.arrival is None and rates.service == pytest.approx(2.0)
    assert work_rates(history, FleetBacklog(), NOW) is None, "no counters now: size by count"


@pytest.mark.parametrize("field", ["done", "busy"])
def test_counters_damaged_into_huge_finite_values_size_the_fleet_without_a_traceback(field: str) -> None:
    """A counter jumps to 1e300 (finite, so it passes the probe when it is ``busy``, a float
    counter): the spread of service times divided by an underflowed 0 (``done``) or squared
    past a float's range (``busy``), and every tick failed with a traceback."""
    s = settings()
    history = worked(1.0, 4.0, workers=2)
    last = replace(history[-1], **{field: 1e300})
    history[-1] = last
    now = FleetBacklog(ready=0, in_flight=2, done_total=last.done + 15, busy_seconds_total=last.busy + 60)
    d = decide(now, running(2), s, history, NOW)
    assert 1 <= d.target <= 10, d.reason


def test_start_up_is_learned_from_the_scalers_start_jobs() -> None:
    history = [TickRecord(NOW - 60, 0, 1, 2, startup=28.0), TickRecord(NOW - 30, 0, 2, 2)]
    assert learned_startup(history, 5.0) == 28.0
    assert learned_startup([], 5.0) == 5.0


def test_decision_record_carries_the_counters_and_old_state_files_still_load() -> None:
    history = worked(2.0, 1.0, workers=1)
    backlog = seen(history, 2.0, 1.0)
    d = decide(backlog, running(1), settings(), history, NOW)
    r = d.record(NOW, backlog)
    assert (r.done, r.busy, r.for_rate) == (backlog.done_total, backlog.busy_seconds_total, d.for_rate)
    old = {"history": [{"at": NOW, "backlog": 1, "workers": 1, "target": 1, "from_a_newer_version": 3}]}
    assert ScalerState.from_dict(json.loads(json.dumps(old))).history == (TickRecord(NOW, 1, 1, 1),)


def test_erlang_staffing_keeps_more_headroom_for_slow_messages() -> None:
    assert workers_for(15.0, 0.05, 8, 6.0) == 2  # 94 % busy threads, waits of milliseconds
    assert workers_for(15.0, 30.0, 8, 6.0) == 3
    assert workers_for(0.0, 4.0, 8, 6.0) == 0


def test_the_fleet_is_kept_while_a_backlog_drains() -> None:
    s = settings(MAX_PROCESSES=64)
    history = worked(0.5, 4.0, workers=64, backlog=2000)  # wants 41 to drain it in 25 s; 64 keep it
    d = decide(seen(history, 0.5, 4.0, ready=2000, in_flight=512), running(64), s, history, NOW)
    assert d.target == 64 and "until the backlog is drained" in d.reason


def test_two_blocks_are_no_recurrence_three_at_one_period_are() -> None:
    """Any two blocks define some period: two are no evidence of a schedule."""
    s = settings()
    two = blocks((330.0, 150.0))
    d = decide(seen(two, 0.5, 4.0), running(1), s, two, NOW)
    assert d.target == 1 and "land every" not in d.reason, d.reason
    three = blocks((510.0, 330.0, 150.0))
    assert "land every 180s" in decide(seen(three, 0.5, 4.0), running(1), s, three, NOW).reason
    uneven = blocks((570.0, 330.0, 150.0))  # gaps 240 s and 180 s: beyond the tolerance of two ticks
    assert "land every" not in decide(seen(uneven, 0.5, 4.0), running(1), s, uneven, NOW).reason


def test_a_predicted_block_that_does_not_come_ends_the_prediction() -> None:
    """Blocks 180 s apart, the last 240 s ago: the one due 60 s ago never came. Nothing is
    started ahead, neither for it nor for the one after (due in 120 s by the old period)."""
    s = settings()
    missed = blocks((600.0, 420.0, 240.0))
    for later in (0.0, 90.0):
        history = [r for r in missed] + [
            TickRecord(NOW + t, 0, 1, 1, wanted=1, done=missed[-1].done + 0.5 * (t + 15), busy=missed[-1].busy + 2 * (t + 15), for_rate=1)
            for t in range(0, int(later), 15)]
        d = decide(seen_at(history, later), running(1), s, history, NOW + later)
        assert d.target == 1 and "land every" not in d.reason, d.reason


def seen_at(history: list[TickRecord], later: float) -> FleetBacklog:
    done = history[-1].done + 0.5 * 15
    return FleetBacklog(ready=0, in_flight=0, done_total=done, busy_seconds_total=done * 4.0)


def test_the_arrival_rate_at_low_rates_is_a_count_never_zero_while_messages_arrive() -> None:
    """One arrival every third 15 s tick (1/45 s): most intervals see none, so their median
    is 0; the count over a window reaching back until it holds 10 arrivals is not."""
    history, done = [], 1000.0
    for k in range(60, 0, -1):
        done += 1.0 if k % 3 == 0 else 0.0
        history.append(TickRecord(NOW - 15 * k, 0, 3, 3, wanted=3, done=done, busy=done * 120.0, for_rate=3))
    rates = work_rates(history, FleetBacklog(ready=0, in_flight=0, done_total=done, busy_seconds_total=done * 120.0), NOW)
    assert rates.arrival == pytest.approx(1 / 45, rel=0.15)
    assert rates.span >= 10 * 45 - 15, "the window reaches back until it holds several arrivals"
    d = decide(FleetBacklog(ready=0, in_flight=3, done_total=done, busy_seconds_total=done * 120.0),
               running(3), settings(WORKER_THREADS=1), history, NOW)
    assert d.for_rate >= 3, d.reason  # 1/45 s x 120 s = 2.7 busy threads: never read as no load


def rate_after(rates_per_tick: list[float]) -> float | None:
    """The arrival rate after these tick intervals (:func:`counted`)."""
    return work_rates(*counted(rates_per_tick), NOW).arrival


def test_the_rate_window_does_not_reach_back_across_a_change_of_the_rate() -> None:
    """The window reaches back for precision only while the earlier rate explains what the
    last RATE_WINDOW saw: arrivals that stopped are no longer staffed for from minutes
    before, and a low rate that rose is the new one, not a mix."""
    stopped = [2.0] * 40 + [0.0] * 10  # 2/s, then nothing for 150 s
    assert rate_after(stopped) == 0.0
    rose = [0.01] * 50 + [0.1] * 8  # 0.01/s, then 0.1/s for 120 s: 12 arrivals, fewer than MIN_ARRIVALS
    assert 0.05 <= rate_after(rose) <= 0.1  # reaching back 900 s would give 0.022
    steady = [0.1] * 58  # the same 12 in 120 s with the same rate before: the window reaches back
    assert rate_after(steady) == pytest.approx(0.1)


def poisson(rng: random.Random, mu: float) -> int:
    """A Poisson draw (Knuth's; the normal approximation from a mean of 50)."""
    if mu >= 50:
        return max(0, round(rng.gauss(mu, mu ** 0.5)))
    k, p, floor = 0, 1.0, math.exp(-mu)
    while (p := p * rng.random()) >= floor:
        k += 1
    return k


def ticks_of(clock: float, every: float, rates: list[float], landed: tuple[int, ...] = (), workers: int = 2) -> tuple[list[TickRecord], FleetBacklog]:
    """Ticks ``every`` s apart up to ``clock`` that saw these arrivals per second of 4 s
    messages, each completed at once, and 150 messages landing before the ticks ``landed``
    ticks back (seen in that tick's backlog, which grew the fleet to 5)."""
    history, done = [], 1000.0
    for k, rate in enumerate(rates):
        block = len(rates) - k in landed
        history.append(TickRecord(clock - every * (len(rates) - k), 150 if block else 0, workers, 5 if block else workers,
                                  wanted=5 if block else workers, done=done, busy=done * 4.0, for_rate=1))
        done += rate * every
    return history, FleetBacklog(ready=0, in_flight=0, done_total=done, busy_seconds_total=done * 4.0)


@pytest.mark.parametrize("clock, every", [(900.0, 15.0), (NOW, 15.0), (NOW, 15.02)], ids=["simulator", "host-exact", "host"])
def test_a_hosts_ticks_and_the_simulators_count_the_same_windows(clock: float, every: float) -> None:
    """The timer starts each tick 10-25 ms after its interval, so on a host (an epoch clock)
    the tick a window back is that much older than the window; the simulator's ticks are
    exactly 15 s apart on a clock from 0. All count 8 intervals (120 s) for the rate and 20
    for the trend (an interval is in when its middle is), and hold the tick a
    SCALE_DOWN_STABILIZATION back in every scale-down window (a tick is in up to
    state.window_edge past it). Before, the simulator counted 9 and 21 intervals (the
    1e-9 guard kept the one ending on the edge), and a host's windows left that tick out."""
    s = parse({"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"})
    rates = work_rates(*ticks_of(clock, every, [2.0] * 40), clock)
    assert (rates.intervals, rates.span) == (8, pytest.approx(8 * every))
    assert work_rates(*ticks_of(clock, every, [2.0 + 0.1 * k for k in range(24)]), clock).trend_span == pytest.approx(20 * every)
    for back, held in ((8, True), (9, False)):
        # Without the hook's counters: a tick that asked to grow 4 -> 6 holds 6 for the window.
        calm = [TickRecord(clock - every * k, 0, 6, 6, wanted=6) for k in range(20, 0, -1)]
        calm[-back] = replace(calm[-back], workers=4)
        d = decide(FleetBacklog(ready=0, in_flight=0), running(6), s, calm, clock)
        assert d.target == (6 if held else 1), (back, d.reason)
        # With them: the fleet a tick's arrivals needed is held within the window (here cut to the noise's).
        history, now = ticks_of(clock, every, [2.0] * 40, workers=6)
        history[-back] = replace(history[-back], for_rate=6)
        d = decide(now, running(6), s, history, clock)
        assert ("arrivals needed 6 within 120s" in d.reason) == held, (back, d.reason)
        # Backlogs that came back within the window keep the fleet they needed.
        history, now = ticks_of(clock, every, [0.5] * 40, landed=(4, back), workers=1)
        d = decide(now, running(5), s, history, clock)
        assert ("2 backlogs within 120s" in d.reason) == held, (back, d.reason)
    # A block every 4 ticks is not recurring (a period of at most two tolerances); every 5 is.
    assert recurring(ticks_of(clock, every, [0.5] * 40, landed=(2, 6, 10, 14))[0], 2.0 * 15.0) is None
    again = recurring(ticks_of(clock, every, [0.5] * 40, landed=(2, 7, 12, 17))[0], 2.0 * 15.0)
    assert again is not None and again.period == pytest.approx(5 * every)


@pytest.mark.parametrize("clock, every", [(900.0, 1.0), (NOW, 1.015)], ids=["simulator", "host"])
def test_at_a_one_second_tick_a_window_holds_no_tick_older_than_it(clock: float, every: float) -> None:
    """CHECK_INTERVAL=1, SCALE_DOWN_STABILIZATION=6: the tick 6 s back is in, 7 s back is
    not, on both clocks (a whole second's reach would hold the 7 s one in the simulator);
    the rate counts 120 s to the nearest tick (by the intervals' ends, 119 s on both)."""
    s = parse({"MIN_PROCESSES": "1", "MAX_PROCESSES": "10", "WORKER_THREADS": "8", "CHECK_INTERVAL": "1",
               "SCALE_DOWN_STABILIZATION": "6"})
    for back, kept in ((6, 6), (7, 1)):
        calm = [TickRecord(clock - every * k, 0, 6, 6, wanted=6) for k in range(20, 0, -1)]
        calm[-back] = replace(calm[-back], workers=4)
        d = decide(FleetBacklog(ready=0, in_flight=0), running(6), s, calm, clock)
        assert d.target == kept, (back, d.reason)
    assert work_rates(*ticks_of(clock, every, [2.0] * 400), clock).span == pytest.approx(120.0, abs=every / 2)  # to the nearest tick


def test_a_long_steady_span_against_the_interval_before_it_is_no_change() -> None:
    """The step test's binomial terms started at (1 - share) ** total: 20 intervals at 1.6/s
    against the one before, (1/21) ** 504, underflowed to 0, every term after it stayed 0,
    and steady arrivals read as a change. The trend was fit over 165-270 s, not 300, on
    steady loads of 0.9-1.8/s at 15 s ticks; at 3 s ticks the rate's window fell to 45-117 s
    on 1.7-5.9/s. The test now runs from the likelier end."""
    from dramactl.rates import STEP_P, _changed

    assert not _changed((480.0, 300.0), (24.0, 15.0), STEP_P)
    assert _changed((480.0, 300.0), (0.0, 15.0), STEP_P) and _changed((480.0, 300.0), (80.0, 15.0), STEP_P)
    assert _changed((0.0, 300.0), (24.0, 15.0), STEP_P)
    for every, rate in ((15.0, 0.9), (15.0, 1.6), (3.0, 1.7), (3.0, 5.9)):
        steady = work_rates(*ticks_of(NOW, every, [rate] * int(900 // every)), NOW)
        assert (steady.span, steady.trend_span) == (pytest.approx(120.0), pytest.approx(300.0)), (every, rate)


def test_a_steady_poisson_load_seldom_cuts_the_rate_window() -> None:
    """The change test's false alarms: on steady Poisson arrivals from 0.02/s to 18/s
    (1000 seeded histories of 60 intervals each), the window is cut short of where it
    would reach without the test in under 1 % of ticks."""
    from dramactl.rates import MIN_ARRIVALS, RATE_WINDOW, _arrival_rate, _arrivals, _Point
    from dramactl.state import WINDOW_EDGE

    for rate in (0.02, 0.05, 0.2, 2.0, 18.0):
        rng, cut = random.Random(f"steady/{rate}"), 0
        for _ in range(1000):
            points, done = [], 0
            for k in range(61):
                points.append(_Point(15.0 * k, done, 0.0, 0))
                done += poisson(rng, rate * 15)
            pairs = list(zip(points, points[1:]))
            _, used, _ = _arrival_rate(pairs, _arrivals(pairs), 900.0)
            arrived, reach = 0.0, 0
            for a, b in reversed(pairs):
                if b.at <= 900.0 - RATE_WINDOW + WINDOW_EDGE and arrived >= MIN_ARRIVALS:
                    break
                arrived, reach = arrived + b.done - a.done, reach + 1
            cut += used < reach
        assert cut < 10, (rate, cut)


def test_a_silence_is_a_stop_only_once_it_covers_the_rate_window_and_is_beyond_chance() -> None:
    """``rates._stopped``: 7/s at 1 s ticks, then a second with none (one in 1,100 at that
    rate): against the 120 s before it that gap alone is improbable (e^-7), and tested at
    every tick it would read as a stop about 3 times an hour; inside the rate's window it is
    the step test's, and the rate stays. 0.08/s of single arrivals, then nothing: a
    silence of 105 s is still the window's; one of 135 s covers it and is a stop (72
    arrivals in the 900 s before it, in 60 intervals, so 60 independent at most:
    (900 / 1035) ** 60 = 0.02 %)."""
    from dramactl.rates import _arrival_rate, _arrivals, _Point

    def rate_of(per_interval: list[float], every: float) -> float | None:
        points, done = [], 0.0
        for k, came in enumerate([0.0, *per_interval]):
            done += came
            points.append(_Point(every * k, done, 0.0, 0))
        pairs = list(zip(points, points[1:]))
        return _arrival_rate(pairs, _arrivals(pairs), points[-1].at)[0]

    assert rate_of([7.0] * 300 + [0.0], 1.0) == pytest.approx(7.0, rel=0.05)
    steady = [0.08 * 15.0] * 60  # 0.08/s, as its mean count per 15 s tick
    assert rate_of(steady + [0.0] * 7, 15.0) > 0.05
    assert rate_of(steady + [0.0] * 9, 15.0) == 0.0


def test_no_instance_is_stopped_while_starting_or_within_the_start_up_of_its_start() -> None:
    s = settings()
    history = worked(0.5, 4.0, workers=4, seconds=300, startup=60.0)
    history[-2] = replace(history[-2], workers=1, target=4)  # grew 30 s ago; start-up 60 s
    starting = [*running(1), *(WorkerUnit(k, "activating", "start", job="start") for k in (2, 3, 4))]
    d = decide(seen(history, 0.5, 4.0), starting, s, history, NOW)
    assert d.target == 4 and "3 still starting" in d.reason, d.reason
    d = decide(seen(history, 0.5, 4.0), running(4), s, history, NOW)
    assert d.target == 4 and "started 30s ago, start-up 60s" in d.reason, d.reason
    quick = [replace(r, startup=5.0) for r in history]
    assert decide(seen(quick, 0.5, 4.0), running(4), s, quick, NOW).target < 4


def test_a_queue_within_what_the_fleet_shows_under_its_load_is_not_drained_by_growth() -> None:
    """7 busy threads of 8 (one worker): Erlang C puts up to 20 waiting within the 95th
    percentile of that queue, so 10 waiting is noise; 60 waiting is a backlog."""
    s = settings()
    history = worked(1.75, 4.0, workers=1)
    noise = decide(seen(history, 1.75, 4.0, ready=10, in_flight=8), running(1), s, history, NOW)
    assert "within the queue 1 show under this load" in noise.reason and noise.wanted == noise.for_rate, noise.reason
    real = decide(seen(history, 1.75, 4.0, ready=60, in_flight=8), running(1), s, history, NOW)
    assert real.wanted > real.for_rate and "60 waiting drain" in real.reason, real.reason


def test_start_up_is_measured_from_systemds_timestamps() -> None:
    from dramactl.rates import measure_startup

    units = [
        WorkerUnit(2, "active", "running", since=NOW - 10, started=NOW - 75),  # READY=1 65 s after its start
        WorkerUnit(3, "activating", "start", job="start", started=NOW - 40),  # 40 s so far: at least that
        WorkerUnit(4, "activating", "auto-restart", started=NOW - 5),  # restarted by systemd: not ours to time
    ]
    assert measure_startup(units, (2, 3, 4, 5), NOW) == (65.0, (3,))
    assert measure_startup(units[1:2], (3,), NOW) == (40.0, (3,))
    assert measure_startup(units, (), NOW) == (None, ())
    history = [TickRecord(NOW - 30, 0, 1, 3, startup=None, starting=(2, 3)), TickRecord(NOW - 15, 0, 3, 3, startup=65.0)]
    assert learned_startup(history) == 65.0


def variable(rate: float, means: tuple[float, ...], *, workers: int, seconds: float = 300, every: float = 15) -> tuple[list[TickRecord], FleetBacklog]:
    """Ticks whose intervals' mean service times cycle through ``means`` (counters' sums
    only, as the hook reports), and this tick's counters continuing them."""
    out, done, busy = [], 10_000.0, 40_000.0
    for k in range(int(seconds // every), 0, -1):
        out.append(TickRecord(NOW - every * k, 0, workers, workers, wanted=workers, done=done, busy=busy, for_rate=workers))
        done += rate * every
        busy += rate * every * means[k % len(means)]
    return out, FleetBacklog(ready=60, in_flight=8, done_total=done, busy_seconds_total=busy, oldest_age=1.0)


def test_service_times_more_variable_than_exponential_widen_the_queue_taken_for_noise() -> None:
    """7 busy threads of 8, 60 waiting: a backlog when service times are exponential-like
    (every interval's mean the same), the queue the fleet shows anyway when they vary as
    a heavy tail does (interval means of 1 s and 7 s: cv^2 ~ 15, Allen-Cunneen x8)."""
    s = settings()
    steady, now_steady = variable(1.75, (4.0,), workers=1)
    tailed, now_tailed = variable(1.75, (1.0, 7.0), workers=1)
    assert work_rates(steady, now_steady, NOW).service_cv2 == pytest.approx(0.0, abs=1e-9)
    assert work_rates(tailed, now_tailed, NOW).service_cv2 > 10
    grown = decide(now_steady, running(1), s, steady, NOW)
    assert grown.wanted > grown.for_rate and "60 waiting drain" in grown.reason, grown.reason
    calm = decide(now_tailed, running(1), s, tailed, NOW)
    assert calm.wanted == calm.for_rate and "60 waiting within the queue" in calm.reason, calm.reason


def test_the_shrink_floor_counts_the_service_times_error_with_the_rates() -> None:
    """Same rate, same mean service: with variable service times the mean is less certain,
    so the load two standard errors up, and the fleet a shrink stops at, are higher."""
    steady, now_steady = variable(8.0, (4.0,), workers=6, seconds=600)
    tailed, now_tailed = variable(8.0, (1.0, 7.0), workers=6, seconds=600)
    a, b = work_rates(steady, now_steady, NOW), work_rates(tailed, now_tailed, NOW)
    assert a.load == pytest.approx(b.load, rel=0.02)
    assert b.load_high(2.0) > a.load_high(2.0) > a.load


def test_the_mean_service_time_rests_on_enough_completions_at_low_rates() -> None:
    """Two-minute tasks at 0.05/s: 10 minutes hold ~30 completions (an 18 % standard error
    at cv 1), so the mean reaches back until it holds 100. The tasks completed in the last
    10 minutes happened to be short (60 s), those before at the app's 120 s: the mean is
    the app's, not the last few tasks' luck, and it rests on the completions it counts."""
    history, done, busy = [], 1000.0, 120_000.0
    for k in range(200, 0, -1):  # 50 minutes of 15 s ticks, 0.75 completions each
        done += 0.75
        busy += 0.75 * (60.0 if k <= 40 else 120.0)
        history.append(TickRecord(NOW - 15 * k, 0, 6, 6, wanted=6, done=done, busy=busy, for_rate=6))
    done += 0.75
    busy += 0.75 * 60.0
    rates = work_rates(history, FleetBacklog(ready=0, in_flight=6, done_total=done, busy_seconds_total=busy), NOW)
    assert rates.completions >= 100, "reaches back past 10 minutes until 100 completions"
    assert 90.0 < rates.service < 110.0, rates.service  # 30 of 60 s and 70 of 120 s, not the last 10 minutes' 60 s
    fast = work_rates(worked(8.0, 4.0, workers=6, seconds=900), seen(worked(8.0, 4.0, workers=6, seconds=900), 8.0, 4.0), NOW)
    assert 4000 < fast.completions <= 8.0 * 615, "at high rates the 10 minutes hold plenty: the window is not stretched"


def test_growth_for_the_rate_alone_needs_evidence_beyond_its_noise_while_nothing_waits() -> None:
    """Two-minute tasks on 2-thread workers, 6 up. An estimate of 0.08/s (9.6 busy threads,
    7 workers) resting on ~25 arrivals has a 20 % standard error: two of them down (5.8
    busy threads) 6 workers hold, so with nothing waiting the fleet is not grown on it
    (a fleet grown at each high reading but shrunk only two standard errors up ratchets
    up on the noise). The same estimate with messages waiting grows it at once. (A 20 s
    start-up: a growth consumes past the 30 s goal, so the static fleet is the need.)"""
    s = settings(WORKER_THREADS=2)
    history = worked(0.08, 120.0, workers=6, seconds=900, startup=20.0)
    assert workers_for(0.08 * 120.0, 120.0, 2, 30.0) == 7
    calm = decide(seen(history, 0.08, 120.0, in_flight=8), running(6), s, history, NOW)
    assert (calm.target, calm.for_rate) == (6, 7), calm.reason
    assert "within the estimate's noise" in calm.reason, calm.reason
    waits = decide(seen(history, 0.08, 120.0, ready=1, in_flight=12), running(6), s, history, NOW)
    assert waits.target >= 7, waits.reason
    prefetched = decide(seen(history, 0.08, 120.0, in_flight=14), running(6), s, history, NOW)
    assert prefetched.target >= 7, "messages prefetched beyond the threads wait too: " + prefetched.reason


def test_long_tasks_are_sized_by_the_messages_present_when_a_growth_consumes_within_the_goal() -> None:
    """0.06/s of two-minute tasks on 2-thread workers (7.2 busy threads): a static fleet
    needs 6 workers for P(wait > 30 s) <= 5 %. But a growth consumes within a tick and a
    start-up (20 s, within the 30 s goal), and a task outlasts that: the 6 messages present
    hold 6 threads through it, and 2 free threads keep the arrivals before a growth
    consumes, so 4 workers do, and the fleet follows the work present down to them. With
    a 20 s start-up (a growth consumes after 35 s) only the static fleet keeps the goal;
    messages shorter than the horizon (4 s) are gone before a growth consumes, and their
    count now is no measure of the need: the static fleet stays their size."""
    s = settings(WORKER_THREADS=2)
    history = worked(0.06, 120.0, workers=6, seconds=900, backlog=6)
    assert workers_for(0.06 * 120.0, 120.0, 2, 30.0) == 6
    follows = decide(seen(history, 0.06, 120.0, in_flight=6), running(6), s, history, NOW)
    assert (follows.target, follows.for_rate) == (4, 4), follows.reason
    assert "needs 4 reacting (6 present; 6 if it could not)" in follows.reason, follows.reason
    slow_start = worked(0.06, 120.0, workers=6, seconds=900, backlog=6, startup=20.0)
    static = decide(seen(slow_start, 0.06, 120.0, in_flight=6), running(6), s, slow_start, NOW)
    assert static.target == 6 and static.for_rate == 6 and "reacting" not in static.reason, static.reason
    short = worked(1.8, 4.0, workers=4, seconds=900, backlog=2)
    assert workers_for(1.8 * 4.0, 4.0, 2, 30.0) == 4
    snapshot = decide(seen(short, 1.8, 4.0, in_flight=2), running(4), s, short, NOW)
    assert snapshot.target == 4 and snapshot.for_rate == 4 and "reacting" not in snapshot.reason, snapshot.reason


def test_a_reacting_fleet_grows_on_the_messages_present_before_any_waits() -> None:
    """The estimate of the calm test above (0.08/s of two-minute tasks, a static fleet of
    7 within its noise of 6): with 11 messages present on 6 workers' 12 threads, nothing
    waits yet, but the one free thread is less than the arrivals before a growth consumes
    need; the messages are counted, not estimated, so the fleet grows to 7 now rather than
    when an arrival already waits behind a busy worker's long task."""
    s = settings(WORKER_THREADS=2)
    history = worked(0.08, 120.0, workers=6, seconds=900, backlog=11)
    grown = decide(seen(history, 0.08, 120.0, in_flight=11), running(6), s, history, NOW)
    assert grown.target == 7, grown.reason
    assert "within the estimate's noise" not in grown.reason, grown.reason


def test_the_headroom_keeps_the_goals_share_of_arrivals_from_finding_no_thread() -> None:
    """Arrivals within the horizon less the running messages that end within it: the
    fewest free threads that keep E[(A - C - h)+] within the share of E[A]."""
    assert headroom(0.0, 5, 0.1) == 0
    assert headroom(1.2, 0, 1.0) == 3  # no completions: E[(A - 2)+] = 0.10 > 0.06, E[(A - 3)+] = 0.03
    assert headroom(1.2, 7, 20 / 120) == 3 and headroom(1.2, 7, 20 / 120, share=0.08) == 2
    assert headroom(1.2, 0, 1.0) > headroom(1.2, 12, 0.9)  # messages ending within it free threads
    # many arrivals: the normal approximation takes over where the exact sum stops, continuously
    assert abs(headroom(50.0, 20, 0.5) - headroom(50.5, 20, 0.5)) <= 1
    assert reacting_fleet(0, 0.1, 1.0, 0, 20.0, 30.0, 2) == 1  # no headroom needed, but with no worker nothing takes an arrival
    assert reacting_fleet(0, 0.0, 120.0, 0, 20.0, 30.0, 2) == 0


def bursts_of_minutes(firsts: tuple[float, ...], seconds: float, surged: int = 4, rate: float = 3.0) -> list[TickRecord]:
    """1 msg/s of 4 s messages on 2 workers, absorbed as they come, and ``rate`` msg/s over the
    ``surged`` 15 s intervals from each tick ``firsts`` seconds old (a burst of minutes):
    each of those intervals is a surge, the bursts a recurring block that lands over
    ``(surged - 1) x 15`` s rather than at once."""
    out, done = [], 0.0
    for k in range(int(seconds // 15), 0, -1):
        age = 15.0 * k
        burst = any(0 <= first - age < 15.0 * surged for first in firsts)
        done += (rate if burst else 1.0) * 15
        out.append(TickRecord(NOW - age, 0, 2, 2, wanted=2, done=done, busy=done * 4.0, for_rate=1))
    return out


def test_a_recurring_burst_of_minutes_is_staffed_for_its_rate_not_as_a_block_landed_at_once() -> None:
    """Bursts of 3/s on 1/s, a minute long, every 300 s, the next due in 30 s: the 120
    messages beyond the rate came over a minute, and the fleet started ahead of the next
    is the one their rate needs (12 busy threads: 2 workers of 8), not the 5 that would
    serve them all within one tick (4 busy + 120 x 4 s / 15 s = 36 busy threads), stopped
    again once the burst has passed."""
    s = settings()
    history = bursts_of_minutes((870.0, 570.0, 270.0), seconds=1200)
    d = decide(seen_from(history, 15), running(1), s, history, NOW)
    assert "land every 300s, due in" in d.reason, d.reason
    assert d.target == 2, d.reason


def test_a_recurring_burst_of_minutes_still_landing_keeps_its_fleet() -> None:
    """Bursts of 5/s on 1/s a minute long every 600 s (beyond the window a block's fleet is
    kept through): the one due now began 30 s ago, on 4 workers. Over the whole window the
    rate is 2.5/s (two workers), but the rate follows the step (dramactl.rates) and the
    burst goes on landing, as the last one did for 45 s after its first interval: the fleet
    stays at what 1 + 4/s of 4 s messages need (20 busy threads: 3 workers of 8 threads),
    not stopped under it, and the burst, already in the rate, is not added on top of it
    again (26 busy threads: 4)."""
    s = settings()
    history = bursts_of_minutes((1830.0, 1230.0, 630.0, 30.0), seconds=1950, rate=5.0)
    d = decide(seen_from(history, 75), running(4), s, history, NOW)
    assert "landing for 45s, as the last did" in d.reason, d.reason
    assert d.target == 3 and d.figures["needs"]["recurring"] == 3, d.reason


def seen_from(history: list[TickRecord], arrived: float) -> FleetBacklog:
    """This tick's figures: ``arrived`` more messages completed since the last record."""
    done = history[-1].done + arrived
    return FleetBacklog(ready=0, in_flight=4, done_total=done, busy_seconds_total=done * 4.0, oldest_age=None)


def test_a_backlog_that_comes_back_within_the_window_keeps_its_fleet() -> None:
    """A job every minute (150 messages, 4 s each, on 0.5/s): each backlog grows the fleet
    to 5 and is drained within a tick. Releasing the fleet after each one made two
    actions a job, 120 an hour (a family kept out of the repo). Two backlogs within
    SCALE_DOWN_STABILIZATION (120 s) keep the fleet; one is released at once; two that
    left the window keep nothing, nor does a window of 0 (shrink at once)."""
    s = settings()
    twice = blocks((60.0, 120.0))
    d = decide(seen(twice, 0.5, 4.0, in_flight=3), running(5), s, twice, NOW)
    assert d.target == 5 and "2 backlogs within 120s, the largest needing 5: holding 5" in d.reason, d.reason
    once = blocks((120.0,))
    d = decide(seen(once, 0.5, 4.0, in_flight=3), running(5), s, once, NOW)
    assert d.target == 1 and "backlogs within" not in d.reason, d.reason
    gone = blocks((135.0, 195.0))
    d = decide(seen(gone, 0.5, 4.0, in_flight=3), running(5), s, gone, NOW)
    assert d.target == 1 and "backlogs within" not in d.reason, d.reason
    d = decide(seen(twice, 0.5, 4.0, in_flight=3), running(5), settings(SCALE_DOWN_STABILIZATION=0), twice, NOW)
    assert d.target == 1, d.reason
    # A longer window keeps backlogs further apart: 300 s, HPA's default.
    d = decide(seen(gone, 0.5, 4.0, in_flight=3), running(5), settings(SCALE_DOWN_STABILIZATION=300), gone, NOW)
    assert d.target == 5 and "2 backlogs within 300s" in d.reason, d.reason


def test_the_fleet_kept_for_returning_backlogs_is_the_highest_they_needed() -> None:
    """Peaks 9, 4 and 6 within the horizon: 9 is kept (HPA keeps its highest recommendation);
    a tick that needed no more than the arrivals' fleet ends a run; one backlog keeps
    nothing; ticks with no arrivals' fleet (by count, paused, a manual size) count for
    nothing, neither ending a run nor adding to one."""
    from dramactl.calm import returning_backlog

    def tick(ago: float, wanted: int, for_rate: int | None = 2, age: float | None = None) -> TickRecord:
        return TickRecord(NOW - ago, 0, 2, 2, wanted=wanted, for_rate=for_rate, oldest_age=age)

    history = [tick(400, 12), tick(285, 9), tick(270, 2), tick(255, 4), tick(240, 2), tick(225, 5), tick(210, 6), tick(195, 2)]
    assert returning_backlog(history, NOW, 300.0, 60.0) == (3, 9)  # 12, 400 s ago, is beyond the horizon
    assert returning_backlog(history[5:], NOW, 300.0, 60.0) is None  # 5-6: one backlog
    assert returning_backlog(history[:3], NOW, 300.0, 60.0) is None  # one backlog
    assert returning_backlog([tick(30, 8), tick(15, 8)], NOW, 300.0, 60.0) is None  # one run of two ticks: one backlog
    assert returning_backlog([tick(45, 8), tick(30, 2), tick(15, 8)], NOW - 20, 300.0, 60.0) is None  # at or after now: not history
    assert returning_backlog([tick(45, 8), tick(30, 2), tick(15, 3)], NOW, 300.0, 60.0) == (2, 8)
    assert returning_backlog([tick(45, 8), tick(30, 9, None), tick(15, 3)], NOW, 300.0, 60.0) is None  # one backlog across a paused tick


def test_the_latency_guard_firing_again_and_again_keeps_no_fleet() -> None:
    """The guard wants the fleet up plus a step whenever the oldest ready message waited
    past MAX_QUEUE_WAIT: one old message (a retry, a delayed one come due) every two
    minutes on a load that needs 1 worker. Counted as backlogs, each firing would start
    from the fleet the last one kept and raise it by a step (1, 2, 3, 5, 8, 10 in a
    review's replay); the guard's ticks count for nothing, and the fleet goes back to 1."""
    s = settings()
    history = []
    for k, r in enumerate(worked(0.5, 4.0, workers=3, seconds=300)):
        guard = k % 8 == 3
        history.append(TickRecord(r.at, 1 if guard else 0, 3, 3, oldest_age=90.0 if guard else None, wanted=4 if guard else 1,
                                  done=r.done, busy=r.busy, for_rate=1))
    d = decide(seen(history, 0.5, 4.0, in_flight=2), running(3), s, history, NOW)
    assert d.target == 1 and "backlogs within" not in d.reason, d.reason


def test_a_growth_recorded_before_the_clock_stepped_back_holds_no_shrink() -> None:
    """The host's clock stepped back 10 minutes (an NTP step, a VM restored) after a tick
    that grew the fleet: that record's time is after now. Every window reads only the ticks
    before now; the start-up hold took the last growth in list order and held every shrink
    ("started -585s ago") until the clock caught up with it."""
    s = settings()
    history = [TickRecord(NOW + 600 - 15 * k, 0, 2, 2, wanted=2, done=100.0 * (40 - k), busy=10.0 * (40 - k), for_rate=2) for k in range(40, 0, -1)]
    history.append(TickRecord(NOW + 600, 400, 2, 6, wanted=6, done=4000.0, busy=400.0, for_rate=2))
    history += [TickRecord(NOW - 15 * k, 0, 6, 6, wanted=1, done=4000.0, busy=400.0, for_rate=1) for k in range(30, 0, -1)]
    decision = decide(FleetBacklog(done_total=4000.0, busy_seconds_total=400.0), running(6), s, history, NOW)
    assert decision.target == 1 and "started" not in decision.reason, decision.reason


@pytest.mark.parametrize("interval", [900, 1800, 3600])
def test_at_a_check_interval_of_half_an_hour_or_more_the_rate_is_still_measured(interval: int) -> None:
    """CHECK_INTERVAL may be up to a day. From 1800 s the newest interval's middle lies
    LONG_RATE_WINDOW (900 s) back or more, and the rate took no interval at all: the fleet
    was sized from the snapshot of what ran at the tick (2 busy: 3 workers for a steady 5
    busy threads). The newest interval always counts."""
    s = settings(MAX_PROCESSES=20, WORKER_THREADS=1, CHECK_INTERVAL=interval)
    history = []
    for k in range(10, 0, -1):
        done = 0.5 * (1e6 - interval * k)
        history.append(TickRecord(NOW - interval * k, 5, 6, 6, wanted=6, done=done, busy=done * 10.0, for_rate=6))
    backlog = FleetBacklog(in_flight=2, done_total=0.5 * 1e6, busy_seconds_total=0.5 * 1e6 * 10.0)
    assert work_rates(history, backlog, NOW, max_gap=4.0 * interval).arrival == pytest.approx(0.5, rel=0.01)
    assert decide(backlog, running(6), s, history, NOW).target == 6


def test_an_interval_from_before_a_stopped_timer_is_no_rate_now() -> None:
    """The exception above is for the interval that ends now: after the timer stood still
    for an hour (the gap is too long an interval to use), the last interval before it says
    nothing of the rate now."""
    history = [TickRecord(NOW - 3600 - 15 * k, 0, 2, 2, wanted=2, done=100.0 * (10 - k), busy=400.0 * (10 - k)) for k in range(10, 0, -1)]
    backlog = FleetBacklog(done_total=1000.0, busy_seconds_total=4000.0)
    assert work_rates(history, backlog, NOW, max_gap=60.0).arrival is None
