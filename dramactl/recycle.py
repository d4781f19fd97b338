"""When the tick recycles an instance for its memory (WORKER_RECYCLE_MEMORY), and when not.

The replace-then-drain step itself is :func:`dramactl.rollout.recycle`, the rolling restart's.
Here: which instance (:func:`choose`: the one furthest past the limit, one a tick), none
younger than :func:`min_age` (over the limit that soon, it was over it at its start: the
setting is below the app's footprint, and the tick line says so rather than churn), and,
after a recycle whose replacement did not start, none for as long (:func:`hold`,
:func:`held`, kept in ``recycle-held.json`` in the state directory). :func:`step` is the
tick's part.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .instance import WorkerUnit
from .state import read_regular, write_in_state_dir

if TYPE_CHECKING:
    from .fleet import Fleet
    from .scaler import Outcome
    from .seat import Seat
    from .settings import Settings

log = logging.getLogger("dramactl.scaler")

MIN_AGE_TICKS = 3  # no instance is recycled younger than this many CHECK_INTERVALs, nor than WORKER_RECYCLE_MIN_AGE (min_age)
HELD = "recycle-held.json"  # a recycle whose replacement did not start: when, and why (hold, held)


def min_age(settings: "Settings") -> float:
    """How old an instance must be before a tick recycles it, in seconds (pure):
    WORKER_RECYCLE_MIN_AGE (5 minutes by default), or 3 CHECK_INTERVALs when that is longer.

    WORKER_RECYCLE_MEMORY is for instances that grow slowly, over hours: waiting 5 minutes
    after a start costs such a leak nothing (WORKER_MEMORY_MAX stays the kernel's bound for
    anything faster). An instance over the limit sooner was over it from its start: the
    setting is below the app's footprint and its replacement would be over it as soon, so
    recycling it only churns (each recycle is a start, up to TimeoutStartSec=90 s, and a drain
    that cuts what runs longer than GRACEFUL_SHUTDOWN_TIMEOUT=30 s). 5 minutes is several
    times what one recycle takes, so such an app is recycled at most once per 5 minutes and
    its tasks shorter than that finish. The 3 ticks: a tick sees an instance only every
    CHECK_INTERVAL; the first tick after a recycle comes about one interval later, so with
    room for a tick skipped (a manual change holding the lock) a replacement is seen young,
    and the line says why it is not recycled, before it can be recycled itself.
    """
    return max(float(settings.worker_recycle_min_age), MIN_AGE_TICKS * float(settings.check_interval))


def age(unit: WorkerUnit, now: float) -> float | None:
    """Seconds since the instance became ready (ActiveEnterTimestamp, ``since``; else since its start
    began, ``started``); None when systemd did not say (the instance is then taken for an old one)."""
    at = unit.since if unit.since is not None else unit.started
    return None if at is None else max(0.0, now - at)


@dataclass(frozen=True)
class Recycle:
    """An instance whose memory passed WORKER_RECYCLE_MEMORY."""

    number: int
    memory: int
    limit: int

    def __str__(self) -> str:
        from .settings import size_text

        return f"recycle @{self.number} ({size_text(self.memory)} > {size_text(self.limit)})"


@dataclass(frozen=True)
class Young:
    """An instance over WORKER_RECYCLE_MEMORY within :func:`min_age` of its start: not recycled."""

    number: int
    memory: int
    age: float


def over_limit(instances: Sequence[WorkerUnit], limit: int) -> list[WorkerUnit]:
    """The running instances whose memory passed ``limit`` (bytes), none while any instance fails
    (growing or churning the fleet then only adds failures), none when ``limit`` is 0 (pure)."""
    if not limit or any(u.is_failing for u in instances):
        return []
    return [u for u in instances if u.active_state == "active" and not u.job and u.memory is not None and u.memory > limit]


def choose(instances: Sequence[WorkerUnit], limit: int, now: float, least_age: float) -> tuple[Recycle | None, list[Young]]:
    """Which instance a tick recycles, and which ones over the limit it leaves alone for their age (pure).

    The one furthest past ``limit`` among those at least ``least_age`` seconds old (or of unknown
    age), one a tick; the younger ones over it, worst first, for the tick line (:func:`young_text`)."""
    over = over_limit(instances, limit)
    young = []
    old = []
    for u in over:
        seconds = age(u, now)
        if seconds is not None and seconds < least_age:
            young.append(Young(u.number, u.memory or 0, seconds))
        else:
            old.append(u)
    young.sort(key=lambda y: (-y.memory, y.number))
    if not old:
        return None, young
    worst = max(old, key=lambda u: (u.memory, u.number))
    return Recycle(worst.number, worst.memory or 0, limit), young


def young_text(young: Sequence[Young], limit: int, least_age: float) -> str | None:
    """One phrase for the tick line naming the instances over WORKER_RECYCLE_MEMORY right after their
    start (their footprint), the setting and the fix; None when there are none (pure)."""
    from .settings import size_text

    if not young:
        return None
    if len(young) == 1:
        y = young[0]
        head = f"@{y.number} is over WORKER_RECYCLE_MEMORY ({size_text(y.memory)} > {size_text(limit)}) {y.age:.0f} s after its start"
    else:
        each = ", ".join(f"@{y.number} ({size_text(y.memory)}, {y.age:.0f} s after its start)" for y in young)
        head = f"{each} are over WORKER_RECYCLE_MEMORY ({size_text(limit)})"
    return (
        head + ": the setting is below the app's footprint; not recycled (no instance is before it is"
        f" {least_age:.0f} s old); raise WORKER_RECYCLE_MEMORY above what a fresh instance holds"
    )


def with_start_times(fleet: "Fleet", instances: Sequence[WorkerUnit], limit: int) -> list[WorkerUnit]:
    """``instances`` with the start times of those over ``limit`` whose time the tick's listing did not
    read: its listing reads no timestamp for a healthy instance, so this is one more listing with
    the same two property reads the start-up measure uses (Fleet.instances ``timed``), only for
    instances over the limit: none in a fleet whose memory is below WORKER_RECYCLE_MEMORY."""
    unknown = [u.number for u in over_limit(instances, limit) if u.since is None and u.started is None]
    if not unknown:
        return list(instances)
    read = {u.number: u for u in fleet.instances(timed=unknown)}
    return [replace(u, since=read[u.number].since, started=read[u.number].started) if u.number in read else u for u in instances]


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def hold(state_dir: str, now: float, cause: str) -> None:
    """Remember (under the tick lock) that a recycle's replacement did not start now, and why: :func:`held`."""
    write_in_state_dir(Path(state_dir) / HELD, json.dumps({"at": now, "cause": cause}))


def release(state_dir: str) -> None:
    """A recycle replaced its instance: the next needs no wait."""
    try:
        (Path(state_dir) / HELD).unlink()
    except FileNotFoundError:
        pass


def held(state_dir: str, now: float, wait: float) -> tuple[float, float, str] | None:
    """(since, until, cause) while the last recycle's replacement did not start less than ``wait`` seconds
    ago: no recycle meanwhile, whichever instance (a replacement's start does not depend on which
    instance it replaces: the code on disk, the unit's timeout). None otherwise, and for a file that
    cannot be read or a time ahead of the clock (it was set back)."""
    try:
        data = json.loads(read_regular(Path(state_dir) / HELD))
        at, cause = float(data["at"]), str(data["cause"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if not math.isfinite(at) or at > now + 1.0 or now >= at + wait:
        return None
    return at, at + wait, cause


def held_text(pick: Recycle, since: float, until: float, cause: str, now: float) -> str:
    """The tick line's phrase for a recycle held off after one whose replacement did not start."""
    from .settings import size_text

    return (
        f"@{pick.number} is over WORKER_RECYCLE_MEMORY ({size_text(pick.memory)} > {size_text(pick.limit)}); not recycled"
        f" before {clock(until)}: a recycle's replacement did not start {now - since:.0f} s ago ({cause})"
    )


def step(
    fleet: "Fleet", settings: "Settings", instances: Sequence[WorkerUnit], outcome: "Outcome", seat: "Seat | None" = None,
    paused_without_size: bool = False, stop_wait: float = 0.0,
) -> int:
    """The tick's recycle: replace the instance furthest past WORKER_RECYCLE_MEMORY; 1 when one was replaced.
    ``seat``: on a host of a fleet, the replacement's place is claimed in the fleet first.

    No instance younger than :func:`min_age` is recycled, and the tick line names the setting;
    the replacement gets the unit's TimeoutStartSec (+5 s), as a rolling restart's does; when it
    does not start, no recycle is tried again for as long, and the tick lines say so.
    ``paused_without_size``: a tick then holds what runs, so an instance drained first whose
    replacement did not start stays gone (its line says so)."""
    from . import rollout

    limit = settings.worker_recycle_memory
    now = time.time() if outcome.at is None else outcome.at
    wait = min_age(settings)
    notes: list[str] = []
    instances = with_start_times(fleet, instances, limit)
    pick, young = choose(instances, limit, now, wait)
    footprint = young_text(young, limit, wait)
    if footprint:
        notes.append(footprint)
    stalled = held(settings.state_dir, now, wait) if pick is not None else None
    if stalled is not None and pick is not None:
        notes.append(held_text(pick, *stalled, now=now))
        pick = None
    if notes:
        outcome.decision = replace(outcome.decision, reason=" | ".join([outcome.decision.reason, *notes]))
    if pick is None:
        return 0
    rolled = rollout.recycle(fleet, instances, pick, settings.max_processes, stop_wait=stop_wait, seat=seat)
    outcome.recycled, outcome.failure = str(pick), rolled.failure
    outcome.drained_first = "; ".join(rolled.drained_text()) or None
    outcome.started, outcome.stopped = rolled.started, rolled.stopped
    try:
        if rolled.failure:
            hold(settings.state_dir, now, rolled.failure)
        elif rolled.replaced:
            release(settings.state_dir)
    except OSError as exc:
        log.warning("could not remember the recycle's outcome in %s (%s): the next tick may try again at once", settings.state_dir, exc.strerror or exc)
    if rolled.failure:
        if rolled.lost:
            what, then = rollout.lost_text(rolled, paused_without_size)
            left = f"{what}; {then}"
        else:
            left = f"@{pick.number} keeps serving"
        outcome.failure = f"{rolled.failure}; {left}; no recycle before {clock(now + wait)} ({wait:.0f} s)"
    return 1 if rolled.replaced else 0
