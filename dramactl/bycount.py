"""Sizing by count (pure, no I/O): the default policy's fallback before any worker has
reported work (a new queue, workers without the hook).

* backlog = ready + due-delayed + in flight; a worker's share is
  TARGET_BACKLOG_PER_WORKER (default WORKER_THREADS);
* grow when the backlog is beyond what the fleet holds (its share plus snapshot
  noise): at once on a surge, else when a second tick confirms it, in one step to
  the fleet that holds it;
* grow when the oldest ready message waited past MAX_QUEUE_WAIT, unless instances
  are still starting;
* shrink only when the mean backlog over SCALE_DOWN_STABILIZATION fits a smaller
  fleet (with square-root slack) and no tick in that window asked to grow.
"""

from __future__ import annotations

import math
from typing import Sequence

from .calm import starting_hold
from .limits import Sized, clamp, grow, latency_guard
from .rates import learned_startup
from .settings import Settings
from .state import TickRecord, stabilization_window
from .stats import FleetBacklog

GROW_SIGMAS = 2.0  # snapshot noise (in sqrt of the fleet's share) a fleet absorbs before growing
SLACK_SIGMAS = 1.0  # headroom over the mean load kept when shrinking (square-root staffing)
LARGEST = 10**9  # a fleet size no MAX_PROCESSES reaches: what a tiny TARGET_BACKLOG_PER_WORKER asks for


def backlog_per_worker(settings: Settings) -> float:
    """TARGET_BACKLOG_PER_WORKER, or WORKER_THREADS: a worker is fully used when
    every thread holds a message, and anything beyond that is waiting."""
    return settings.target_backlog_per_worker or float(settings.worker_threads)


def holds(workers: int, per_worker: float) -> float:
    """The backlog ``workers`` absorb without growing: their share plus two standard
    deviations of snapshot noise. Messages in flight at one instant are roughly
    Poisson, so a fleet that keeps up still shows backlogs ~2 sqrt(share) above its
    share now and then; growing on those buys workers for noise and then flaps."""
    share = workers * per_worker
    return share + GROW_SIGMAS * math.sqrt(share)


def fleet_holding(backlog: float, per_worker: float) -> int:
    """The smallest fleet that :func:`holds` ``backlog`` (ceil(backlog / per-worker)
    less the noise margin): how far one growth step goes."""
    if backlog <= 0:
        return 0
    root = (-GROW_SIGMAS + math.sqrt(GROW_SIGMAS**2 + 4.0 * backlog)) / 2.0  # sqrt(n x per_worker)
    estimate = root * root / per_worker
    if not estimate < LARGEST:  # a tiny TARGET_BACKLOG_PER_WORKER: no MAX_PROCESSES allows it (the caller clamps)
        return LARGEST
    n = max(0, math.ceil(estimate) - 1)
    while holds(n, per_worker) < backlog:
        n += 1
    return n


def fleet_for_load(load: float, per_worker: float) -> int:
    """Workers to keep for a mean backlog ``load``: the load plus sqrt(load) of slack,
    so the fleet never runs at 100 % (where queues grow without bound) and the
    backlog it :func:`holds` stays ~3 sigma above the load (growth on noise is rare)."""
    if load <= 0:
        return 0
    estimate = (load + SLACK_SIGMAS * math.sqrt(load)) / per_worker - 1e-9
    return LARGEST if not estimate < LARGEST else math.ceil(estimate)


def count_target(
    backlog: FleetBacklog,
    current: int,
    starting: int,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
) -> Sized:
    """The count-based fallback.

    Grow when the backlog is more than the fleet holds: at once for a surge (more
    waiting than in service), else once the excess shows on a second tick; grow in
    one step to the fleet that holds it. Grow when the oldest message waited too
    long. Shrink only when the SCALE_DOWN_STABILIZATION window's mean backlog fits a
    smaller fleet and no tick in it wanted to grow.

    ``wanted`` is this tick's own recommendation, before limits, windows and holds;
    above ``current`` it means "grow to this", and later windows keep at least that.
    """
    per_worker = backlog_per_worker(settings)
    total = backlog.backlog
    orphans = f", {backlog.orphaned} orphaned" if backlog.orphaned else ""
    why = f"backlog {total} ({backlog.depth} waiting, {backlog.in_flight} in flight{orphans})"
    defer = False
    if total > holds(current, per_worker):
        why += f" > {holds(current, per_worker):.0f} held by {current}"
        surge = total > 2 * current * per_worker
        last = _last_excess(history, now, settings)
        defer = not surge and last is None
        # On a second tick, size to the excess both saw: a one-tick spike does not set the size.
        wanted = max(current, fleet_holding(total if surge or last is None else min(total, last), per_worker))
    else:
        wanted = min(current, fleet_for_load(total, per_worker))
    guard = latency_guard(backlog.oldest_age, current, starting, settings)
    figures = {"by": "count", "backlog_per_worker": per_worker,
               "needs": {"backlog": wanted, "latency_guard": None if guard is None else guard[0]}}
    if guard is not None:
        why += f"; {guard[1]}"
        defer = defer and guard[0] <= current
        wanted = max(wanted, guard[0])
    if starting:
        why += f"; {starting} starting"
    bounded = clamp(wanted, settings)

    if current > settings.max_processes:
        return Sized(settings.max_processes, wanted, f"{why}: down to MAX_PROCESSES={settings.max_processes}", None, figures)
    if bounded > current and defer and current >= settings.min_processes:
        return Sized(current, wanted, f"{why}: growing to {bounded} if it persists next tick", None, figures)
    if bounded > current:
        return Sized(*grow(current, wanted, bounded, why, settings), None, figures)
    if bounded == current:
        at_max = f" (MAX_PROCESSES; {wanted} wanted)" if wanted > current else ""
        return Sized(current, wanted, f"{why}: steady at {current}{at_max}", None, figures)
    hold = starting_hold(history, now, starting, learned_startup(history))
    if hold is not None:
        return Sized(current, wanted, f"{why}: holding {current}, {hold}", None, figures)
    return Sized(*_stabilized_down(total, current, wanted, why, per_worker, settings, history, now), None, figures)


def _last_excess(history: Sequence[TickRecord], now: float, settings: Settings) -> int | None:
    """The previous tick's backlog if it was recent and wanted more than it had."""
    if not history or history[-1].at < now - 2.0 * settings.check_interval:
        return None
    last = history[-1]
    return last.backlog if (last.target if last.wanted is None else last.wanted) > last.workers else None


def _stabilized_down(
    total: int,
    current: int,
    wanted: int,
    why: str,
    per_worker: float,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
) -> tuple[int, int, str]:
    """Shrink to what the window's mean backlog needs, never below what a tick in it
    wanted when it asked to grow, and only when the history reaches back over the
    whole window: after a gap or a reboot we do not know what happened in it."""
    window = settings.scale_down_stabilization
    floor = clamp(wanted, settings)
    if window > 0:
        seen = stabilization_window(history, now, window, settings.check_interval)
        if seen is None:
            return current, wanted, f"{why}: holding {current} until {window:g}s of history (SCALE_DOWN_STABILIZATION)"
        mean = (total + sum(r.backlog for r in seen)) / (len(seen) + 1)
        for_load = fleet_for_load(mean, per_worker)
        asked = max([w for w, r in ((r.target if r.wanted is None else r.wanted, r) for r in seen) if w > r.workers], default=0)
        floor = clamp(max(for_load, asked), settings)
        detail = f"mean backlog {mean:.0f} over {window:g}s needs {for_load}"
        if asked > for_load:
            detail += f", a tick in it asked for {asked}"
        if floor >= current:
            return current, wanted, f"{why}: holding {current}, {detail}"
        why += f"; {detail}"
    limit = settings.max_scale_down_step
    target = max(floor, current - limit) if limit else floor
    return target, wanted, f"{why}: down {current} -> {target}"
