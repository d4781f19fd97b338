"""Blocks of messages that land at a regular period (a cron job), found in the tick
history, and the fleet to have up before the next one (pure).

A block is a surge (:func:`dramactl.rates.surges`): an interval in which far more
arrived than the rate before it explains, counted from the hook's counters even when
the fleet absorbed it before a tick saw it; not one of a stream of batches, which are
a rate (:func:`dramactl.rates._surge_marks`). :func:`recurring` asks three blocks whose
gaps agree before it expects a fourth; :func:`recurring_need` sizes the fleet for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from .rates import surges
from .settings import Settings
from .state import TickRecord, window_edge


@dataclass(frozen=True)
class Recurring:
    """A block of messages that lands at a regular period: when the tick that sees
    the next one is due, and how many messages the last one brought."""

    period: float
    due: float
    messages: float
    landed: float = 0.0  # seconds between the first and the last interval the last block surged in (0: at once)
    landing: float = -math.inf  # the last block goes on landing until then, as the one before it did
    began: float = math.inf  # the tick that saw the last block's first surge


# Blocks one period apart before the next one is expected: three, i.e. two gaps that
# agree within the tolerance. Any two surges define some "period", so two blocks are
# no evidence of a schedule; a third landing within the tolerance of where the first
# two put it is unlikely by chance (for unrelated surges, about 2 x tolerance / the gap
# between them). A predicted block that does not come stops the prediction: the last
# three blocks stay the same, their next due time passes, and nothing is predicted
# again until three blocks agree anew.
RECURRENCES = 3


def recurring(history: Sequence[TickRecord], tolerance: float, max_gap: float = float("inf")) -> Recurring | None:
    """The recurring block in ``history`` (:func:`dramactl.rates.surges`; surges within
    ``tolerance`` of the one before are one block, as when a rate steps up and its
    median takes a few ticks to follow): the last :data:`RECURRENCES` blocks one period
    apart (more than twice ``tolerance``), their gaps agreeing within ``tolerance``,
    else None. Gaps are whole ticks: each comparison reaches :func:`~dramactl.state.window_edge`
    past its bound (``tolerance`` is two ticks), so that a host's ticks, a little more than an
    interval apart, read as the simulator's, exactly one."""
    edge = window_edge(tolerance / 2.0)
    blocks: list[tuple[float, float, float]] = []  # (first tick, messages, last tick)
    last = None
    for at, excess in surges(history, max_gap=max_gap):
        if last is not None and at - last <= tolerance + edge:
            blocks[-1] = (blocks[-1][0], blocks[-1][1] + excess, at)
        else:
            blocks.append((at, excess, at))
        last = at
    if len(blocks) < RECURRENCES:
        return None
    starts = [at for at, _, _ in blocks[-RECURRENCES:]]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    if max(gaps) - min(gaps) > tolerance + edge or min(gaps) <= 2.0 * tolerance + edge:
        return None
    period = sum(gaps) / len(gaps)
    first, messages, end = blocks[-1]
    before = blocks[-2][2] - blocks[-2][0]
    if before > end - first:
        # The block before went on landing for longer than this one has so far (a burst of
        # minutes): this one may still be landing, and is sized as the one before was.
        return Recurring(period, starts[-1] + period, max(messages, blocks[-2][1]), before, first + before, first)
    return Recurring(period, starts[-1] + period, messages, end - first)


def recurring_need(
    again: Recurring | None, now: float, lead: float, tolerance: float, load: float, service: float, settings: Settings,
    rate_fleet: Callable[[float], int] | None = None, rate_span: float = 0.0,
) -> tuple[int, int, int, str] | None:
    """(fleet, fleets for a block one standard deviation smaller and larger, why) when a recurring load is due within ``lead`` seconds (the start-up
    plus two ticks: it may land up to a tick before the tick that sees it) or is
    late by up to ``tolerance``: the fleet that serves its last occurrence's backlog
    within one CHECK_INTERVAL on top of the arrivals (``load`` busy threads), so
    it lands on instances already consuming. A block whose arrivals went on over several
    intervals is a rate for that span: the fleet ``rate_fleet`` sizes for that load (busy
    threads) with its headroom, when given. While it lands, the arrival rate (over the
    ``rate_span`` seconds before now) already counts its arrivals for the part of that
    span it has been landing: only the rest is added on top of ``load``. ``again``: the
    schedule :func:`recurring` found in the history (at ``tolerance``, gaps of at most four
    ticks), found once a tick for this and :func:`recurring_keep`."""
    interval = float(settings.check_interval)
    if again is None:
        return None
    landing = now <= again.landing + tolerance  # a block of minutes still landing, as its last occurrence did
    if not landing and not now - tolerance < again.due <= now + lead:
        return None

    # A block that landed at once is served within one interval; one whose arrivals went on
    # over several intervals (a burst of minutes: dramactl.rates reads it as a rate that
    # rose) came at its count over that span, a rate, and is staffed as the arrivals are
    # (with the headroom the rate's fleet keeps): sizing it as if it all landed within one
    # interval starts several times the fleet it needs ahead of it, stopped again once it
    # has passed.
    span = interval + again.landed
    # The share of the rate's span the block has been landing in (it began within the
    # interval before the tick that saw its first surge): that much of it is in ``load``,
    # from the tick after that one (dramactl.rates takes a surge in one interval for a block
    # landed at once, and leaves it out of the rate, until the next interval surges too).
    counted = 0.0
    if landing and rate_span > 0 and now - again.began >= interval - 1e-9:
        counted = min(1.0, max(0.0, now - max(now - rate_span, again.began - interval)) / rate_span)

    def fleet(messages: float) -> int:
        busy = load + (1.0 - counted) * max(0.0, messages) * service / span
        if not math.isfinite(busy):  # damaged counters (finite, but absurd): more than any fleet
            return settings.max_processes + 1
        mean = math.ceil(busy / settings.worker_threads - 1e-9)
        return mean if again.landed <= 0 or rate_fleet is None else max(mean, rate_fleet(busy))

    need, sigma = fleet(again.messages), math.sqrt(max(again.messages, 0.0))
    when = f"due in {again.due - now:.0f}s" if again.due >= now else f"due {now - again.due:.0f}s ago"
    if landing:
        when = f"landing for {again.landed:.0f}s, as the last did"
    return need, fleet(again.messages - sigma), fleet(again.messages + sigma), f"{again.messages:.0f} msgs land every {again.period:.0f}s, {when}: {need} ready for them"


# How soon a scheduled block must come again for its fleet to be kept through the gap:
# HPA's default scale-down stabilization window and KEDA's default cooldownPeriod, the
# horizon within which those autoscalers treat returning load as the same load. A
# schedule (three blocks agreeing) is not noise: the load certainly returns, and a fleet
# stopped and started again for every block makes two actions a period, 24 or more an
# hour under this horizon, the churn those defaults exist to avoid; a block every
# 5 minutes or more is released between blocks as they release it. The cost is the
# block's own fleet (never more than is up) idle through the gap.
RECURRING_KEEP = 300.0


def recurring_keep(
    again: Recurring | None, now: float, lead: float, tolerance: float, load: float, service: float,
    settings: Settings, current: int, rate_fleet: Callable[[float], int] | None = None, rate_span: float = 0.0,
) -> tuple[int, str] | None:
    """(fleet, why) to keep rather than shrink below: a recurring block's fleet (at most
    ``current``) when its next block is due within the window plus ``lead`` (the start-up
    and two ticks a start ahead of it takes). The window is SCALE_DOWN_STABILIZATION, how
    long a need must stay low before the fleet shrinks, read forward for a need that
    recurs on a known schedule (a fleet stopped now would be started again before the
    window has passed), and at least :data:`RECURRING_KEEP`. SCALE_DOWN_STABILIZATION=0
    (shrink at once) keeps nothing. None otherwise."""
    stabilization = settings.scale_down_stabilization
    if stabilization <= 0:
        return None
    window = max(stabilization, RECURRING_KEEP)
    kept = recurring_need(again, now, lead + window, tolerance, load, service, settings, rate_fleet, rate_span)
    if kept is None:
        return None
    return min(current, kept[0]), f"{kept[3]}; due again within {window:g}s: kept"
