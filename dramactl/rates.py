"""Arrival rate and mean service time, measured from the work counters across ticks (pure).

The worker hook keeps two cumulative counters per queue (``done``: messages completed,
``busy``: seconds spent on them); every tick saves their fleet totals with its
backlog in a :class:`~dramactl.state.TickRecord`. Between two ticks:

* completions = Δdone, and arrivals = Δdone + Δbacklog (what came in either was
  completed or is still there), so the interval's arrival rate is
  (Δdone + Δbacklog) / Δt;
* the mean service time is Δbusy / Δdone.

Smoothing: the arrival rate is the *count* of arrivals over :data:`RATE_WINDOW`, or
further back until the count holds :data:`MIN_ARRIVALS` (in batches of D: D times as
many; at low rates most tick intervals see no arrival at all: a median of per-interval
rates reads 0 there while messages keep coming), less the excess of the intervals in
which a block landed (a block of messages landing at once is a backlog to drain, not a
rate to staff for; a block lands within one interval, so an excess in two intervals in
a row is a rate that rose, and counted; blocks of about one size that come more often
than the window are batches, and counted: :func:`_surge_marks`), over the intervals'
span; the service time is the ratio of sums over
:data:`SERVICE_WINDOW`, or further back until the sums hold :data:`SERVICE_COMPLETIONS`
(the mean of a few long tasks is mostly their luck, and the service time is the app's,
changing with a deploy rather than with the traffic), else the counters' whole lifetime
(busy / done). A counter that
went backwards (the key was deleted, Redis restarted) ends the intervals before it.
The rate's standard error is that of a Poisson count over the intervals' span, times
sqrt(D) for messages that come in batches (:meth:`WorkRates.arrival_high`,
:func:`_dispersion`): how far a measured dip may be noise.

Trend: the same intervals' counts over :data:`TREND_WINDOW`, back to the rate's last
step, fit a line by weighted least squares (:func:`_trend`): how fast the arrival rate
rises or falls, with its standard error (Poisson's, widened by the counts' own
dispersion, at least D, when arrivals come in clusters). A count over a window is the rate at
the window's middle; on a rising load the arrivals are already ahead of it.

Blocks: :func:`surges` finds the intervals in which far more arrived than the rate
before them explains (a block landed, whether or not the fleet absorbed it before a
tick saw it), batches aside; the policy looks for blocks that recur at a regular period.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from .instance import WorkerUnit
from .state import TickRecord, window_edge
from .stats import FleetBacklog


def median(values: Sequence[float]) -> float:
    """The median (the statistics module costs the tick ~2.5 ms of imports for this alone)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0

RATE_WINDOW = 120.0  # seconds of intervals whose arrivals are counted for the rate ...
LONG_RATE_WINDOW = 900.0  # ... or further back, up to this, until they hold MIN_ARRIVALS
MIN_ARRIVALS = 25.0  # arrivals the rate rests on when they can be had: 20 % standard error
SERVICE_WINDOW = 600.0  # seconds of completions whose mean is the service time
SERVICE_COMPLETIONS = 100.0  # ... or further back until they hold this many: 10 % standard error at cv 1
MIN_COMPLETIONS = 3  # fewer completions than this in the window: use the lifetime mean


@dataclass(frozen=True)
class WorkRates:
    """``arrival`` messages/s (None before two ticks with counters), ``service`` mean
    seconds per message, ``intervals`` how many tick intervals the rate rests on,
    ``span`` the seconds those intervals cover."""

    arrival: float | None
    service: float
    intervals: int = 0
    span: float = 0.0
    service_cv2: float = 1.0  # squared coefficient of variation of service times (batch means; 1 until measured)
    completions: float = 0.0  # messages the mean service time rests on
    trend: float = 0.0  # the arrival rate's slope, messages/s per second (:func:`_trend`); 0 until measured
    trend_error: float = 0.0  # its standard error
    trend_span: float = 0.0  # the seconds of intervals it was fit over
    dispersion: float = 1.0  # the arrival counts' variance over Poisson's: messages that come in batches (:func:`_dispersion`)

    def arrival_high(self, sigmas: float) -> float | None:
        """The arrival rate ``sigmas`` standard errors up: counts in ``span`` seconds are
        about Poisson, so the rate's error is sqrt(arrival / span) (at least one message
        per span), times sqrt(``dispersion``) for batches; None before a rate exists."""
        if self.arrival is None:
            return None
        if self.span <= 0:
            return self.arrival
        return self.arrival + sigmas * math.sqrt(self.dispersion * max(self.arrival, 1.0 / self.span) / self.span)

    def load_high(self, sigmas: float) -> float | None:
        """The offered load ``sigmas`` standard errors up: the arrival rate's relative error
        and the mean service time's (cv / sqrt(completions)) add in quadrature."""
        high = self.arrival_high(sigmas)
        if high is None or self.arrival is None:
            return None
        if self.arrival <= 0:
            return high * self.service
        return self.arrival * self.service * (1.0 + sigmas * self._load_error())

    def load_low(self, sigmas: float) -> float | None:
        """The offered load ``sigmas`` standard errors down (at least 0), the other side of
        :meth:`load_high`; None before a rate exists."""
        if self.arrival is None:
            return None
        return max(0.0, self.arrival * self.service * (1.0 - sigmas * self._load_error()))

    def _load_error(self) -> float:
        """The load's relative standard error: the rate's (a Poisson count over ``span``, at
        least one message, times sqrt(``dispersion``) for batches) and the mean service
        time's, in quadrature."""
        if self.arrival is None or self.arrival <= 0:
            return 0.0
        rate_error = math.sqrt(self.dispersion * max(self.arrival, 1.0 / self.span) / self.span) / self.arrival if self.span > 0 else 0.0
        service_error = math.sqrt(self.service_cv2 / self.completions) if self.completions > 0 else 0.0
        return math.hypot(rate_error, service_error)

    @property
    def load(self) -> float | None:
        """Offered load in busy threads (Little's law: λ x E[S]); None before a rate exists."""
        return None if self.arrival is None else self.arrival * self.service


@dataclass(frozen=True)
class _Point:
    at: float
    done: float
    busy: float
    backlog: int


def work_rates(history: Sequence[TickRecord], backlog: FleetBacklog, now: float, *, max_gap: float = float("inf")) -> WorkRates | None:
    """The rates as of ``now``; None when the counters say nothing yet (no worker with
    the hook has completed a message): the caller then sizes by counts.

    ``max_gap``: intervals longer than this (a stopped timer, a reboot) are not used.
    """
    if backlog.done_total is None or backlog.busy_seconds_total is None:
        return None
    points = [_Point(r.at, r.done, r.busy, r.backlog) for r in history if r.done is not None and r.busy is not None and r.at < now]
    points.append(_Point(now, backlog.done_total, backlog.busy_seconds_total, backlog.backlog))
    # Only the run of points since the counters last went backwards.
    start = 0
    for i in range(1, len(points)):
        if points[i].done < points[i - 1].done or points[i].busy < points[i - 1].busy - 1e-6:
            start = i
    points = points[start:]
    pairs = [(a, b) for a, b in zip(points, points[1:]) if 0 < b.at - a.at <= max_gap]

    counts = _counts(pairs)
    marks = _surge_marks(pairs, counts)
    arrivals = _arrivals(pairs, counts, marks)
    dispersion = _dispersion(pairs, counts, marks, now)
    arrival, intervals, span = _arrival_rate(pairs, arrivals, now, dispersion)
    trend = _trend(pairs, arrivals, now, dispersion)

    recent = _service_batches(pairs, now)
    done = sum(d for d, _ in recent)
    if done >= MIN_COMPLETIONS:
        service = sum(s for _, s in recent) / done
    elif backlog.done_total > 0:
        service = backlog.busy_seconds_total / backlog.done_total  # the counters' lifetime
    else:
        return None
    if not math.isfinite(service) or (arrival is not None and not math.isfinite(arrival)):
        return None  # counters finite but so large that their rates overflow (damaged): size by count
    return WorkRates(arrival, max(service, 0.0), intervals, span, _service_cv2(recent, service), done if done >= MIN_COMPLETIONS else 0.0, *trend,
                     dispersion=dispersion)


def _service_batches(pairs: Sequence[tuple[_Point, _Point]], now: float) -> list[tuple[float, float]]:
    """(completions, busy seconds) per interval, newest first, over :data:`SERVICE_WINDOW`
    or further back (the whole history) until they hold :data:`SERVICE_COMPLETIONS`."""
    out: list[tuple[float, float]] = []
    done = 0.0
    for a, b in reversed(pairs):
        if b.at <= now - SERVICE_WINDOW and done >= SERVICE_COMPLETIONS:
            break
        out.append((b.done - a.done, b.busy - a.busy))
        done += b.done - a.done
    return out


MIN_BATCHES = 8  # tick intervals with completions before the service times' variance is estimated


def _service_cv2(batches: Sequence[tuple[float, float]], mean: float) -> float:
    """Squared coefficient of variation of the service times, by batch means: the
    interval k's mean m_k = busy_k / done_k has variance sigma^2 / done_k, so
    sum done_k (m_k - mean)^2 / (intervals - 1) estimates sigma^2. The counters hold
    sums only; this is how far apart single messages are without any more of them.
    1 (exponential, what Erlang C assumes) until :data:`MIN_BATCHES` intervals, and when
    damaged counters (finite, but absurd) put it out of a float's range."""
    used = [(d, b) for d, b in batches if d >= 1]
    if len(used) < MIN_BATCHES or not mean * mean > 0.0:
        return 1.0
    # x * x, not x ** 2: counters damaged into huge finite values give inf, not OverflowError.
    variance = sum(d * ((b / d - mean) * (b / d - mean)) for d, b in used) / (len(used) - 1)
    ratio = variance / (mean * mean)
    return ratio if math.isfinite(ratio) else 1.0


def _counts(pairs: Sequence[tuple[_Point, _Point]]) -> list[float]:
    """Per interval, what came in: it was either completed or is still there (Δdone + Δbacklog)."""
    return [max(0.0, b.done - a.done + b.backlog - a.backlog) for a, b in pairs]


def _arrivals(pairs: Sequence[tuple[_Point, _Point]], counts: Sequence[float] | None = None,
              marks: Sequence[tuple[float, str]] | None = None) -> list[tuple[float, float]]:
    """Per interval: (arrivals less what a block brought, seconds) (:func:`_surge_marks`)."""
    counts = _counts(pairs) if counts is None else counts
    marks = _surge_marks(pairs, counts) if marks is None else marks
    return [(c - (e if kind == BLOCK else 0.0), b.at - a.at) for c, (e, kind), (a, b) in zip(counts, marks, pairs)]


def _arrival_rate(pairs: Sequence[tuple[_Point, _Point]], arrivals: Sequence[tuple[float, float]], now: float,
                  dispersion: float = 1.0) -> tuple[float | None, int, float]:
    """(rate, intervals, span): ``arrivals`` (per interval of ``pairs``: its count less
    what a block brought (:func:`_surge_marks`), and its seconds) counted over the intervals
    of the last :data:`RATE_WINDOW`, reaching further back (up to
    :data:`LONG_RATE_WINDOW`) until they hold :data:`MIN_ARRIVALS` (``dispersion`` times
    as many for batches: as many batches), per second of the intervals' span. A count over a window is never 0 while messages
    arrive, and its Poisson standard error sqrt(n) / span is known
    (:meth:`WorkRates.arrival_high`); a median over short intervals is 0 whenever
    fewer than one arrival per interval is the rule.

    An interval is in a window when most of it is (its middle): a host's ticks, a little
    more than an interval apart, and the simulator's, exactly one, give the same
    intervals. By their ends, the simulator's edge fell on one and kept it (135 s)."""
    if not pairs:
        return None, 0, 0.0
    stopped = _stopped(pairs, arrivals, now, dispersion)
    if stopped is not None:
        return 0.0, stopped[0], stopped[1]
    arrived, span, used = 0.0, 0.0, 0
    recent: tuple[float, float] | None = None  # (arrivals, span) of the RATE_WINDOW, once reaching further back
    for k in range(len(pairs) - 1, -1, -1):
        middle = (pairs[k][0].at + pairs[k][1].at) / 2.0
        if middle <= now - LONG_RATE_WINDOW and (used or pairs[k][1].at < now):
            break  # (the interval that ends now always counts: at CHECK_INTERVAL >= 1800 its middle is that far back)
        came, took = arrivals[k]
        if span > 0 and _changed((arrived, span), (came, took), STEP_P, dispersion):
            break  # the intervals so far and this one before them: not one rate (it stopped, or jumped)
        if middle <= now - RATE_WINDOW:
            if arrived >= MIN_ARRIVALS * dispersion:
                break
            recent = recent or (arrived, span)
            if _changed(recent, (arrived - recent[0] + came, span - recent[1] + took), CHANGE_P, dispersion):
                break  # what came before does not explain the window's count: the rate changed in between
        arrived += came
        span += took
        used += 1
    return (max(0.0, arrived) / span if span > 0 else None), used, span


def _stopped(pairs: Sequence[tuple[_Point, _Point]], arrivals: Sequence[tuple[float, float]], now: float,
             dispersion: float = 1.0) -> tuple[int, float] | None:
    """(intervals, seconds) of the silence that ends ``now``, when the arrivals stopped:
    none in any interval of the last :data:`RATE_WINDOW`, nor since, for longer than the
    arrivals before it (``arrivals``: less what blocks brought) explain
    (:data:`CHANGE_P`); None while arrivals go on, or when the silence is within chance.

    The window ending now cannot see this where arrivals are few (batches, low rates):
    it holds fewer of them the longer the silence, and a fleet staffed for the old rate
    stepped down a tick at a time as the window slid past them, for up to
    LONG_RATE_WINDOW. Given n arrivals in the LONG_RATE_WINDOW before the silence
    (``o`` seconds of intervals) and none in the ``s`` since, one rate over both puts
    all n before the silence with probability (o / (o + s)) ** n, the conditional test
    of :func:`_changed`. Each choice below was forced by a run that broke:

    * n is counted in batches, arrivals over D (:func:`_dispersion`), and is no more
      than the intervals that saw any, since a batch lands within one: D reads 1 for
      batches of two or three (never told from a rate) and low for a while after
      batches that land close together, and counted one by one, the usual gap between
      them read as a stop.
    * The reference is the whole LONG_RATE_WINDOW, not the rate's window: the change
      tests cut that to a recent stretch busier than what came before it, and a
      cluster of batches at Poisson times, then the usual gap, read as a stop.
    * Only a silence that covers RATE_WINDOW: a shorter one is the step test's
      (:func:`_arrival_rate`). This test runs at every tick, and at 1 s ticks an
      empty second among seven arrivals a second comes by chance.
    * Any arrival ends a silence, a block's too: the batch that follows a long gap in a
      stream of them surges over the median of 0 before it and reads as a block until
      more come.
    """
    begins, quiet = len(pairs), 0.0
    while begins > 0 and _counts(pairs[begins - 1 : begins])[0] < 0.5:  # none at all: a block landing ends it too
        begins -= 1
        quiet += arrivals[begins][1]
    if begins == len(pairs) or begins == 0 or quiet <= 0:
        return None
    last = pairs[begins - 1]
    if (last[0].at + last[1].at) / 2.0 > now - RATE_WINDOW:
        return None  # the last interval that saw arrivals is in the window (its middle, as for the rate)
    arrived = over = 0.0
    seen = 0  # intervals that saw arrivals: a batch lands in one, so no more independent arrivals than these
    for k in range(begins - 1, -1, -1):
        a, b = pairs[k]
        if (a.at + b.at) / 2.0 <= last[1].at - LONG_RATE_WINDOW:
            break
        arrived += arrivals[k][0]
        over += arrivals[k][1]
        seen += arrivals[k][0] >= 0.5
    if not math.isfinite(arrived) or arrived <= 0 or not seen:
        return None
    if not _changed((0.0, quiet), (arrived, over), CHANGE_P, max(dispersion, arrived / seen)):
        return None
    return len(pairs) - begins, quiet


TREND_WINDOW = 300.0  # seconds of intervals a trend is fit over: 20 ticks at 15 s (a slope's error falls as span^-1.5)
MIN_TREND_INTERVALS = 4  # fewer intervals since the rate's last step: no trend


def _trend(pairs: Sequence[tuple[_Point, _Point]], arrivals: Sequence[tuple[float, float]], now: float,
           dispersion: float = 1.0) -> tuple[float, float, float]:
    """(slope, its standard error, span): the arrival rate's change per second, a line
    fit by weighted least squares to ``arrivals`` per interval over the last
    :data:`TREND_WINDOW`, back to the rate's last step (:data:`STEP_P`, as
    :func:`_arrival_rate`: a step is not a slope, and a line through one would read it as
    a rise for the whole window); (0, 0, 0) on fewer than :data:`MIN_TREND_INTERVALS`, or
    when counters damaged into huge finite values put it out of a float's range.

    Interval k (``d_k`` seconds around ``x_k``, ``c_k`` arrivals) has the rate
    c_k / d_k with variance rate / d_k (Poisson), so weights d_k: slope =
    sum (x_k - x̄) (c_k - d_k r) / Sxx, Sxx = sum d_k (x_k - x̄)^2, its variance r / Sxx,
    r the intervals' mean rate, times the counts' dispersion beyond Poisson's (the
    residuals' Pearson chi-square over intervals - 2, at least ``dispersion``: batches)."""
    rows: list[tuple[float, float, float]] = []  # (middle, seconds, arrivals)
    arrived = span = 0.0
    for k in range(len(pairs) - 1, -1, -1):
        a, b = pairs[k]
        if (a.at + b.at) / 2.0 <= now - TREND_WINDOW:
            break  # an interval is in a window when most of it is, as for the rate
        came, took = arrivals[k]
        if span > 0 and _changed((arrived, span), (came, took), STEP_P, dispersion):
            break
        rows.append(((a.at + b.at) / 2.0, took, came))
        arrived += came
        span += took
    if len(rows) < MIN_TREND_INTERVALS or span <= 0:
        return 0.0, 0.0, 0.0
    middle = sum(x * d for x, d, _ in rows) / span
    rate = max(0.0, arrived) / span
    sxx = sum(d * (x - middle) ** 2 for x, d, _ in rows)
    if sxx <= 0:
        return 0.0, 0.0, 0.0
    slope = sum((x - middle) * (c - d * rate) for x, d, c in rows) / sxx
    # Arrivals in clusters (a producer sending ten at a time) vary more than Poisson counts:
    # the residuals' Pearson chi-square per degree of freedom scales the variance (quasi-
    # Poisson), never below Poisson's.
    fitted = [(c, max(d * (rate + slope * (x - middle)), d / span)) for x, d, c in rows]
    spread = max(dispersion, sum((c - f) * (c - f) / f for c, f in fitted) / (len(rows) - 2))
    trend = (slope, math.sqrt(spread * max(rate, 1.0 / span) / sxx), span)
    return trend if all(math.isfinite(x) for x in trend) else (0.0, 0.0, 0.0)  # damaged counters: no trend


CHANGE_P = 0.001  # counts this improbable under one rate for both spans: the rate changed between them
STEP_P = 0.0001  # the same, for one interval against those after it (tested at every step: stricter)


def _changed(recent: tuple[float, float], older: tuple[float, float], p: float = CHANGE_P, dispersion: float = 1.0) -> bool:
    """Whether (arrivals, seconds) ``recent`` and ``older`` are improbable under one
    Poisson rate: given their sum, the recent count is binomial with the recent span's
    share (the conditional test for two Poisson rates), and either tail below ``p``
    says the rate changed. Messages that come in batches (``dispersion`` D) count as D
    times fewer independent arrivals (a quasi-Poisson count). The window reaching further back for precision must not
    reach across that: arrivals that stopped would read as the old rate for up to
    LONG_RATE_WINDOW, and a low rate that rose as a mix of the two."""
    n, total = max(0, round(recent[0] / dispersion)), max(0, round((recent[0] + older[0]) / dispersion))
    if recent[1] <= 0 or older[1] <= 0 or total == 0:
        return False
    share = recent[1] / (recent[1] + older[1])
    n = min(n, total)
    if share > 0.5:
        # The same two-sided test on the older count (Binomial(total, 1 - share)): the terms below
        # start at (1 - share) ** total, which underflowed to 0 for a long recent span against one
        # interval (20 of them at 1.6/s: (1/21) ** 504), and every term after it stayed 0, so steady
        # arrivals read as a change. From the likelier end the first term is at least e ** -70.
        n, share = total - n, 1.0 - share
    if min(share, 1.0 - share) ** total >= p:
        return False  # too few arrivals: not even all of them on one side would be improbable
    variance = total * share * (1.0 - share)
    if variance >= 25.0:  # many arrivals: the normal approximation, with continuity correction (a tick stays cheap)
        deviation = (abs(n - total * share) - 0.5) / math.sqrt(variance)
        return deviation > 0 and 0.5 * math.erfc(deviation / math.sqrt(2.0)) < p

    def at_most(k: int) -> float:  # P(X <= k), X ~ Binomial(total, share), term by term
        if k >= total:
            return 1.0
        term = cdf = (1.0 - share) ** total
        odds = share / (1.0 - share)
        for i in range(k):
            term *= (total - i) / (i + 1) * odds
            cdf += term
        return cdf

    return at_most(n) < p or (n > 0 and 1.0 - at_most(n - 1) < p)


BLOCK, RISE, BATCH = "block", "rise", "batch"


def _surge_marks(pairs: Sequence[tuple[_Point, _Point]], counts: Sequence[float]) -> list[tuple[float, str]]:
    """Per interval, (arrivals beyond the median rate of the :data:`RATE_WINDOW` before it,
    what they are) when more arrived than that rate explains by over :data:`SURGE_SIGMAS`
    Poisson standard deviations (a surge; with no interval before: beyond its own
    completions), else (0, ""). What a surge is:

    * :data:`RISE`: surges in two intervals in a row (a step up, a burst of minutes): a
      rate that rose, counted as rate from the first of them. Otherwise the window's median
      follows a step only once most of the window has seen it, and until then the rate
      stays the old one while the fleet, which holds the new arrivals in flight where
      nothing counts them as waiting, shrinks under them.
    * :data:`BATCH`: surges that come as a stream (a producer that sends ten messages at a
      time, a job every minute): within RATE_WINDOW of one another and, around each,
      :data:`BATCH_RUNS` at least, more often than once a RATE_WINDOW, counting those no
      smaller than :data:`BATCH_OCTAVES` powers of two below it, and it no larger than
      :data:`BATCH_SPREAD` times the largest of them (below). Blocks that come more than
      once in the window the rate is counted over are what the rate is: counted as rate,
      their sizes in its noise (:func:`_dispersion`). Intervals beyond only
      :data:`BATCH_SIGMAS` whose excess is at least the median's count (after a whole window
      of history: a median of two intervals is no median) are batches in such a stream
      too, else nothing: five at once where the median is 0 is no surge, but five at once
      every half minute is batches of five.
    * :data:`BLOCK`: the rest, a block landing at once that is a backlog to drain, not a
      rate to staff for (left out of the rate; the blocks :func:`surges` lists)."""
    marks: list[tuple[float, str]] = []
    lesser: dict[int, float] = {}  # intervals beyond BATCH_SIGMAS only: batches if they come as often as batches do, else nothing
    seen: list[tuple[float, float]] = []  # (end, rate) of the intervals so far
    first = 0
    for (a, b), arrived in zip(pairs, counts):
        span = b.at - a.at
        while first < len(seen) and seen[first][0] <= a.at - RATE_WINDOW:
            first += 1
        before = [rate for _, rate in seen[first:]]
        expected = median(before) * span if before else b.done - a.done
        full = a.at - pairs[0][0].at >= RATE_WINDOW - window_edge(span)  # a median over a whole window (not of two intervals)
        excess = arrived - expected
        surge = excess > SURGE_SIGMAS * math.sqrt(max(expected, 1.0))
        if not surge and full and excess >= expected and excess > BATCH_SIGMAS * math.sqrt(max(expected, 1.0)):
            lesser[len(marks)] = excess
        if surge and marks and marks[-1][1]:
            marks[-1] = (marks[-1][0], RISE)
            marks.append((excess, RISE))
        else:
            marks.append((excess, BLOCK) if surge else (0.0, ""))
        seen.append((b.at, max(0.0, arrived / span)))
    # Runs of surging intervals (one interval: a block; more: a rate that rose), each as
    # (first, last) index, and its size: its largest excess, in powers of two.
    runs: list[list[int]] = []
    for k, (_, kind) in enumerate(marks):
        if (kind or k in lesser) and runs and runs[-1][1] == k - 1:
            runs[-1][1] = k
        elif kind or k in lesser:
            runs.append([k, k])
    if len(runs) < BATCH_RUNS:
        return marks
    sizes = [max(lesser.get(k, marks[k][0]) for k in range(first, last + 1)) for first, last in runs]
    octave = [math.floor(math.log2(size)) if math.isfinite(size) and size >= 1.0 else 0 for size in sizes]
    starts = [pairs[first][1].at for first, _ in runs]
    stops = [pairs[last][1].at for _, last in runs]
    begin, end = pairs[0][0].at, pairs[-1][1].at
    half = LONG_RATE_WINDOW / 2.0
    # A run is batches among the runs no smaller than an eighth of its size (BATCH_OCTAVES
    # powers of two below its own) when another of them comes within RATE_WINDOW of it,
    # within LONG_RATE_WINDOW / 2 either side BATCH_RUNS of them at least come more often
    # than once a RATE_WINDOW over the history they cover, and it is at most BATCH_SPREAD
    # times the largest of the others there. Two blocks that happen to land a minute apart
    # are no rate; a block of hundreds landing among batches of ten, or the step of a rate
    # that rose, is no batch of theirs; nor do intervals now and then a little past the
    # median make blocks that come every few minutes a rate; and a batch of forty among
    # batches of a wide spread of sizes (geometric, of mean ten) is one of them.
    bands: dict[int, tuple[list[int], list[float], list[float], Callable[[int, int], float]]] = {}
    for o in sorted(set(octave)):
        among = [i for i in range(len(runs)) if octave[i] >= o - BATCH_OCTAVES]
        bands[o] = (among, [starts[i] for i in among], [stops[i] for i in among], _range_max([sizes[i] for i in among]))
    for i, (first, last) in enumerate(runs):
        among, firsts, lasts, largest = bands[octave[i]]
        n = bisect.bisect_left(firsts, starts[i])
        if not ((n > 0 and starts[i] - lasts[n - 1] < RATE_WINDOW) or (n + 1 < len(among) and firsts[n + 1] - stops[i] < RATE_WINDOW)):
            continue
        low, high = max(begin, starts[i] - half), min(end, stops[i] + half)
        since, until = bisect.bisect_right(lasts, low), bisect.bisect_right(firsts, high)
        around = until - since
        if around >= BATCH_RUNS and around * RATE_WINDOW > high - low and sizes[i] <= BATCH_SPREAD * max(largest(since, n), largest(n + 1, until)):
            for k in range(first, last + 1):
                marks[k] = (lesser.get(k, marks[k][0]), BATCH)
    return marks


def _dispersion(pairs: Sequence[tuple[_Point, _Point]], counts: Sequence[float], marks: Sequence[tuple[float, str]], now: float) -> float:
    """The arrival counts' variance over a Poisson count's (at least 1), over the intervals
    of the last :data:`LONG_RATE_WINDOW`: messages that come in batches of X (compound
    Poisson) have a count's variance E[X^2] / E[X] times its mean. Each batch
    (:data:`BATCH`) of e messages adds e^2 where e single arrivals would add e:
    1 + sum (e^2 - e) / arrivals. Only batches count, not every interval's spread
    around the rate: a rate that steps or slopes, the hook's flush once a second,
    are no batches."""
    arrived = extra = 0.0
    for (a, b), count, (excess, kind) in zip(pairs, counts, marks):
        if (a.at + b.at) / 2.0 <= now - LONG_RATE_WINDOW:
            continue
        if kind == BLOCK:
            count -= excess
        elif kind == BATCH:
            extra += excess * excess - excess
        arrived += count
    value = 1.0 + extra / arrived if arrived > 0 else 1.0
    return max(1.0, value) if math.isfinite(value) else 1.0


SURGE_SIGMAS = 6.0  # arrivals this many Poisson standard deviations above the rate: a block landed
BATCH_RUNS = 3  # runs of surging intervals around one before they are batches: two gaps, as recurring blocks need
BATCH_SIGMAS = 3.0  # ... this many (and an excess of at least the median's count), in a stream of such intervals: one of them
BATCH_OCTAVES = 3  # a run counts the runs whose size is at most this many powers of two below its own, or larger
BATCH_SPREAD = 2.0  # ... and is no batch of theirs when more than this many times the largest of them around it


def _range_max(values: Sequence[float]) -> Callable[[int, int], float]:
    """max(values[a:b]) in O(1) after O(n log n) (a sparse table; 0 for an empty range)."""
    table = [list(values)]
    width = 1
    while 2 * width <= len(values):
        row = table[-1]
        table.append([max(row[k], row[k + width]) for k in range(len(row) - width)])
        width *= 2

    def query(a: int, b: int) -> float:
        if b <= a:
            return 0.0
        level = (b - a).bit_length() - 1
        return max(table[level][a], table[level][b - (1 << level)])
    return query


def surges(history: Sequence[TickRecord], *, max_gap: float = float("inf")) -> list[tuple[float, float]]:
    """(tick, messages) for every interval between two ticks in which a block landed
    or went on landing (:data:`BLOCK` and :data:`RISE` of :func:`_surge_marks`: more
    arrivals, Δdone + Δbacklog, than the median rate of the :data:`RATE_WINDOW` before
    it explains, not one of batches that come more often than that window); ``messages``
    is the excess. A block the fleet absorbed before the tick shows here too: it is counted,
    not seen waiting."""
    points = [_Point(r.at, r.done, r.busy, r.backlog) for r in history if r.done is not None and r.busy is not None]
    out: list[tuple[float, float]] = []
    start = 0
    for end in range(1, len(points) + 1):
        if end < len(points) and not (points[end].done < points[end - 1].done or points[end].busy < points[end - 1].busy - 1e-6):
            continue
        run = points[start:end]  # a run of points between two resets of the counters
        start = end
        pairs = [(a, b) for a, b in zip(run, run[1:]) if 0 < b.at - a.at <= max_gap]
        counts = _counts(pairs)
        out += [(b.at, excess) for (_, b), (excess, kind) in zip(pairs, _surge_marks(pairs, counts)) if kind in (BLOCK, RISE)]
    return out


# Start-up as systemd timed it: from a start job to READY=1, per instance.
#
# A tick waits at most ``scaler.START_WAIT`` for its start jobs, so their duration says
# only "at least that long" for a slower start. systemd keeps the truth on each unit:
# ``InactiveExitTimestamp`` (the start job began: it left inactive) and
# ``ActiveEnterTimestamp`` (READY=1: Type=notify units are active once consuming).
# The tick that starts instances whose jobs are still pending records their numbers
# (TickRecord.starting); the next tick has ``Fleet.instances`` read those two
# timestamps for them alone (two property reads per late instance, once; none on a
# tick that started nothing or whose starts finished within its wait) and
# :func:`measure_startup` turns them into the start-up the policy learns. An instance
# still activating gives a lower bound (it has taken at least this long so far) and
# stays pending.


def measure_startup(units: Sequence[WorkerUnit], pending: Sequence[int], now: float) -> tuple[float | None, tuple[int, ...]]:
    """(seconds, still pending): the longest start-up among the ``pending`` instances
    now active (READY=1 minus the start), or the time the still-activating ones have
    taken so far when that is longer; None when none of them says anything (stopped,
    gone, restarted by systemd: not a start-up of ours)."""
    by_number = {u.number: u for u in units}
    seconds: float | None = None
    still: list[int] = []
    for number in pending:
        unit = by_number.get(number)
        if unit is None or unit.started is None:
            continue
        if unit.active_state == "active" and unit.since is not None and unit.since >= unit.started:
            sample = unit.since - unit.started
        elif unit.active_state == "activating" and unit.job == "start" and unit.restarts == 0:
            sample = max(0.0, now - unit.started)
            still.append(number)
        else:
            continue
        seconds = sample if seconds is None else max(seconds, sample)
    return seconds, tuple(still)


DEFAULT_STARTUP = 5.0  # seconds assumed before the scaler has timed a start job


def learned_startup(history: Sequence[TickRecord], default: float = DEFAULT_STARTUP, keep: int = 5) -> float:
    """Seconds an instance takes from StartUnit to consuming: the longest of the last
    ``keep`` start jobs the scaler timed (its starts wait for READY=1), else ``default``."""
    seen = [r.startup for r in history if r.startup is not None]
    return max(seen[-keep:]) if seen else default
