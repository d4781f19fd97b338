"""A rising load: the arrival rate's trend (:func:`dramactl.rates._trend`) and the calm rule
that does not shrink under it (:func:`dramactl.calm.rising_floor`).

On a ramp the rate, a count over a window, is the rate of the window's middle; the fleet
sized for it fell behind, a backlog built, its drain grew the fleet past the rate's need,
and the next tick shrank it back, to be grown again at the next backlog: steep ramps had
10 flaps an hour where HPA had 0 to 0.3, and a CI-sized one failed the calm target (48.0
actions/h against 44.0) before the rule."""

from __future__ import annotations

import random

import pytest

from bench.long_tasks import calm, runs
from bench.traces import ramp
from dramactl.instance import WorkerUnit
from dramactl.calm import load_high_now
from dramactl.policy import decide
from dramactl.rates import _arrivals, _Point, _trend, work_rates
from dramactl.settings import parse
from dramactl.state import TickRecord
from dramactl.stats import FleetBacklog
from tests.unit.test_work_policy import poisson

NOW = 1_700_000_000.0
SERVICE = 4.0


def counted(rates_per_tick: list[float], workers: int = 3) -> tuple[list[TickRecord], FleetBacklog]:
    """The history and the backlog now after 15 s tick intervals that saw these arrivals per
    second (none waiting, each completed at once), the last of them ending now."""
    history, done = [], 1000.0
    for k, rate in enumerate(rates_per_tick):
        history.append(TickRecord(NOW - 15 * (len(rates_per_tick) - k), 0, workers, workers, wanted=workers, done=done,
                                  busy=done * SERVICE, for_rate=1))
        done += rate * 15
    return history, FleetBacklog(ready=0, in_flight=0, done_total=done, busy_seconds_total=done * SERVICE)


def test_a_ramp_is_a_trend_and_a_step_or_a_flat_rate_is_not() -> None:
    rising = work_rates(*counted([2.0 + 0.1 * k for k in range(24)]), NOW)
    assert rising.trend * 60 == pytest.approx(0.4), "0.1/s more every 15 s: 0.4/s a minute"
    assert rising.trend > 2 * rising.trend_error > 0
    assert rising.trend_span == pytest.approx(300.0), "fit over TREND_WINDOW"
    stepped = work_rates(*counted([2.0] * 12 + [6.0] * 12), NOW)
    assert stepped.trend == pytest.approx(0.0, abs=1e-9), "fit only since the step: a step is not a slope"
    assert stepped.trend_span == pytest.approx(180.0)
    flat = work_rates(*counted([3.0] * 24), NOW)
    assert flat.trend == pytest.approx(0.0, abs=1e-9)


def poisson_runs(rate: float, per_minute: float, draws: int, seed: str, cluster: int = 1) -> int:
    """How many of ``draws`` 10-minute runs of Poisson arrivals (``rate`` at the end of
    the trend's window, rising ``per_minute``; in clusters of ``cluster`` messages) read a
    rise beyond 2 standard errors."""
    rng, risen = random.Random(seed), 0
    for _ in range(draws):
        points, done = [], 0
        for k in range(41):
            points.append(_Point(15.0 * k, done, 0.0, 0))
            mean = 15.0 * max(0.0, rate + per_minute / 60.0 * (15.0 * k + 7.5 - 600.0)) / cluster
            done += cluster * poisson(rng, mean)
        pairs = list(zip(points, points[1:]))
        slope, error, _ = _trend(pairs, _arrivals(pairs), 600.0)
        risen += slope - 2.0 * error > 0
    return risen


def test_a_steady_load_seldom_reads_as_rising_even_in_clusters_and_a_real_ramp_does() -> None:
    """2 standard errors one-sided: few steady runs read a rise (3 of 300 at 8/s;
    each holds a fleet for a tick); at 17/s the ramp trace's slope (17.5/s over 45
    minutes) is read 190 times in 300, twice that slope 295 times. Arrivals in clusters
    of 10 (a producer sending ten at a time) vary more than Poisson counts: 15 and 7 of
    300 at 8/s and 2/s with the residuals' dispersion in the slope's error, 44 and 29
    with Poisson's alone."""
    assert poisson_runs(8.0, 0.0, 300, "steady") < 15
    assert poisson_runs(17.0, 17.5 / 45.0, 300, "ramp") > 170
    assert poisson_runs(17.0, 35.0 / 45.0, 300, "steep") > 270
    assert poisson_runs(8.0, 0.0, 300, "clustered", cluster=10) < 25
    assert poisson_runs(2.0, 0.0, 300, "clustered2", cluster=10) < 25


def units(n: int) -> list[WorkerUnit]:
    return [WorkerUnit(k + 1, "active", "running", pid=100 + k, since=NOW - 3600) for k in range(n)]


def test_a_fleet_grown_by_a_drain_is_not_shrunk_under_a_rising_load_nor_grown_by_the_rise() -> None:
    """12 instances after draining a backlog; the rate the window counts needs 9. Rising
    at 0.78/s a minute, a shrink stops at the fleet for the rate the slope reaches
    SCALE_DOWN_STABILIZATION from now (11 at the default 120 s, 12 at 300 s; 0 keeps
    nothing); at the same rate, flat, it goes down to the noise floor's 10. A fleet below
    the rise's need is not grown for it: the rule only stops a shrink."""
    def sized(workers: int, rates: list[float], window: int = 120) -> tuple[int, str]:
        s = parse({"MIN_PROCESSES": "1", "MAX_PROCESSES": "20", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15",
                   "SCALE_DOWN_STABILIZATION": str(window)})
        history, now = counted(rates, workers=workers)
        d = decide(now, units(workers), s, history, NOW)
        assert d.record(NOW, now).for_rate == 9
        return d.target, d.reason

    ramp_rates = [14.0 + 0.78 / 4.0 * k for k in range(24)]
    target, reason = sized(12, ramp_rates)
    assert target == 11 and "arrivals rising 0.78/s a minute over 300s" in reason and "180s on needs 11" in reason, reason
    assert sized(12, ramp_rates, window=300)[0] == 12
    assert "rising" not in sized(12, ramp_rates, window=0)[1]
    target, reason = sized(12, [sum(ramp_rates[-8:]) / 8] * 24)
    assert target == 10 and "rising" not in reason, reason
    target, reason = sized(6, ramp_rates)
    assert target == 9 and "rising" not in reason, reason  # the rate's 9, not the rise's 11


def test_where_the_fleet_reacts_to_the_messages_present_a_rise_holds_no_more_than_the_reacting_fleet() -> None:
    """60 s tasks rising from 0.1 to 0.4/s, 20 in flight on 6 instances: the fleet reacts to
    the messages present (a growth consumes within the goal), so it goes to the reacting
    fleet's 3, as the noise floor does; the rise's static fleet (5) would have held 5."""
    s = parse({"MIN_PROCESSES": "1", "MAX_PROCESSES": "20", "WORKER_THREADS": "8", "CHECK_INTERVAL": "15"})
    history, done = [], 1000.0
    rates = [0.10 + 0.25 / 20 * k for k in range(24)]
    for k, rate in enumerate(rates):
        history.append(TickRecord(NOW - 15 * (len(rates) - k), 20, 6, 6, wanted=6, done=done, busy=done * 60.0, for_rate=1))
        done += rate * 15
    now = FleetBacklog(ready=0, in_flight=20, done_total=done, busy_seconds_total=done * 60.0)
    d = decide(now, units(6), s, history, NOW)
    assert d.target == 3 and "reacting (20 present" in d.reason, d.reason
    assert d.figures is not None and d.figures["needs"]["rising"] == 5, d.figures  # what the rise alone would keep


def test_a_steep_ramp_keeps_the_calm_target_without_flapping() -> None:
    """0.5 to 18/s in 15 minutes (MAX 10, 8 threads, 4 s tasks) through the simulator with
    the real policy, seeds 1-3: 34.0 actions/h and 1 / 1 / 3 flaps; 48.0 actions/h and
    7 / 2 / 4 flaps without the rule."""
    r = runs(ramp(0.5, 18.0, rise=900.0, duration=1200.0))
    check = calm("steep-ramp", r)
    assert check.passed, check
    assert sum(x.flaps for x in r["dramactl"]) <= 6, [x.flaps for x in r["dramactl"]]


def test_a_falling_load_is_followed_at_the_rate_now_and_a_flat_one_keeps_its_noise_floor() -> None:
    """The mirror of the rising floor (:func:`dramactl.calm.load_high_now`): the rate is a
    count over 120 s, the rate of a minute ago. Falling 0.8/s a minute (beyond its noise),
    the rate now is below the count's 8/s by at least the least fall the slope's error
    allows, over that minute: the shrink stops at the fleet for that load two standard
    errors up, here the estimate's own (17, never lower), where a flat 8/s stops at 18;
    the tick line says so. A step is no slope: its noise floor is the count's."""
    settings = parse({"MAX_PROCESSES": "30", "WORKER_THREADS": "2"})
    units = [WorkerUnit(n, "active", "running") for n in range(1, 21)]
    falling = counted([8.0 + 0.2 * 19.5 - 0.2 * k for k in range(24)], workers=20)
    flat = counted([8.0] * 24, workers=20)
    assert work_rates(*falling, NOW).arrival == pytest.approx(work_rates(*flat, NOW).arrival)
    followed = decide(falling[1], units, settings, falling[0], NOW)
    assert followed.target == 17 and "arrivals falling at least" in followed.reason and "needs 17, not 18" in followed.reason, followed.reason
    held = decide(flat[1], units, settings, flat[0], NOW)
    assert held.target == 18 and "2 sigma up" in held.reason, held.reason
    stepped = work_rates(*counted([6.0] * 12 + [2.0] * 12), NOW)
    assert load_high_now(stepped, 2.0) == (stepped.load_high(2.0), "")


def test_a_step_down_the_step_test_missed_reads_as_a_fall_but_never_below_the_estimate() -> None:
    """8/s then 6/s, a step of a quarter, which the step test (at 1 in 10000) does not cut:
    the trend, fit over 300 s, reads it as a slope for a while, where the rate window after
    the step is already flat. The bound taken at the rate now would fall below the load's
    own estimate (23.3 busy threads under 24.0: a "2 sigma up" fleet smaller than the
    estimate's); it stops there, so the fleet goes to the estimate's need (13), not below."""
    settings = parse({"MAX_PROCESSES": "30", "WORKER_THREADS": "2"})
    units = [WorkerUnit(n, "active", "running") for n in range(1, 21)]
    history, backlog = counted([8.0] * 14 + [6.0] * 10, workers=20)
    rates = work_rates(history, backlog, NOW)
    assert rates.arrival == pytest.approx(6.0) and rates.trend < 0
    assert load_high_now(rates, 2.0)[0] >= rates.load
    decision = decide(backlog, units, settings, history, NOW)
    assert decision.target == decision.for_rate == 13, decision.reason
