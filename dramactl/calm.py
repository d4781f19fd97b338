"""Four calm rules of the work-based policy (pure): act on evidence beyond the noise,
keep what cost a start-up until it has paid for it, keep a fleet for backlogs that
keep coming back, and do not shrink under a load that is measurably rising to it.

* :func:`rate_growth`: growth for the measured arrivals alone, while nothing waits,
  needs the evidence a shrink needs. The policy shrinks no lower than the fleet for the
  load two standard errors *up* (:meth:`dramactl.rates.WorkRates.load_high`); if it grew
  at every estimate above the fleet's, it would ratchet up on the estimate's own noise
  (each high reading grows it at once, the low ones cannot shrink it) and settle a
  standard error or two above the load. So growth for the rate, with no message
  waiting anywhere, needs the load two standard errors *down* to need more than the
  fleet has. The noise is the estimate's: wide where the rate rests on few arrivals and
  the mean service time on few completions (long tasks at low rates), negligible at
  high rates. A real shortfall shows as waiting messages (ready in Redis, or prefetched
  beyond the threads), and then the fleet grows for the estimate and the drain at once.
* :func:`starting_hold`: no shrink while an instance is starting, nor within the
  start-up of the last growth (rent-or-buy).
* :func:`returning_backlog`: a backlog is drained and its fleet released at once, as a
  measured fact rather than noise; but a backlog that comes back within
  SCALE_DOWN_STABILIZATION is a need that did not stay low for the window, and
  releasing its fleet after each one makes two actions a backlog (a job every minute:
  120 an hour). Once two backlogs came within the window, the fleet is kept at the
  highest need among them.
* :func:`rising_floor`: on a rising load the arrival rate, a count over a window, is
  the rate of the window's middle, and the arrivals are ahead of it: the fleet sized for
  it falls behind, a backlog builds, its drain grows the fleet past the rate's need,
  and a shrink back to that need is undone by the next backlog (steep ramps: 10 such
  flaps an hour where HPA had 0 to 0.3). When the rate rises beyond its noise (its slope
  :data:`~dramactl.policy.NOISE_SIGMAS` standard errors above 0), a shrink stops at the
  fleet for the rate the slope reaches SCALE_DOWN_STABILIZATION from now (a need back
  within the window did not stay low), no further ahead than the span the slope was fit
  over. It never starts anything, and a rate that stops rising lets the fleet go.
  Its mirror, :func:`load_high_now`: when the rate falls beyond its noise, the load two
  standard errors up that a shrink stops at is taken at the rate now, which the least fall
  the slope's error allows puts below the count's (the rate of half a span ago), and never
  below the load's estimate, so the fleet follows a measured decline instead of lagging it
  by half a window.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .rates import WorkRates
from .state import TickRecord


def rate_growth(
    for_rate: int, current: int, nothing_waits: bool, rates: WorkRates, sigmas: float, fleet: Callable[[float], int],
) -> tuple[int, str]:
    """(workers to grow to for the arrivals, a note for the tick line): ``for_rate``
    (the fleet for the load's estimate), or ``current`` when nothing waits and the load
    ``sigmas`` standard errors down needs no more than ``current`` (``fleet``: workers
    for a load in busy threads)."""
    if for_rate <= current or not nothing_waits:
        return for_rate, ""
    low = rates.load_low(sigmas)
    if low is None:
        return for_rate, ""
    need = fleet(low)
    if need > current:
        return for_rate, ""
    return current, f" (nothing waits, and {sigmas:g} sigma down, {low:.1f} busy threads, needs {need}: within the estimate's noise)"


def starting_hold(history: Sequence[TickRecord], now: float, starting: int, startup: float) -> str | None:
    """Why not to shrink now, or None: an instance is still starting, or the last growth
    is younger than the start-up. An instance stopped before it has run as long as it
    took to start paid its start-up for nothing; and the growth was decided on evidence
    no newer than a start-up ago, so undoing it sooner acts on the same evidence twice
    (the rent-or-buy rule: keep what cost a start-up at least as long as the start-up)."""
    if starting:
        return f"{starting} still starting"
    # Ticks before now only, as every window reads them: after the clock stepped back, a growth
    # recorded "in the future" would hold every shrink until the clock caught up with it.
    grown = max((r.at for r in history if r.target > r.workers and r.at < now), default=None)
    if grown is not None and now - grown < startup:
        return f"started {now - grown:.0f}s ago, start-up {startup:.0f}s"
    return None


def returning_backlog(history: Sequence[TickRecord], now: float, window: float, guard_age: float) -> tuple[int, int] | None:
    """(backlogs, the highest fleet one needed) in the ``window`` seconds before ``now``
    (SCALE_DOWN_STABILIZATION) when at least two came in that time, else None: a single
    backlog is released as soon as it is drained. A backlog is a run of ticks whose need (``wanted``) exceeded the
    arrivals' fleet (``for_rate``), counted once at its peak, ended by a tick that needed no
    more. The highest, as HPA keeps its highest recommendation over its window: backlogs
    that keep coming back on a rising load need more each time, and keeping less than the
    last one needed releases part of the fleet after every backlog.

    Two kinds of tick count for nothing, neither ending a run nor adding to one: ticks with
    no ``for_rate`` (sized by count, paused, a manual size), and ticks whose oldest ready
    message waited past ``guard_age`` (MAX_QUEUE_WAIT: the latency guard fired). The guard's
    need is the fleet up plus a step, not a need of the messages: one old message (a retry,
    a delayed message come due) every few minutes would otherwise raise the kept fleet by a
    step each time, up to MAX."""
    peaks: list[int] = []
    run: int | None = None
    for r in history:
        if r.at < now - window or r.at >= now or r.for_rate is None or r.wanted is None:
            continue
        if r.oldest_age is not None and r.oldest_age > guard_age:
            continue
        if r.wanted > r.for_rate:
            run = r.wanted if run is None else max(run, r.wanted)
        elif run is not None:
            peaks.append(run)
            run = None
    if run is not None:
        peaks.append(run)
    return (len(peaks), max(peaks)) if len(peaks) >= 2 else None


def rising_floor(rates: WorkRates, sigmas: float, window: float, fleet: Callable[[float], int]) -> tuple[int, str] | None:
    """(the fleet, a note for the tick line) for the arrival rate a measured rise reaches
    ``window`` seconds from now (SCALE_DOWN_STABILIZATION: a need back within it did not
    stay low), but no further ahead than the span the slope was fit over
    (``rates.trend_span``: a line is not extended beyond it); None when the rate does not
    rise beyond ``sigmas`` standard errors of its slope (:attr:`WorkRates.trend`) or the
    window is 0. The rate is a count over ``rates.span`` seconds, so it is the rate of
    half a span ago, and the rise is followed from there (``fleet``: workers for a load
    in busy threads)."""
    if rates.arrival is None or rates.trend_span <= 0 or window <= 0 or rates.trend - sigmas * rates.trend_error <= 0:
        return None
    ahead = rates.span / 2.0 + min(window, rates.trend_span)
    reached = rates.arrival + rates.trend * ahead
    need = fleet(reached * rates.service)
    return need, (f"arrivals rising {rates.trend * 60.0:.2f}/s a minute over {rates.trend_span:.0f}s "
                  f"({sigmas:g} sigma: {sigmas * rates.trend_error * 60.0:.2f}), {reached:.2f}/s {ahead:.0f}s on needs {need}")


def load_high_now(rates: WorkRates, sigmas: float) -> tuple[float | None, str]:
    """(the load ``sigmas`` standard errors up that a shrink stops at, a note for the tick
    line): :meth:`WorkRates.load_high`, whose rate is a count over ``rates.span`` seconds
    and so the rate of half a span ago. When the rate falls beyond its noise (its slope
    ``sigmas`` standard errors below 0, the mirror of :func:`rising_floor`'s rise), the rate
    now is lower: by the least fall the slope's error allows at ``sigmas`` (the slope plus
    ``sigmas`` of its errors), over half the span (no further back than the slope was fit
    over); the bound is taken there, with the same relative error, and never below the
    load's estimate (a step the step test missed reads as a slope for a while, and a
    floor under the estimate would be no noise floor). A dip within the noise changes
    nothing; None before a rate exists."""
    high = rates.load_high(sigmas)
    least = rates.trend + sigmas * rates.trend_error
    if high is None or not rates.arrival or rates.load is None or rates.trend_span <= 0 or least >= 0:
        return high, ""
    now = max(0.0, rates.arrival + least * min(rates.span / 2.0, rates.trend_span))
    lowered = max(rates.load, high * now / rates.arrival)
    if lowered >= high:
        return high, ""
    return lowered, f"arrivals falling at least {-least * 60.0:.2f}/s a minute over {rates.trend_span:.0f}s, {now:.2f}/s now: "
