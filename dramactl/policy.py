"""The scaling decision: pure functions of what a tick saw, no I/O.

``decide`` is the one entry point; ``POLICY=step`` selects the classic threshold
step operators know, ``POLICY=default`` the backlog/latency policy. The scaler is a
oneshot, so everything the default policy needs across ticks comes in ``history``:
the :class:`~dramactl.state.TickRecord` each earlier tick saved via
:meth:`ScalingDecision.record`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .instance import WorkerUnit
from .settings import Settings
from .state import TickRecord
from .stats import FleetBacklog


@dataclass(frozen=True)
class ScalingDecision:
    """How many instances there should be, and why (one line for the journal).

    ``wanted`` is the raw recommendation before step limits, stabilization and the
    failing-unit hold: the figure a scale-down window must remember, because the
    target alone would hide how much was needed while a limit or a hold applied.
    """

    current: int
    target: int
    reason: str
    held: bool = False  # True when the policy wanted more but refused (failing units)
    wanted: int | None = None
    starting: int = 0  # up instances not yet consuming (within PROCESS_STARTUP_DELAY)

    @property
    def delta(self) -> int:
        return self.target - self.current

    def record(self, now: float, backlog: FleetBacklog) -> TickRecord:
        """What the scaler appends to history after this tick (the next tick's input)."""
        return TickRecord(
            at=now,
            backlog=backlog.backlog,
            workers=self.current,
            target=self.target,
            oldest_age=backlog.oldest_age,
            wanted=self.target if self.wanted is None else self.wanted,
        )

    def to_dict(self) -> dict:
        return {
            "current": self.current,
            "target": self.target,
            "delta": self.delta,
            "reason": self.reason,
            "held": self.held,
            "wanted": self.wanted,
            "starting": self.starting,
        }


def clamp(n: int, settings: Settings) -> int:
    return max(settings.min_processes, min(settings.max_processes, n))


def decide(
    backlog: FleetBacklog,
    instances: Sequence[WorkerUnit],
    settings: Settings,
    history: Sequence[TickRecord] = (),
    now: float = 0.0,
) -> ScalingDecision:
    """The decision for one tick. ``history`` holds earlier ticks, oldest first."""
    up = [u for u in instances if u.is_up]
    current = len(up)
    starting = sum(1 for u in up if is_starting(u, now, settings.process_startup_delay))
    if settings.policy == "step":
        target, reason = step_target(backlog, current, settings)
        wanted = target
    else:
        target, wanted, reason = default_target(backlog, current, starting, settings, history, now)
    failing = sorted(u.number for u in instances if u.is_failing)
    if failing and target > current:
        names = ", ".join(f"@{n}" for n in failing)
        reason = f"hold: {len(failing)} failing instance(s) ({names}); {reason}"
        return ScalingDecision(current, current, reason, held=True, wanted=wanted, starting=starting)
    return ScalingDecision(current, target, reason, wanted=wanted, starting=starting)


def is_starting(unit: WorkerUnit, now: float, startup_delay: float) -> bool:
    """Up but not consuming yet: still activating (Type=notify before READY=1), or
    active for less than PROCESS_STARTUP_DELAY (a unit that reports ready at fork)."""
    if not unit.is_up:
        return False
    if unit.active_state == "activating":
        return True
    return unit.since is not None and now - unit.since < startup_delay


def step_target(backlog: FleetBacklog, current: int, settings: Settings) -> tuple[int, str]:
    """The baseline: one more when depth > N x up, one fewer when depth < N x down."""
    depth = backlog.depth
    if current < settings.min_processes:
        return settings.min_processes, f"below MIN_PROCESSES={settings.min_processes}"
    if current > settings.max_processes:
        return settings.max_processes, f"above MAX_PROCESSES={settings.max_processes}"
    up = current * settings.scale_up_multiplier
    down = current * settings.scale_down_multiplier
    if depth > up and current < settings.max_processes:
        return current + 1, f"step: depth {depth} > {up:g}"
    if depth < down and current > settings.min_processes:
        return current - 1, f"step: depth {depth} < {down:g}"
    return current, f"step: depth {depth} within [{down:g}, {up:g}]"


GROW_SIGMAS = 2.0  # snapshot noise a fleet absorbs before it grows (in sqrt(messages))
SLACK_SIGMAS = 1.0  # headroom it keeps over its mean load when it shrinks (square-root staffing)


def backlog_per_worker(settings: Settings) -> float:
    """TARGET_BACKLOG_PER_WORKER, or WORKER_THREADS: a worker is fully used when
    every thread holds a message, and anything beyond that is waiting."""
    return settings.target_backlog_per_worker or float(settings.worker_threads)


def holds(workers: int, per_worker: float) -> float:
    """The backlog ``workers`` absorb without growing: their share plus the noise of a
    snapshot. Messages in flight at one instant are roughly Poisson, so a fleet that
    keeps up still shows backlogs ~2 sqrt(share) above its mean now and then; growing
    on those would buy workers for noise and flap."""
    share = workers * per_worker
    return share + GROW_SIGMAS * math.sqrt(share)


GROW_TO = "hold"


def fleet_holding(backlog: float, per_worker: float) -> int:
    """The smallest fleet whose :func:`holds` covers ``backlog``."""
    n = 0
    while holds(n, per_worker) < backlog:
        n += 1
    return n


def fleet_for(load: float, per_worker: float) -> int:
    """Workers to keep for a mean backlog ``load``: the load plus sqrt(load) of slack,
    so the fleet is not run at 100 % (where queues grow without bound) and its
    :func:`holds` stays ~3 sigma above the load (growth on noise is rare)."""
    if load <= 0:
        return 0
    return math.ceil((load + SLACK_SIGMAS * math.sqrt(load)) / per_worker - 1e-9)


def default_target(
    backlog: FleetBacklog,
    current: int,
    starting: int,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
) -> tuple[int, int, str]:
    """(target, wanted, reason). Grow when the backlog is more than the fleet holds,
    in one step to ceil(backlog / per-worker target); grow on old messages; shrink only
    when the SCALE_DOWN_STABILIZATION window's mean backlog fits a smaller fleet and no
    tick in it wanted to grow.

    ``wanted`` is this tick's own recommendation, ignoring windows, limits and holds:
    above ``current`` it means "grow to this"; later windows keep at least that many.
    """
    per_worker = backlog_per_worker(settings)
    why = f"backlog {backlog.backlog} at {per_worker:g}/worker"
    wait = False
    if backlog.backlog > holds(current, per_worker):
        wanted = math.ceil(backlog.backlog / per_worker) if GROW_TO == "ceil" else fleet_holding(backlog.backlog, per_worker)
        why += f" > {holds(current, per_worker):.0f} held by {current}"
        surge = backlog.backlog > 2 * current * per_worker
        wait = not surge and not _wanted_more_last_tick(history, now, settings)
    else:
        wanted = min(current, fleet_for(backlog.backlog, per_worker))
    guard = _latency_guard(backlog.oldest_age, current, starting, settings)
    if guard is not None:
        why += f"; {guard[1]}"
        wait = wait and guard[0] <= current
        wanted = max(wanted, guard[0])
    if starting:
        why += f"; {starting} starting"
    bounded = clamp(wanted, settings)
    if wait and current >= settings.min_processes:
        return current, wanted, f"{why}: growing to {min(bounded, settings.max_processes)} if it persists next tick"

    if current > settings.max_processes:
        return settings.max_processes, wanted, f"{why}: down to MAX_PROCESSES={settings.max_processes}"
    if bounded > current:
        limit = settings.max_scale_up_step
        target = min(bounded, current + limit) if limit else bounded
        notes = [f"{wanted} wanted"] if wanted != target else []
        if limit and target < bounded:
            notes.append(f"MAX_SCALE_UP_STEP={limit}")
        if bounded < wanted:
            notes.append(f"MAX_PROCESSES={settings.max_processes}")
        return target, wanted, f"{why}: up {current} -> {target}" + (f" ({', '.join(notes)})" if notes else "")
    if bounded == current:
        return current, wanted, f"{why}: steady at {current}"
    return _stabilized_down(backlog, current, wanted, why, per_worker, settings, history, now)


def _wanted_more_last_tick(history: Sequence[TickRecord], now: float, settings: Settings) -> bool:
    """Whether the previous tick (if recent) also wanted more than it had."""
    if not history or history[-1].at < now - 2.0 * settings.check_interval:
        return False
    last = history[-1]
    return (last.target if last.wanted is None else last.wanted) > last.workers


def _latency_guard(age: float | None, current: int, starting: int, settings: Settings) -> tuple[int, str] | None:
    """When the oldest ready message waited past MAX_QUEUE_WAIT, want more workers in
    proportion to the overshoot (at least one, at most double); instances still
    starting are about to absorb it, so they suppress the extra growth."""
    limit = settings.max_queue_wait
    if age is None or age <= limit:
        return None
    what = f"oldest message waited {age:.0f}s > MAX_QUEUE_WAIT={limit:g}s"
    if starting:
        return current, f"{what}, waiting for {starting} starting"
    extra = max(1, math.ceil(current * min(1.0, age / limit - 1.0)))
    return current + extra, f"{what}: +{extra}"


def _stabilized_down(
    backlog: FleetBacklog,
    current: int,
    wanted: int,
    why: str,
    per_worker: float,
    settings: Settings,
    history: Sequence[TickRecord],
    now: float,
) -> tuple[int, int, str]:
    """Shrink to what the window's mean backlog needs (never below what a tick in it
    wanted when it asked to grow), and only when the history reaches back over the
    whole window: after a gap or a reboot we do not know what happened."""
    window = settings.scale_down_stabilization
    floor = clamp(wanted, settings)
    if window > 0:
        reach = now - window - 2.0 * settings.check_interval  # tolerate a late or skipped tick
        recent = [r for r in history if reach <= r.at < now]
        if not recent or recent[0].at > now - window:
            return current, wanted, f"{why}: holding {current} until {window:g}s of history (SCALE_DOWN_STABILIZATION)"
        seen = [r for r in recent if r.at >= now - window]
        mean = (backlog.backlog + sum(r.backlog for r in seen)) / (len(seen) + 1)
        grew = [w for w, r in ((r.target if r.wanted is None else r.wanted, r) for r in seen) if w > r.workers]
        floor = clamp(max([fleet_for(mean, per_worker), *grew]), settings)
        if floor >= current:
            return current, wanted, f"{why}: holding {current}, {floor} needed over {window:g}s (mean backlog {mean:.0f})"
    limit = settings.max_scale_down_step
    target = max(floor, current - limit) if limit else floor
    return target, wanted, f"{why}: {window:g}s below {current}, down {current} -> {target}"
