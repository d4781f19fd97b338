"""What every sizing rule applies to the fleet it asks for (pure, no I/O): the bounds
MIN_PROCESSES..MAX_PROCESSES, growth one MAX_SCALE_UP_STEP at a time, and the latency
guard (the oldest ready message waited past MAX_QUEUE_WAIT); and what a sizing returns
(:class:`Sized`). Used by the work-based sizing (:mod:`dramactl.policy`) and the
count-based one (:mod:`dramactl.bycount`)."""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple

from .settings import Settings


class Sized(NamedTuple):
    """What a sizing decided: the target, this tick's own need (``wanted``), the reason
    (the tick line), the arrivals' fleet (by work only) and the figures it rested on, by
    name, for ``status`` and the dashboard (:mod:`dramactl.policyview`)."""

    target: int
    wanted: int
    reason: str
    for_rate: int | None = None
    figures: Mapping[str, object] | None = None


def clamp(n: int, settings: Settings) -> int:
    """``n`` within MIN_PROCESSES..MAX_PROCESSES."""
    return max(settings.min_processes, min(settings.max_processes, n))


def grow(current: int, wanted: int, bounded: int, why: str, settings: Settings) -> tuple[int, int, str]:
    """(target, wanted, reason) for growth to ``bounded`` (``wanted`` within MIN/MAX), one
    step at most MAX_SCALE_UP_STEP, with the limits that applied named in the reason."""
    limit = settings.max_scale_up_step
    target = min(bounded, current + limit) if limit else bounded
    notes = [f"{wanted} wanted"] if wanted != target else []
    if limit and target < bounded:
        notes.append(f"MAX_SCALE_UP_STEP={limit}")
    if bounded < wanted:
        notes.append(f"MAX_PROCESSES={settings.max_processes}")
    if current < settings.min_processes:
        notes.append(f"MIN_PROCESSES={settings.min_processes}")
    return target, wanted, f"{why}: up {current} -> {target}" + (f" ({', '.join(notes)})" if notes else "")


def latency_guard(age: float | None, current: int, starting: int, settings: Settings) -> tuple[int, str] | None:
    """When the oldest ready message waited past MAX_QUEUE_WAIT, want more workers in
    proportion to the overshoot (at least one, at most double); instances still
    starting are about to absorb it, so they suppress the extra growth."""
    limit = settings.max_queue_wait
    if age is None or age <= limit:
        return None
    what = f"oldest message waited {age:.0f}s > MAX_QUEUE_WAIT={limit:g}s"
    if starting:
        return current, f"{what}, waiting for {starting} starting"
    # MAX_QUEUE_WAIT is above 0 wherever it comes from (settings.parse, the fleet's record checked as it);
    # a limit that is not (0, NaN: settings built by hand) grows by the most, never divides by zero.
    over = age / limit - 1.0 if limit > 0 else 1.0
    extra = max(1, math.ceil(current * min(1.0, over)))
    return current + extra, f"{what}: +{extra}"
